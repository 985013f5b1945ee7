"""A leaderboard is data: defences x task x suites x seeds (+ an attacker search per defence) in
one YAML (shipped: ``organism-standard``, ``smol-quick``; or a user's file by path).

    name: organism-standard
    model: organism:aligned          # what every defence immunises; also the reference row
    defences: all                    # every registered defence (minus `exclude`), or a list:
    #   - npo                                                   # defaults
    #   - {name: npo-long, defence: npo, config: {train: {max_steps: 200}}}
    #   - {name: npo, preset: configs/presets/smol/npo.yaml}   # an immunise config file (model, defence)
    exclude: [pipeline]
    suites: [standard, beyond-sft]
    seeds: [0, 1, 2]                 # each defence's own training seed
    evaluation: {}                   # evaluation settings for every cell (task, judge, diagnostics ...)
    search: {space: organism, trials: 50}   # per defence, on its seed-0 model; trials 0 = none
    workers: 2                       # cells run in this many processes
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pydantic import Field, PositiveInt, model_validator

from immunelm.config import Config, Seed, load_config, parse_yaml_text, read_yaml_file
from immunelm.errors import ImmuneLMError
from immunelm.eval.runner import EvaluationConfig
from immunelm.smol.config import SmolOrganismConfig
from immunelm.world.organism import OrganismConfig


class DefenceEntry(Config):
    name: str = Field(description="Row name (unique).")
    defence: Optional[str] = Field(None, description="Registered defence (default: the name).")
    config: dict[str, Any] = Field(default_factory=dict, description="The defence's own fields (as defence.* of immunise).")
    preset: Optional[str] = Field(None, description="An immunise config YAML (model, defence fields): e.g. a real-model preset.")

    @property
    def method(self) -> str:
        return self.defence or self.name


class SearchSettings(Config):
    space: str = Field("organism", description="Attacker search space (immunelm.search): organism | smol | a YAML path.")
    trials: int = Field(0, ge=0, description="Trials per defence (0 = no search).")
    seeds: list[Seed] = Field(default_factory=lambda: [0], description="Which seeds' immunised models are searched.")
    include_reference: bool = Field(True, description="Search the undefended reference too (the baseline curve).")


class LeaderboardConfig(Config):
    name: str
    description: str = ""
    model: str = Field("organism:aligned", description="The model every defence immunises; also the reference row.")
    reference: str = Field("aligned", description="Row name of the undefended model.")
    defences: Union[str, list[Union[str, DefenceEntry]]] = Field("all", description="'all' or a list of names / entries.")
    exclude: list[str] = Field(default_factory=lambda: ["pipeline"], description="Left out of 'all'.")
    suites: list[str] = Field(default_factory=lambda: ["standard"], description="Adversary suites (shipped names or paths).")
    seeds: list[Seed] = Field(default_factory=lambda: [0], description="Each defence's training seed.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Settings of every evaluation cell (suite is set per cell).")
    search: SearchSettings = Field(default_factory=SearchSettings)
    workers: PositiveInt = Field(1, description="Cells run in parallel processes (each gets CPU cores / workers threads).")
    threads: Optional[PositiveInt] = Field(None, description="Torch threads per cell process (default: CPU cores / workers).")
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig)
    cache_dir: Optional[str] = None

    @model_validator(mode="after")
    def _shape(self) -> "LeaderboardConfig":
        if isinstance(self.defences, str) and self.defences != "all":
            raise ValueError(f"defences: expected 'all' or a list, got '{self.defences}'")
        if not self.suites:
            raise ValueError("suites: empty; name at least one adversary suite (e.g. standard)")
        if not self.seeds:
            raise ValueError("seeds: empty; give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeated values in {self.seeds}")
        missing = sorted(set(self.search.seeds) - set(self.seeds)) if self.search.trials else []
        if missing:
            raise ValueError(f"search.seeds: {missing} not among seeds {self.seeds}; a search attacks a seed's immunised model")
        return self

    def entries(self) -> list[DefenceEntry]:
        """The defence rows, validated against the registry (names unique, none the reference's)."""
        from immunelm.defences import defence_names

        known = defence_names()
        if self.defences == "all":
            unknown = sorted(set(self.exclude) - set(known))
            if unknown:
                raise ImmuneLMError(f"leaderboard '{self.name}': exclude: unknown defence '{unknown[0]}'")
            return [DefenceEntry(name=n) for n in known if n not in self.exclude]
        rows = [DefenceEntry(name=d) if isinstance(d, str) else d for d in self.defences]
        names = [r.name for r in rows]
        for row in rows:
            if row.method not in known:
                raise ImmuneLMError(f"leaderboard '{self.name}': defences: unknown defence '{row.method}' (known: {', '.join(known)})")
            if names.count(row.name) > 1 or row.name == self.reference:
                raise ImmuneLMError(f"leaderboard '{self.name}': defences: row name '{row.name}' is repeated or is the reference's")
        return rows


def leaderboard_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("immunelm.leaderboard.configs").iterdir() if p.name.endswith(".yaml"))


def load_leaderboard(name_or_path: str, overrides: Sequence[str] = ()) -> LeaderboardConfig:
    """A shipped leaderboard by name or a user's YAML by path, with ``key=value`` overrides."""
    path = Path(name_or_path)
    if path.suffix:
        source, raw = str(path), read_yaml_file(path, "leaderboard file")
    elif name_or_path in leaderboard_names():
        source = f"leaderboard '{name_or_path}'"
        text = resources.files("immunelm.leaderboard.configs").joinpath(f"{name_or_path}.yaml").read_text("utf-8")
        raw = parse_yaml_text(text, source)
    else:
        raise ImmuneLMError(f"unknown leaderboard '{name_or_path}' (shipped: {', '.join(leaderboard_names())}; or pass a .yaml path)")
    if not isinstance(raw, dict):
        raise ImmuneLMError(f"{source}: expected a mapping (name, defences, suites, seeds, ...)")
    return load_config(LeaderboardConfig, base=raw, overrides=overrides, label=source)
