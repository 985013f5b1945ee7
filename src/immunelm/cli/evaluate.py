"""``immunelm evaluate``: argument parsing and the summary table; the work is :mod:`immunelm.api`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from immunelm.api import EvaluateConfig, parse_model_flags, run_evaluation, validate_evaluation
from immunelm.cli.common import (
    CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, check_run_dir, console, evaluation_seed, out,
    resolve_config, start_run,
)
from immunelm.eval.schema import EvaluationReport


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or value is False else f"{value:.{digits}f}"


def _bounded(m) -> str:
    """worst<=eps: "none" (never blank) when every attack broke the model's utility."""
    from immunelm.report import metrics  # lazy: keeps matplotlib out of the command's start-up

    if metrics.no_attack_within_bound(m):
        return "none"
    return _fmt(m.resistance_summary and m.resistance_summary.worst_within_utility_bound)


def print_summary(report: EvaluationReport) -> None:
    """One row per model, one column group per pillar (never a folded score)."""
    from immunelm.report import metrics

    table = Table(title=f"task {report.task}, suite {report.suite}, judge {report.judge}: harmful (lower better) / accuracy (higher better)")
    for col in ("model", "worst", "util@worst", "collapse@worst", "mean", "worst<=eps", "broken", "prefill", "benign",
                "false-ref", "heldout", "cross", "train-acc", "steps"):
        table.add_column(col, no_wrap=True)
    for m in report.models:
        r, s, g, t = m.resistance_summary, m.stability, m.generalisation, m.trainability
        table.add_row(
            m.name + ("*" if m.role == "reference" else ""),
            _fmt(r and r.worst_final_harmful), _fmt(metrics.worst_utility(m)), _fmt(metrics.worst_collapsed(m)),
            _fmt(r and r.mean_final_harmful), _bounded(m),
            f"{len(r.broken_by)}/{len(m.resistance)}" if r else "n/a",
            " ".join(f"{p.tokens}:{p.harmful_score:.2f}" for p in m.prefilling) or "n/a",
            _fmt(s and s.benign_accuracy), _fmt(s and s.false_refusal),
            _fmt(g and g.in_domain_heldout_phrasings), _fmt(g and g.cross_domain),
            _fmt(t and t.final_accuracy), ("never" if t.steps_to_target is None else str(t.steps_to_target)) if t else "n/a",
        )
    out.print(table)
    for m in report.models:
        for a in sorted(m.resistance, key=lambda a: a.family):  # grouped by attack family
            curve = "  ".join(f"{p.step}:{p.harmful_score:.2f}" for p in a.curve)
            unit = "step" if a.budget_unit == "steps" else f"{a.budget_unit} point"
            out.print(f"  {m.name:<16} {a.family:<14} {a.name:<28} harmful by {unit}  {curve}")
        families = m.resistance_summary.worst_by_family if m.resistance_summary else {}
        if len(families) > 1:
            out.print(f"  {m.name:<16} worst by family: " + ", ".join(f"{f} {v:.2f}" for f, v in sorted(families.items())))
    out.print("  * reference model. util@worst / collapse@worst: benign accuracy and collapsed share at the end of the "
              "worst attack. worst<=eps: worst case among attacks keeping utility within epsilon of the model's own "
              "pre-attack accuracy. prefill k:h = harmful score when the first k answer tokens are forced (no training).")
    for line in broken_lines(report):
        out.print(line, highlight=False)


def broken_lines(report: EvaluationReport) -> list[str]:
    """One warning per model that no attack left within the utility bound (its harmful scores come
    from a broken model), and one per model with attacks "held" only by collapse: neither may read
    as resistance."""
    from immunelm.report import metrics

    lines = []
    for m in report.models:
        if metrics.no_attack_within_bound(m):
            eps = m.resistance_summary.epsilon
            lines.append(f"  ! {m.name}: no attack stayed within the utility bound (eps {eps:.0%}); at the end of its "
                         f"worst attack utility was {_fmt(metrics.worst_utility(m))} and "
                         f"{_fmt(metrics.worst_collapsed(m))} of harmful answers collapsed"
                         + (": a low harmful score here is a broken model, not resistance"
                            if m.resistance_summary.worst_final_harmful <= m.resistance_summary.threshold else ""))
    for m in report.models:
        held = m.resistance_summary.held_only_by_collapse if m.resistance_summary else []
        if held:
            lines.append(f"  ! {m.name}: {len(held)}/{len(m.resistance)} attacks ended with low harm only because the model "
                         f"collapsed or lost utility ({', '.join(held)}): a collapse trap, not refusal")
    return lines


def evaluate(
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="NAME=SOURCE (repeatable; first = reference)."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Attack every model with an adversary suite; score the four pillars; write results + report."""
    check_run_dir(run_dir, overwrite=overwrite)
    cfg = resolve_config(EvaluateConfig, config, overrides)
    if model:
        cfg.models = parse_model_flags(model)
    task = validate_evaluation(cfg)  # every input, before the run directory exists
    path = start_run("evaluate", run_dir, cfg, evaluation_seed(cfg, task), overwrite=overwrite)
    report = run_evaluation(cfg, path, task)
    print_summary(report)
    console.print(f"report: {path / 'report.html'}")
