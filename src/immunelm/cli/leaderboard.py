"""``immunelm leaderboard``: defences x suites x seeds (+ attacker searches) from one YAML,
every cell cached; the work is :mod:`immunelm.leaderboard`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from immunelm.cli.common import OVERRIDES_ARG, console, out
from immunelm.leaderboard.config import load_leaderboard
from immunelm.errors import ImmuneLMError
from immunelm.leaderboard.cells import unique
from immunelm.leaderboard.runner import run_leaderboard, validate_leaderboard
from immunelm.leaderboard.table import fewer_seeds
from immunelm.provenance import record_run


def _f(stat) -> str:
    return "n/a" if stat.mean is None else f"{stat.mean:.2f}"


def leaderboard(
    name: str = typer.Argument(..., help="Shipped leaderboard (organism-standard | smol-quick) or a YAML path."),
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    root: Path = typer.Option(Path("runs/leaderboard"), "--root", help="Cell cache and outputs (ROOT/cells, ROOT/<name>)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Cells in parallel processes (default: the file's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the cells (cached / to run); run nothing."),
    report_only: bool = typer.Option(False, "--report-only", help="Write leaderboard.json/html from the cells already done (complete=false if some are missing); run nothing."),
) -> None:
    """Run a leaderboard; re-running it (or extending its seeds, suites or defences) runs only the
    cells whose results are missing."""
    lb = load_leaderboard(name, overrides or [])
    if workers is not None and workers < 1:
        raise ImmuneLMError(f"--workers {workers}: expected a positive number of processes")
    cells = validate_leaderboard(lb, root)
    distinct = unique(cells)
    todo = [c for c in distinct if not c.done(lb.search.trials)]
    out.print(f"leaderboard {lb.name}: {len(distinct)} cells, {len(distinct) - len(todo)} cached, {len(todo)} to run "
              f"({', '.join(f'{k} {sum(c.kind == k for c in todo)}' for k in ('immunise', 'evaluate', 'search'))})",
              highlight=False)
    if dry_run:
        for c in todo:
            out.print(f"  to run: {c.describe()}  [{c.key}]", highlight=False, markup=False)
        return
    record_run(root / lb.name, lb, lb.seeds[0])
    report = run_leaderboard(lb, root, cells, workers, run=not report_only)
    if not report.complete:
        status = {c.key: c.status for c in report.cells}  # one per key, as in the count above
        missing = sum(s not in ("cached", "ran") for s in status.values())
        out.print(f"  incomplete: {missing} of {len(status)} cells not done; rows show the seeds that are", highlight=False)
    for row in report.rows:
        bounded = _f(row.worst_harmful_within_bound)
        if row.no_attack_within_bound:  # on some seed no attack kept utility: never a plain number
            bounded = "none" if row.worst_harmful_within_bound.mean is None else f"{bounded} (none on some seeds)"
        searched = _f(row.worst_with_search)
        if seeds_note := fewer_seeds(row.worst_with_search, row):  # only seed 0 searched: never read as a 3-seed mean
            searched += f" ({seeds_note})"
        out.print(f"  {row.name:<18} worst {_f(row.worst_harmful)}  within bound {bounded}  with search {searched}  "
                  f"collapse {_f(row.collapse_share)}  benign {_f(row.benign)}  trainability {_f(row.trainability)}",
                  highlight=False)
    console.print(f"leaderboard: {root / lb.name / 'leaderboard.html'}")
