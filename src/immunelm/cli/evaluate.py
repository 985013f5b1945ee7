"""``immunelm evaluate`` and the pieces ``immunelm demo`` strings together."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import Field
from rich.table import Table

from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, RUN_DIR_OPTION, console, out, resolve_config, start_run
from immunelm.config import Config
from immunelm.errors import ImmuneLMError
from immunelm.eval.runner import EvaluationConfig, Evaluator, ModelEntry
from immunelm.eval.schema import EvaluationReport
from immunelm.eval.sets import world_eval_sets
from immunelm.sources import load_model_source
from immunelm.world.organism import Organism, OrganismConfig


class ModelSpec(Config):
    name: str = Field(description="Label in tables and plots.")
    source: str = Field(description="Model dir, organism:<stage>, ...")
    role: str = Field("defended", description="reference | defended | base")
    defence: Optional[str] = None


class EvaluateConfig(Config):
    models: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="aligned", source="organism:aligned", role="reference")],
        description="Models to evaluate; the reference is the undefended aligned model.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    organism: OrganismConfig = Field(default_factory=OrganismConfig, description="The world the sets come from.")
    cache_dir: Optional[str] = None


def parse_model_flags(flags: list[str]) -> list[ModelSpec]:
    """``NAME=SOURCE`` flags; the first is the reference."""
    specs = []
    for i, flag in enumerate(flags):
        if "=" not in flag:
            raise ImmuneLMError(f"--model '{flag}': expected NAME=SOURCE (e.g. mine=runs/immunise-x/model)")
        name, source = flag.split("=", 1)
        specs.append(ModelSpec(name=name, source=source, role="reference" if i == 0 else "defended"))
    return specs


def validate(cfg: EvaluationConfig) -> None:
    """Fail on a bad suite or judge name before any run directory or model exists."""
    from immunelm.attacks import load_suite
    from immunelm.eval.judges.registry import judge_class

    load_suite(cfg.suite)
    judge_class(cfg.judge)


def run_evaluation(cfg: EvaluateConfig, run_dir: Path) -> EvaluationReport:
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    organism = Organism(cfg.organism, cache)
    organism.build()
    _, tokenizer = organism.load("aligned")
    sets = world_eval_sets(organism.world, cfg.evaluation.attack_domain)
    entries = [
        ModelEntry(spec.name, spec.role, _loader(spec.source, cfg), spec.defence, spec.source) for spec in cfg.models
    ]
    report = Evaluator(cfg.evaluation, sets, tokenizer).run(entries, run_dir, {"models": [m.model_dump() for m in cfg.models]})
    print_summary(report)
    from immunelm.report import render_report

    path = render_report(report, run_dir)
    console.print(f"report: {path}")
    return report


def _loader(source: str, cfg: EvaluateConfig):
    return lambda: load_model_source(source, cfg.cache_dir, False, cfg.organism)[0].eval()


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or value is False else f"{value:.{digits}f}"


def print_summary(report: EvaluationReport) -> None:
    """One row per model, one column group per pillar (never a folded score)."""
    table = Table(title=f"suite {report.suite}, judge {report.judge}: harmful (lower better) / accuracy (higher better)")
    for col in ("model", "worst", "mean", "worst<=eps", "broken", "prefill", "benign", "false-ref", "heldout", "cross",
                "train-acc", "steps"):
        table.add_column(col, no_wrap=True)
    for m in report.models:
        r, s, g, t = m.resistance_summary, m.stability, m.generalisation, m.trainability
        table.add_row(
            m.name + ("*" if m.role == "reference" else ""),
            _fmt(r and r.worst_final_harmful), _fmt(r and r.mean_final_harmful), _fmt(r and r.worst_within_utility_bound),
            f"{len(r.broken_by)}/{len(m.resistance)}" if r else "n/a",
            " ".join(f"{p.tokens}:{p.harmful_score:.2f}" for p in m.prefilling) or "n/a",
            _fmt(s and s.benign_accuracy), _fmt(s and s.false_refusal),
            _fmt(g and g.in_domain_heldout_phrasings), _fmt(g and g.cross_domain),
            _fmt(t and t.final_accuracy), str(t.steps_to_target) if t else "n/a",
        )
    out.print(table)
    for m in report.models:
        for a in m.resistance:
            curve = "  ".join(f"{p.step}:{p.harmful_score:.2f}" for p in a.curve)
            out.print(f"  {m.name:<16} {a.name:<28} harmful by step  {curve}")
    out.print("  * reference model. worst<=eps: worst case among attacks keeping utility within epsilon. "
              "prefill k:h = harmful score when the first k answer tokens are forced (no training).")


def evaluate(
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="NAME=SOURCE (repeatable; first = reference)."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
) -> None:
    """Attack every model with an adversary suite; score the four pillars; write results + report."""
    cfg = resolve_config(EvaluateConfig, config, overrides)
    if model:
        cfg.models = parse_model_flags(model)
    validate(cfg.evaluation)
    path = start_run("evaluate", run_dir, cfg, None)
    run_evaluation(cfg, path)
