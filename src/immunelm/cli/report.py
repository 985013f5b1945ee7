"""``immunelm report RUN_DIR``: rebuild a run's HTML report from its results.json, no model needed."""

from __future__ import annotations

from pathlib import Path

import typer


def report(run_dir: Path = typer.Argument(..., help="Run directory holding results.json (or the file itself).")) -> None:
    """Regenerate RUN_DIR/report.html and its plots from RUN_DIR/results.json; print the page's path."""
    from immunelm.report import regenerate  # lazy: keeps matplotlib out of every other command's start-up

    typer.echo(str(regenerate(run_dir)))
