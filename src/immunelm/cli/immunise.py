"""``immunelm immunise <method>``: argument parsing; the work is :func:`immunelm.api.run_immunise`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from immunelm.api import ImmuniseConfig, run_immunise, validate_immunise
from immunelm.api.immunise import immunise_seed
from immunelm.cli.common import (
    CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, check_run_dir, console, resolve_config, start_run,
)
from immunelm.defences import build_defence


def immunise(
    method: str = typer.Argument(..., help="Defence name (e.g. deep-align, constrained-sft)."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Immunise a model with a registered defence; writes RUN_DIR/model (safetensors)."""
    build_defence(method)  # fail fast on a typo, before loading anything
    cfg = resolve_config(ImmuniseConfig, config, overrides)
    check_run_dir(run_dir, overwrite=overwrite)
    defence_cfg = validate_immunise(method, cfg)  # data files and model sources too: before the run dir
    path = start_run(f"immunise-{method}", run_dir, cfg, immunise_seed(method, defence_cfg), overwrite=overwrite)
    out = run_immunise(method, cfg, path, defence_cfg)
    console.print(f"immunised with {method} -> {out}")
