"""``immunelm world build|check``: the built-in world and its model organism."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import Field

from immunelm.cli.common import (
    CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, console, out, print_criteria, resolve_config, start_run,
)
from immunelm.config import Config
from immunelm.io import write_json_atomic
from immunelm.world.check import CheckConfig, run_check
from immunelm.world.organism import Organism, OrganismConfig

app = typer.Typer(help="Build and check the built-in world's model organism (no download, CPU).", no_args_is_help=True)


class WorldRunConfig(Config):
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    check: CheckConfig = Field(default_factory=CheckConfig)
    cache_dir: Optional[str] = Field(None, description="Organism cache (default ~/.cache/immunelm or $IMMUNELM_CACHE).")


def organism_from(cfg: WorldRunConfig) -> Organism:
    return Organism(cfg.organism, Path(cfg.cache_dir) if cfg.cache_dir else None)


def build_organism(cfg: WorldRunConfig, force: bool = False) -> tuple[Organism, dict]:
    organism = organism_from(cfg)
    cached = organism.is_built() and not force
    info = organism.build(force=force)
    verb = "reused cached" if cached else "built"
    console.print(
        f"{verb} organism: base {info['base']['seconds']:.1f}s + aligned {info['aligned']['seconds']:.1f}s "
        f"({info['base']['parameters']:,} parameters) in {organism.cache_root}"
    )
    return organism, info


def print_check(report: dict) -> None:
    print_criteria("world check", report["criteria"])
    m = report["measured"]
    out.print("per-token KL(aligned||base):", " ".join(f"{x:.3f}" for x in m["kl"]["per_position"]))
    out.print("attack curve (step: harmful acc):", ", ".join(
        f"{e['step']}: {e['harmful_accuracy']:.2f}" for e in m["attack"]["curve"]))


def check_organism(cfg: WorldRunConfig, run_dir: Path, force: bool = False) -> dict:
    organism, info = build_organism(cfg, force)
    report = run_check(organism, cfg.check, info)
    report["build"] = {k: info[k]["seconds"] for k in organism.STAGES} | {"total_seconds": info["total_seconds"]}
    write_json_atomic(run_dir / "world_check.json", report)
    print_check(report)
    return report


@app.command()
def build(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
          force: bool = typer.Option(False, help="Rebuild even if cached.")) -> None:
    """Build (or reuse) the base and aligned organism."""
    cfg = resolve_config(WorldRunConfig, config, overrides)
    build_organism(cfg, force)


@app.command()
def check(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
          run_dir: Optional[Path] = RUN_DIR_OPTION, force: bool = typer.Option(False, help="Rebuild first."),
          overwrite: bool = OVERWRITE_OPTION) -> None:
    """Measure the organism's phenomena; exit 1 if a target is missed."""
    cfg = resolve_config(WorldRunConfig, config, overrides)
    path = start_run("world-check", run_dir, cfg, cfg.organism.seed, overwrite=overwrite)
    report = check_organism(cfg, path, force)
    raise typer.Exit(0 if report["passed"] else 1)
