"""Shared CLI plumbing: config loading from ``--config`` + ``key=value`` overrides, run dirs, errors.

Run directories follow one rule for every command (see :func:`check_run_dir`): a directory
that already holds files is refused unless the command resumes it (``--resume``) or replaces
it (``--overwrite``), so a new run never mixes its files with an old run's.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from immunelm.config import load_config
from immunelm.errors import ImmuneLMError
from immunelm.io import ensure_dir, remove, temp_name
from immunelm.provenance import record_run

# Logs and CI capture output through pipes, where rich would wrap tables at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)
C = TypeVar("C", bound=BaseModel)

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML file with config fields.")
OVERRIDES_ARG = typer.Argument(None, help="key=value overrides, e.g. organism.align.lr=3e-4", show_default=False)
RUN_DIR_OPTION = typer.Option(None, "--run-dir", help="Where results go (default: runs/<command>-<time>).")
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Delete a previous run's files in --run-dir first.")
RUN_MARKER = "provenance.json"  # every run directory has it: what --overwrite may delete


@dataclass
class CurrentRun:
    """The run this process started, for the one-line message when it is interrupted."""

    path: Path
    resumable: bool = False


CURRENT_RUN: CurrentRun | None = None


def resolve_config(cls: type[C], config: Optional[Path], overrides: Optional[list[str]]) -> C:
    return load_config(cls, config, overrides or [])


def new_run_dir(command: str, run_dir: Optional[Path]) -> Path:
    if run_dir is not None:
        return run_dir
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / f"{command}-{stamp}", 2
    while os.path.lexists(path):  # two runs in the same second must not share a directory
        path, n = Path("runs") / f"{command}-{stamp}-{n}", n + 1
    return path


def _is_non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_creatable(path: Path) -> None:
    """One line if ``path`` cannot be made: a file in the way, or no write permission."""
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == path:
        return
    if not ancestor.is_dir():
        raise ImmuneLMError(f"{path}: cannot create the run directory: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):  # also false on a read-only file system
        raise ImmuneLMError(f"{path}: cannot create the run directory: {ancestor} is not writable")


def check_run_dir(path: Optional[Path], resume: bool = False, overwrite: bool = False) -> None:
    """The run-directory rule, checked before any work; writes nothing. ``None``: the default
    ``runs/<command>-<time>``, always a new directory."""
    if resume and overwrite:
        raise ImmuneLMError("--resume and --overwrite contradict each other: pass one of them")
    if path is None:
        if resume:
            raise ImmuneLMError("--resume needs --run-dir (the run to continue)")
        return
    if os.path.lexists(path) and not path.is_dir():
        raise ImmuneLMError(f"{path}: exists and is not a directory; choose another --run-dir")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ImmuneLMError(f"{path}: run directory is not writable")
    if resume:
        if not _is_non_empty_dir(path):
            raise ImmuneLMError(f"{path}: nothing to resume (no such run directory, or it is empty); run without --resume")
        return
    if _is_non_empty_dir(path):
        if not overwrite:
            raise ImmuneLMError(f"{path}: run directory is not empty (a previous run's files); pass --resume to "
                                "continue it, --overwrite to replace it, or choose another --run-dir")
        if not (path / RUN_MARKER).is_file():
            raise ImmuneLMError(f"{path}: --overwrite refused: no {RUN_MARKER}, so it is not an immunelm run "
                                "directory; delete it yourself or choose another --run-dir")
    _check_creatable(path)


def _clear(path: Path) -> None:
    """Delete a previous run: renamed aside first, so a kill mid-delete leaves no half run."""
    aside = temp_name(path)
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise ImmuneLMError(f"{path}: --overwrite could not remove the previous run ({exc.strerror or exc})") from exc
    remove(aside)


def start_run(command: str, run_dir: Optional[Path], config: BaseModel, seed: int | None, *,
              resume: bool = False, overwrite: bool = False, resumable: bool = False,
              resumed_from: str | None = None) -> Path:
    """Check the run-directory rule, create it, and record config, seed, versions and git revision.

    ``resumable``: the command supports ``--resume`` (said when it is interrupted)."""
    global CURRENT_RUN
    check_run_dir(run_dir, resume, overwrite)
    path = new_run_dir(command, run_dir)
    if run_dir is None:
        check_run_dir(path)  # the default can be blocked too (a file named runs)
    if overwrite and _is_non_empty_dir(path):
        _clear(path)
        console.print(f"[dim]--overwrite: removed the previous run in {path}[/dim]")
    ensure_dir(path)
    CURRENT_RUN = CurrentRun(path, resumable)
    record_run(path, config, seed, resumed_from=resumed_from)
    console.print(f"[dim]run directory: {path}[/dim]")
    return path


def evaluation_seed(cfg, task) -> int:
    """The seed an evaluation samples with (its generation settings after the task's defaults),
    for ``start_run`` in ``evaluate``."""
    from immunelm.eval.runner import resolve_settings

    return resolve_settings(cfg.evaluation, task).generation.seed


def interrupted_message() -> str:
    """What a Ctrl-C left behind, in one line."""
    if CURRENT_RUN is None:
        return "interrupted before a run directory was created: nothing was written"
    from immunelm.engine.checkpoint import checkpoint_dirs

    path = CURRENT_RUN.path
    found = checkpoint_dirs(path / "checkpoints")
    if found and CURRENT_RUN.resumable:
        return f"interrupted: kept {path} (last checkpoint {found[-1].name}; resume with --resume)"
    return f"interrupted: kept {path} (incomplete: no final result was written)"


def print_criteria(title: str, criteria: list[dict]) -> None:
    """A check's criteria (measured vs target, PASS/FAIL) as one table on stdout."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("criterion", "measured", "target", "result"):
        table.add_column(col)
    for row in criteria:
        mark = "[green]PASS[/green]" if row["passed"] else "[red]FAIL[/red]"
        table.add_row(row["criterion"], f"{row['measured']:.3f}", f"{row['op']} {row['target']}", mark)
    out.print(table)
