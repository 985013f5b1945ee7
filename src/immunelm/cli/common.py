"""Shared CLI plumbing: config loading from ``--config`` + ``key=value`` overrides, run dirs, errors."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Optional, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from immunelm.config import load_config
from immunelm.provenance import record_run

# Logs and CI capture output through pipes, where rich would wrap tables at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)
C = TypeVar("C", bound=BaseModel)

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML file with config fields.")
OVERRIDES_ARG = typer.Argument(None, help="key=value overrides, e.g. organism.align.lr=3e-4", show_default=False)
RUN_DIR_OPTION = typer.Option(None, "--run-dir", help="Where results go (default: runs/<command>-<time>).")


def resolve_config(cls: type[C], config: Optional[Path], overrides: Optional[list[str]]) -> C:
    return load_config(cls, config, overrides or [])


def new_run_dir(command: str, run_dir: Optional[Path]) -> Path:
    if run_dir is not None:
        return run_dir
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{stamp}"


def start_run(command: str, run_dir: Optional[Path], config: BaseModel, seed: int | None) -> Path:
    """Create the run directory and record config, seed, versions and git revision in it."""
    path = new_run_dir(command, run_dir)
    record_run(path, config, seed)
    console.print(f"[dim]run directory: {path}[/dim]")
    return path


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
