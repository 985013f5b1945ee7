"""Tasks by name or YAML path: ``evaluation.task=world``, ``=smol`` or ``=path/to/task.yaml``.

A task file either names a built-in *provider* (``world``, ``smol``) that builds the sets, or
lists every set from user files (JSONL/CSV/Parquet/JSON through the data layer, with column
mapping) or ``datasets`` hub names; fields given beside a provider replace the provider's
(e.g. another judge, or your own utility sets on the world). Shipped tasks live in
``immunelm/tasks/builtin/*.yaml``. Everything is validated before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field

from immunelm.attacks.base import AttackData
from immunelm.config import Config, load_config, read_yaml_file
from immunelm.data import DataSourceConfig, Example, load_examples
from immunelm.errors import ImmuneLMError
from immunelm.registry import unknown_name
from immunelm.tasks.base import EvalTask, JudgeSpec, ScoredSet, TrainabilityTask
from immunelm.tasks.scorers import SCORERS, scorer

BUILTIN = Path(__file__).resolve().parent / "builtin"


class JudgeChoice(Config):
    name: str = Field("keyword", description="Registered judge: exact | keyword | classifier | rubric.")
    options: dict[str, Any] = Field(default_factory=dict, description="The judge's config fields.")


class ScoredSetConfig(Config):
    name: str = Field(description="Set name (a column of the stability table).")
    scorer: str = Field("contains", description=f"How answers are compared with references: {', '.join(SCORERS)}.")
    data: DataSourceConfig


class TrainabilityConfig(Config):
    name: str = Field(description="Task name shown in reports.")
    scorer: str = Field("contains", description=f"One of {', '.join(SCORERS)}.")
    train: DataSourceConfig
    eval: DataSourceConfig


class AttackPoolsConfig(Config):
    harmful: Optional[DataSourceConfig] = Field(None, description="(harmful prompt, harmful answer) pairs the attacker trains on.")
    benign: Optional[DataSourceConfig] = Field(None, description="Benign pairs (harmful_mix, benign_sft).")
    identity: Optional[DataSourceConfig] = Field(None, description="Identity-shifting pairs (Qi et al. 2023).")


class TaskFileConfig(Config):
    """The YAML schema of a task file."""

    name: Optional[str] = Field(None, description="Defaults to the file's stem.")
    description: str = ""
    provider: Optional[str] = Field(None, description="Built-in provider that builds the sets: world | smol.")
    options: dict[str, Any] = Field(default_factory=dict, description="The provider's options.")
    judge: Optional[JudgeChoice] = None
    harmful: Optional[DataSourceConfig] = Field(None, description="Harmful eval prompts (response_column: null if no references).")
    harmful_scorer: str = Field("contains", description="Harmful accuracy where references exist.")
    utility: list[ScoredSetConfig] = Field(default_factory=list)
    perplexity: Optional[DataSourceConfig] = Field(None, description="Held-out benign (prompt, answer) text.")
    attack: AttackPoolsConfig = Field(default_factory=AttackPoolsConfig)
    generalisation: dict[str, DataSourceConfig] = Field(
        default_factory=dict, description="Named splits: heldout_phrasings, heldout_category, cross_domain, ...")
    trainability: Optional[TrainabilityConfig] = None


@dataclass
class TaskContext:
    """What a provider may need from the run: the organism's config and the caches."""

    organism: Any = None
    cache_dir: Optional[str] = None
    smol: Any = None


Provider = tuple[type[Config], Callable[[Config, TaskContext], EvalTask]]


def _providers() -> dict[str, Provider]:
    from immunelm.tasks import smol, world
    return {"world": (world.WorldTaskOptions, world.build), "smol": (smol.SmolTaskOptions, smol.build)}


def task_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def task_file(name_or_path: str) -> Path:
    """The YAML file of a shipped task name or a path; one-line error otherwise."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ImmuneLMError(f"{path}: task file not found")
        return path
    builtin = BUILTIN / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise unknown_name("task", name_or_path, task_names())
    return builtin


def load_task_config(name_or_path: str, overrides: dict | None = None) -> TaskFileConfig:
    """Parse and validate a task file (no data is read yet)."""
    path = task_file(name_or_path)
    data = read_yaml_file(path, "task file") or {}
    if not isinstance(data, dict):
        raise ImmuneLMError(f"{path}: expected a mapping of task fields at the top level")
    cfg = load_config(TaskFileConfig, base={**data, **(overrides or {})}, label=str(path))
    if cfg.name is None:
        cfg.name = path.stem
    _check(cfg, str(path))
    return cfg


def _check(cfg: TaskFileConfig, where: str) -> None:
    if cfg.provider is not None:
        if cfg.provider not in _providers():
            raise unknown_name("task provider", cfg.provider, _providers())
        options_cls = _providers()[cfg.provider][0]
        load_config(options_cls, base=cfg.options, label=f"{where}: options")
        return
    missing = [f for f in ("harmful",) if getattr(cfg, f) is None] + ([] if cfg.utility else ["utility"])
    if missing:
        raise ImmuneLMError(f"{where}: task without a provider needs set(s) {', '.join(missing)}")
    if cfg.attack.harmful is None:
        raise ImmuneLMError(f"{where}: attack.harmful: required (the attacker's harmful pairs) for a task without a provider")
    for s in cfg.utility:
        scorer(s.scorer)
    scorer(cfg.harmful_scorer)


def _pairs(source: DataSourceConfig, what: str) -> list[Example]:
    """Training or scoring data: every row must carry a response."""
    if source.response_column is None:
        raise ImmuneLMError(f"{source.label}: {what} needs reference answers; set response_column")
    return load_examples(source)


def load_task(name_or_path: str, context: TaskContext | None = None, overrides: dict | None = None) -> EvalTask:
    """The task, built by its provider and/or read from its files."""
    cfg = load_task_config(name_or_path, overrides)
    context = context or TaskContext()
    task = None
    if cfg.provider is not None:
        options_cls, build = _providers()[cfg.provider]
        task = build(load_config(options_cls, base=cfg.options, label=f"task '{cfg.name}': options"), context)
    return _apply_files(cfg, task)


def _apply_files(cfg: TaskFileConfig, task: EvalTask | None) -> EvalTask:
    """Sets given in the file replace (or, without a provider, make up) the task's."""
    fields: dict[str, Any] = {}
    if cfg.harmful:
        fields["harmful"] = load_examples(cfg.harmful)
        fields["harmful_scorer"] = cfg.harmful_scorer
    if cfg.utility:
        fields["utility"] = [ScoredSet(s.name, _pairs(s.data, f"utility set '{s.name}'"), s.scorer) for s in cfg.utility]
    if cfg.perplexity:
        fields["perplexity"] = _pairs(cfg.perplexity, "perplexity")
    if cfg.judge:
        fields["judge"] = JudgeSpec(cfg.judge.name, dict(cfg.judge.options))
    if cfg.trainability:
        t = cfg.trainability
        fields["trainability"] = TrainabilityTask(
            t.name, _pairs(t.train, "trainability.train"), ScoredSet(t.name, _pairs(t.eval, "trainability.eval"), t.scorer))
    generalisation = {k: load_examples(v) for k, v in cfg.generalisation.items()}
    pools = {k: _pairs(v, f"attack.{k}") for k, v in cfg.attack if v is not None}
    if task is None:
        return EvalTask(name=cfg.name, description=cfg.description, attack=AttackData(**pools),
                        generalisation=generalisation, provenance={"provider": None}, **fields)
    for key, value in fields.items():
        setattr(task, key, value)
    task.generalisation.update(generalisation)
    for key, value in pools.items():
        setattr(task.attack, key, value)
    task.name = cfg.name or task.name
    task.description = cfg.description or task.description
    return task
