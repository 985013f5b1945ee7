"""A leaderboard's cells, each cached by the hash of its resolved config.

Three kinds: ``immunise`` (a defence x seed -> a checkpoint), ``evaluate`` (a model x suite ->
results.json) and ``search`` (a model -> an attacker study). A cell lives in
``ROOT/cells/<kind>/<key>``, where ``key`` hashes everything that determines its result (the
resolved defence config with its seed, the model, the organism, the suite's content, the
evaluation settings, the search space), never the code version (the provenance records that).
So a killed or extended leaderboard re-runs only the cells whose result is missing, and two
leaderboards that share a cell share its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from immunelm.errors import ImmuneLMError
from immunelm.io import write_json_atomic
from immunelm.leaderboard.config import DefenceEntry, LeaderboardConfig

DONE = {"immunise": "immunise.json", "evaluate": "results.json", "search": "search.json"}


def key_of(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Cell:
    kind: str  # immunise | evaluate | search
    row: str  # the defence row (or the reference)
    seed: Optional[int]
    suite: Optional[str]
    spec: dict  # what the key hashes; enough to run the cell
    root: Path
    needs: Optional[str] = None  # key of the immunise cell whose checkpoint this cell reads
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = key_of({"kind": self.kind, **self.spec})

    @property
    def dir(self) -> Path:
        return self.root / "cells" / self.kind / self.key

    def done(self, trials: int = 0) -> bool:
        marker = self.dir / DONE[self.kind]
        if not marker.is_file():
            return False
        if self.kind == "search":
            return json.loads(marker.read_text()).get("n_complete", 0) >= trials
        return True

    def describe(self) -> str:
        suite = Path(self.suite).stem if self.suite else ""  # a suite file's name, not its whole path
        return " ".join(str(x) for x in (self.kind, self.row, f"seed {self.seed}" if self.seed is not None else "", suite) if x)


def model_context(lb: LeaderboardConfig, model: str) -> dict:
    """What else decides a model's behaviour: the organism / smol organism it was built from."""
    if model.startswith("organism:"):
        return {"organism": lb.organism.model_dump(mode="json")}
    if model.startswith("smol:"):
        return {"smol": lb.smol.model_dump(mode="json")}
    return {}


def immunise_config(lb: LeaderboardConfig, entry: DefenceEntry, seed: int):
    """(ImmuniseConfig, validated defence config) for one defence row and seed."""
    from immunelm.api.immunise import ImmuniseConfig, validate_immunise
    from immunelm.config import deep_merge, load_config, read_yaml_file
    from immunelm.defences import build_defence

    base = {"model": lb.model}
    if entry.preset:
        base = deep_merge(base, read_yaml_file(entry.preset, f"defence '{entry.name}' preset"))
    base["defence"] = deep_merge(base.get("defence", {}), entry.config)
    fields = build_defence(entry.method).config_cls.model_fields
    seeded = {"seed": seed} if "seed" in fields else {}
    if "train" in fields:
        seeded["train"] = {"seed": seed, "progress": False}
    base["defence"] = deep_merge(base["defence"], seeded)
    cfg = load_config(ImmuniseConfig, base={**base, "organism": lb.organism.model_dump(), "smol": lb.smol.model_dump(),
                                            "cache_dir": lb.cache_dir}, label=f"defence '{entry.name}'")
    if cfg.model != lb.model:  # the row would be another base model than its reference, anchor and task
        raise ImmuneLMError(f"defence '{entry.name}': preset {entry.preset}: model '{cfg.model}' differs from the "
                            f"leaderboard's model '{lb.model}'; every row immunises the leaderboard's model")
    return cfg, validate_immunise(entry.method, cfg)


def changed_settings(cfg) -> dict:
    """The immunise settings a preset changed from their defaults (chat template, remote code,
    merged save): in the key only when set, so the keys of default cells never change."""
    defaults = type(cfg).model_fields
    return {k: getattr(cfg, k) for k in ("chat_template", "trust_remote_code", "save_merged")
            if getattr(cfg, k) != defaults[k].default}


def plan(lb: LeaderboardConfig, root: Path) -> list[Cell]:
    """Every cell of the leaderboard (validated: bad defences, presets, suites fail here)."""
    from immunelm.api.immunise import base_source
    from immunelm.attacks.suites import load_suite
    from immunelm.search.space import load_space

    suites = {s: load_suite(s).model_dump(mode="json") for s in lb.suites}
    space = load_space(lb.search.space).model_dump(mode="json") if lb.search.trials else None
    evaluation = lb.evaluation.model_dump(mode="json")
    cells: list[Cell] = []

    def add(cell: Cell) -> None:
        # every row keeps its own cells; rows or seeds with the same config share a key, so the
        # runner runs each key once (a training-free defence: one checkpoint for every seed)
        cells.append(cell)

    def model_cells(row: str, model_spec: dict, seed: Optional[int], needs: Optional[str]) -> None:
        for suite, content in suites.items():
            add(Cell("evaluate", row, seed, suite, {"model": model_spec, "suite": content,
                                                    "evaluation": {**evaluation, "suite": suite}}, root, needs))
        if space and (seed in lb.search.seeds or (seed is None and lb.search.include_reference)):
            add(Cell("search", row, seed, None, {"model": model_spec, "space": space, "evaluation": evaluation}, root, needs))

    reference = {"source": lb.model, **model_context(lb, lb.model)}
    model_cells(lb.reference, reference, None, None)
    for entry in lb.entries():
        for seed in lb.seeds:
            cfg, defence_cfg = immunise_config(lb, entry, seed)
            spec = {"defence": entry.method, "defence_config": defence_cfg.model_dump(mode="json"), "model": cfg.model,
                    "base_model": base_source(cfg), "data": cfg.data.model_dump(mode="json"), **model_context(lb, cfg.model),
                    **changed_settings(cfg)}
            immunise = Cell("immunise", entry.name, seed, None, spec, root)
            add(immunise)
            model_cells(entry.name, {"immunised": immunise.key, "anchor": reference}, seed, immunise.key)
    return cells


def unique(cells: list[Cell]) -> list[Cell]:
    """One cell per key (what actually runs)."""
    return list({c.key: c for c in reversed(cells)}.values())[::-1]


def run_cell(cell: Cell, lb_json: dict, trials: int, threads: int) -> dict:
    """Run one cell in this process, its output in ``cell.dir/log.txt``; returns its record."""
    import torch

    torch.set_num_threads(threads)
    if cell.dir.exists() and cell.kind != "search":  # a killed run's leftovers (a search resumes its study)
        shutil.rmtree(cell.dir)
    cell.dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell.dir / "cell.json", {"kind": cell.kind, "row": cell.row, "seed": cell.seed, "suite": cell.suite,
                                               "key": cell.key, "spec": cell.spec})
    lb = LeaderboardConfig.model_validate(lb_json)
    started = time.perf_counter()
    with open(cell.dir / "log.txt", "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            {"immunise": _immunise, "evaluate": _evaluate, "search": _search}[cell.kind](cell, lb, trials)
        except BaseException as exc:  # recorded for the leaderboard; re-raised as one line by the caller
            traceback.print_exc()
            return {"key": cell.key, "ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                    "seconds": time.perf_counter() - started}
    seconds = search_cost(cell, time.perf_counter() - started + earlier_seconds(cell))
    write_json_atomic(cell.dir / "cost.json", {"seconds": seconds, "threads": threads})
    return {"key": cell.key, "ok": True, "seconds": seconds}


def earlier_seconds(cell: Cell) -> float:
    """A resumed or extended search cell's cost so far (its earlier parts' seconds); 0 otherwise."""
    cost = cell.dir / "cost.json"
    return json.loads(cost.read_text())["seconds"] if cell.kind == "search" and cost.is_file() else 0.0


def search_cost(cell: Cell, timed: float) -> float:
    """A cell's cost; for a search, never less than its trials' summed seconds.

    A part of a search that was killed wrote no ``cost.json``, but its trials survive in the
    study and the resumed part reports them: their seconds are a lower bound on what it cost.
    """
    summary = cell.dir / "search.json"
    if cell.kind != "search" or not summary.is_file():
        return timed
    trials = json.loads(summary.read_text()).get("trials", [])
    return max(timed, sum(t.get("seconds") or 0.0 for t in trials))


def entry_of(lb: LeaderboardConfig, row: str) -> DefenceEntry:
    return next(e for e in lb.entries() if e.name == row)


def _immunise(cell: Cell, lb: LeaderboardConfig, trials: int) -> None:
    from immunelm.api.immunise import run_immunise

    entry = entry_of(lb, cell.row)
    cfg, defence_cfg = immunise_config(lb, entry, cell.seed)
    run_immunise(entry.method, cfg, cell.dir, defence_cfg)


def model_source(cell: Cell) -> str:
    if cell.needs is None:
        return cell.spec["model"]["source"]
    return str(cell.root / "cells" / "immunise" / cell.needs / "model")


def _evaluate(cell: Cell, lb: LeaderboardConfig, trials: int) -> None:
    from immunelm.api.evaluation import EvaluateConfig, ModelSpec, run_evaluation

    if cell.needs is None:
        models = [ModelSpec(name=cell.row, source=lb.model, role="reference")]
    else:  # the reference is loaded only as the anchor of KL and the weight delta
        models = [ModelSpec(name=cell.row, source=model_source(cell), role="defended", defence=cell.row),
                  ModelSpec(name=lb.reference, source=lb.model, role="reference", evaluate=False)]
    evaluation = lb.evaluation.model_copy(update={"suite": cell.suite})
    cfg = EvaluateConfig(models=models, evaluation=evaluation, organism=lb.organism, smol=lb.smol, cache_dir=lb.cache_dir)
    run_evaluation(cfg, cell.dir)


def _search(cell: Cell, lb: LeaderboardConfig, trials: int) -> None:
    import torch

    from immunelm.api.search import SearchConfig, run_search

    cfg = SearchConfig(name=cell.row, model=model_source(cell), space=lb.search.space, trials=trials, workers=1,
                       threads=torch.get_num_threads(),
                       evaluation=lb.evaluation, organism=lb.organism, smol=lb.smol, cache_dir=lb.cache_dir,
                       study=cell_study(cell))
    run_search(cfg, cell.dir)


def cell_study(cell: Cell) -> str:
    """The study of a search cell, named by its key alone, so the rows and leaderboards that share
    the cell resume one study whatever they call it. A cell begun under the older row-prefixed
    name (``<row>-<key>``) keeps it."""
    journal = cell.dir / "study.journal"
    if journal.is_file():
        import optuna

        from immunelm.search.study import make_storage

        begun = [n for n in optuna.get_all_study_names(make_storage(str(journal))) if n.endswith(cell.key)]
        if begun:
            return begun[0]
    return f"cell-{cell.key}"
