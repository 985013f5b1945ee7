"""``run_leaderboard``: plan the cells, run the missing ones (in parallel processes where the
machine allows), aggregate, write ``leaderboard.json`` and ``leaderboard.html``.

Immunise cells run first (the others read their checkpoints), then evaluation and search cells.
A failed cell does not stop the others: the leaderboard is written with that cell marked
``failed`` and ``complete: false``, and the command exits non-zero naming it.
"""

from __future__ import annotations

import datetime as _dt
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from immunelm.errors import ImmuneLMError
from immunelm.io import write_json_atomic
from immunelm.leaderboard.cells import Cell, plan, run_cell, unique
from immunelm.leaderboard.config import LeaderboardConfig
from immunelm.leaderboard.schema import CellRecord, LeaderboardReport
from immunelm.provenance import provenance


def validate_leaderboard(lb: LeaderboardConfig, root: Path) -> list[Cell]:
    """Every defence, preset, suite, space and the model, before any cell runs."""
    from immunelm.api.evaluation import EvaluateConfig, ModelSpec, validate_evaluation

    cells = plan(lb, root)
    check_one_bound(lb)
    for suite in lb.suites:
        validate_evaluation(EvaluateConfig(models=[ModelSpec(name=lb.reference, source=lb.model, role="reference")],
                                           evaluation=lb.evaluation.model_copy(update={"suite": suite}),
                                           organism=lb.organism, smol=lb.smol, cache_dir=lb.cache_dir))
    return cells


def check_one_bound(lb: LeaderboardConfig) -> None:
    """Every suite (and the search space) must bound utility with the same epsilon and call a
    model broken at the same threshold: a row's "worst within the bound" is a max over all of
    them, and a max over different bounds is a number for no bound."""
    from immunelm.attacks.suites import load_suite
    from immunelm.search.space import load_space

    suites = {name: load_suite(name) for name in lb.suites}
    bounds = {f"suite '{name}'": (suite.epsilon, suite.threshold) for name, suite in suites.items()}
    if lb.search.trials:
        space = load_space(lb.search.space)
        bounds[f"search space '{lb.search.space}'"] = (space.epsilon, space.threshold)
    if len(set(bounds.values())) > 1:
        listed = ", ".join(f"{k}: epsilon {e}, threshold {t}" for k, (e, t) in bounds.items())
        raise ImmuneLMError(f"leaderboard '{lb.name}': suites and search space must share epsilon and threshold ({listed})")


def run_leaderboard(lb: LeaderboardConfig, root: Path, cells: list[Cell] | None = None, workers: int | None = None,
                    run: bool = True) -> LeaderboardReport:
    """``run=False``: only aggregate the cells already done (a partial leaderboard, complete=false)."""
    started = time.perf_counter()
    root = Path(root)
    cells = cells if cells is not None else validate_leaderboard(lb, root)
    workers = workers or lb.workers
    if workers < 1:
        raise ImmuneLMError(f"--workers {workers}: expected a positive number of processes")
    trials = lb.search.trials
    status = {c.key: ("cached" if c.done(trials) else "missing") for c in cells}
    results: dict[str, dict] = {}
    if run:
        _prepare_shared_models(lb)
    for phase in (["immunise"], ["evaluate", "search"]) if run else ():
        todo = [c for c in unique(cells) if c.kind in phase and status[c.key] == "missing"
                and (c.needs is None or status.get(c.needs) in ("cached", "ran"))]
        results.update(_run(todo, lb, trials, workers))
        for c in todo:
            status[c.key] = "ran" if results[c.key]["ok"] else "failed"
    report = _report(lb, root, cells, status, results, workers, time.perf_counter() - started)
    out = root / lb.name
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "leaderboard.json", report.model_dump(mode="json"), allow_nan=False)
    from immunelm.leaderboard.html import render_leaderboard

    render_leaderboard(report, out)
    failed = [c for c in unique(cells) if status[c.key] in ("failed", "missing")]
    if failed and run:
        first = failed[0]
        why = results.get(first.key, {}).get("error") or "its immunise cell failed"
        raise ImmuneLMError(f"leaderboard '{lb.name}': {len(failed)} cell(s) not done, e.g. {first.describe()} "
                            f"({why}; log: {first.dir / 'log.txt'}); the leaderboard was written with complete=false")
    return report


def _prepare_shared_models(lb: LeaderboardConfig) -> None:
    """Build (or find cached) the organism once here, so parallel cells never build it twice."""
    from immunelm.sources import load_model_source

    if lb.model.startswith(("organism:", "smol:")):
        load_model_source(lb.model, lb.cache_dir, organism_config=lb.organism, smol_config=lb.smol)


def _run(todo: list[Cell], lb: LeaderboardConfig, trials: int, workers: int) -> dict[str, dict]:
    """Run ``todo``; one process per worker, each with CPU cores / workers torch threads."""
    if not todo:
        return {}
    threads = lb.threads or max(1, (os.cpu_count() or 1) // workers)
    lb_json = lb.model_dump(mode="json")
    bar = tqdm(total=len(todo), unit="cell", desc=f"leaderboard {lb.name} ({todo[0].kind})")
    out = {}
    if workers == 1:
        for cell in todo:
            bar.set_postfix_str(cell.describe())
            out[cell.key] = run_cell(cell, lb_json, trials, threads)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, cell, lb_json, trials, threads): cell for cell in todo}
            for future in as_completed(futures):
                cell = futures[future]
                try:
                    out[cell.key] = future.result()
                except Exception as exc:  # the worker process itself died (e.g. out of memory)
                    out[cell.key] = {"key": cell.key, "ok": False, "error": f"worker died: {type(exc).__name__}: {exc}"}
                bar.set_postfix_str(cell.describe())
                bar.update()
    bar.close()
    return out


def _recorded_seconds(cell: Cell) -> float | None:
    import json

    cost = cell.dir / "cost.json"
    return json.loads(cost.read_text())["seconds"] if cost.is_file() else None


def _report(lb, root, cells, status, results, workers, wall) -> LeaderboardReport:
    from immunelm.attacks.suites import load_suite
    from immunelm.leaderboard.table import build_rows

    records = [CellRecord(kind=c.kind, row=c.row, seed=c.seed, suite=c.suite, key=c.key, status=status[c.key],
                          seconds=results.get(c.key, {}).get("seconds") or _recorded_seconds(c),
                          error=results.get(c.key, {}).get("error")) for c in cells]
    done = {k for k, s in status.items() if s in ("cached", "ran")}
    per_kind: dict[str, float] = {}
    for r in {r.key: r for r in records}.values():  # a key shared by rows or seeds ran (and cost) once
        if r.seconds is not None:
            per_kind[r.kind] = per_kind.get(r.kind, 0.0) + r.seconds
    first_suite = load_suite(lb.suites[0])
    return LeaderboardReport(
        name=lb.name, created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=lb.evaluation.task, suites=lb.suites, seeds=lb.seeds, epsilon=first_suite.epsilon,
        threshold=first_suite.threshold, rows=build_rows(cells, done, lb.reference, lb.search.trials), cells=records,
        complete=all(c.key in done for c in cells), wall_seconds=wall, cell_seconds=per_kind, workers=workers,
        config=lb.model_dump(mode="json"), provenance=provenance(lb.seeds[0]))
