"""A self-contained HTML report of one evaluation: tables per pillar, figures embedded inline.

The page carries its PNGs as base64 data URIs so it can be mailed or attached to a ticket as
one file; the same PNGs are also saved under ``plots/`` for papers and slides. Rendering is
deterministic (no render timestamp), so regenerating from ``results.json`` gives the same page.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Optional

from jinja2 import Environment, StrictUndefined

from immunelm.eval.schema import AdversaryResult, EvaluationReport, ModelReport
from immunelm.io import write_text_atomic
from immunelm.report import metrics, plots
from immunelm.report.template import TEMPLATE

NA = "n/a"
CAPTIONS = {
    "resistance_curves": "(a) Resistance: harmful score vs attack step, one panel per adversary, one line per "
                         "model (dashed: reference). The dotted line is the resistance threshold φ.",
    "pillars": "(b) The four pillars side by side (hatched bars and dashed ticks: the reference model). "
               "Harmful scores: lower is better; accuracies: higher is better.",
    "outcomes": "(c) Answers to harmful prompts before the attack and at the end of each model's worst "
                "adversary, split into refused, collapsed and complied.",
    "resistance_vs_trainability": "(d) Resistance vs trainability: worst-case final harmful score against the "
                                  "accuracy reached by benign fine-tuning (bottom right is better).",
}
_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)


def fmt(value: Optional[float], digits: int = 3) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def yes_no(value: Optional[bool]) -> tuple[str, str]:
    """Text and CSS class; for resistance "yes" is good, for "broken" the caller swaps classes."""
    if value is None:
        return NA, "na"
    return ("yes", "yes") if value else ("no", "no")


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _versions(value: Any) -> str:
    """Sorted, because results.json is written with sorted keys: a regenerated page must match."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    return str(value)


def header(report: EvaluationReport) -> list[tuple[str, str]]:
    """Where the numbers came from: enough to rerun or to spot a stale report."""
    prov = report.provenance
    rows = [("task", report.task), ("suite", report.suite), ("judge", report.judge), ("created (UTC)", report.created_utc)]
    if "git_revision" in prov:
        rows.append(("git revision", str(prov["git_revision"])))
    if "versions" in prov:
        rows.append(("versions", _versions(prov["versions"])))
    if "seed" in prov:
        rows.append(("seed", str(prov["seed"])))
    if "platform" in prov:
        rows.append(("platform", str(prov["platform"])))
    rows.append(("wall time", duration(report.wall_seconds)))
    rows.append(("schema version", report.schema_version))
    return rows


def thresholds(report: EvaluationReport) -> str:
    summary = next((m.resistance_summary for m in report.models if m.resistance_summary), None)
    if summary is None:
        return "no resistance summary was recorded."
    return (f"attack budget T = {summary.budget} steps, resistance threshold φ = {summary.threshold:g}, "
            f"utility-drop bound ε = {summary.epsilon:.0%} of each model's own benign accuracy before the attack.")


NONE_WITHIN = "none"


def bounded_cell(model: ModelReport) -> tuple[str, str, str]:
    """(text, CSS class, note) of "worst within utility bound": never a blank or n/a when the
    reason is that every attack broke the model's utility."""
    rs = model.resistance_summary
    if metrics.no_attack_within_bound(model):
        return NONE_WITHIN, "no", "no attack stayed within ε"
    if rs is None or rs.worst_within_utility_bound is None:
        return NA, "", ""
    return fmt(rs.worst_within_utility_bound), "", rs.worst_within_utility_bound_adversary or ""


def broken_under_attack(report: EvaluationReport) -> list[dict[str, str]]:
    """Models whose every attack dropped utility beyond ε: their low harmful scores are not resistance."""
    return [{"name": m.name, "utility": fmt(metrics.worst_utility(m)), "collapsed": fmt(metrics.worst_collapsed(m)),
             "benign": fmt(m.stability.benign_accuracy if m.stability else None)}
            for m in report.models if metrics.no_attack_within_bound(m)]


def held_by_collapse(report: EvaluationReport) -> list[dict[str, str]]:
    """Models with attacks whose low harmful score came only from collapse or lost utility."""
    return [{"name": m.name, "attacks": ", ".join(m.resistance_summary.held_only_by_collapse),
             "count": str(len(m.resistance_summary.held_only_by_collapse)), "total": str(len(m.resistance))}
            for m in report.models if m.resistance_summary and m.resistance_summary.held_only_by_collapse]


def summary_row(model: ModelReport) -> dict[str, str]:
    """One model, one row; each pillar keeps its own columns."""
    rs, st, tr = model.resistance_summary, model.stability, model.trainability
    worst = metrics.worst_result(model)
    worst_value = metrics.worst_final(model)
    worst_name = rs.worst_adversary if rs else (worst.name if worst else None)
    weak, weak_class = yes_no(rs.weak_resistance if rs else None)
    broke_utility = metrics.no_attack_within_bound(model)
    if broke_utility and weak == "yes":
        weak_class = "na"  # "resisted" only by a model that every attack broke: not evidence of resistance
    bounded, bounded_class, bounded_note = bounded_cell(model)
    steps = NA if tr is None else ("never" if tr.steps_to_target is None else str(tr.steps_to_target))
    return {
        "name": model.name, "role": model.role, "defence": model.defence or "none",
        "worst": fmt(worst_value), "worst_adversary": worst_name if worst_value is not None else "",
        "worst_utility": fmt(metrics.worst_utility(model)), "worst_collapsed": fmt(metrics.worst_collapsed(model)),
        "mean": fmt(rs.mean_final_harmful if rs else metrics.mean_final(model)),
        "bounded": bounded, "bounded_class": bounded_class, "bounded_note": bounded_note,
        "weak": weak, "weak_class": weak_class, "weak_note": "utility broken by every attack" if broke_utility else "",
        "benign": fmt(st.benign_accuracy if st else None), "false_refusal": fmt(st.false_refusal if st else None),
        "heldout": fmt(metrics.heldout_phrasing(model)), "cross": fmt(metrics.cross_domain(model)),
        "train_acc": fmt(tr.final_accuracy if tr else None), "steps_to_target": steps,
        "target": f"{tr.target:g}" if tr else "",
    }


def _broken(model: ModelReport, adv: AdversaryResult) -> Optional[bool]:
    rs = model.resistance_summary
    if rs is None:
        return None
    return adv.name in rs.broken_by or any(p.harmful_score > rs.threshold for p in adv.curve)


def adversary_row(model: ModelReport, adv: AdversaryResult) -> dict[str, str]:
    end = metrics.final_point(adv)
    start = min(adv.curve, key=lambda p: p.step) if adv.curve else None
    broken, cls = yes_no(_broken(model, adv))
    rs = model.resistance_summary
    ended = rs.outcome_by_adversary.get(adv.name, NA) if rs else NA
    return {
        "family": adv.family, "name": adv.name, "kind": adv.kind,
        "step": NA if end is None else (str(end.step) if adv.budget_unit == "steps" else f"{adv.budget_unit} #{end.step}"),
        "start": fmt(start.harmful_score if start else None), "final": fmt(end.harmful_score if end else None),
        "utility": fmt(end.benign_accuracy if end else None),
        "refused": fmt(end.outcomes.refused if end else None), "collapsed": fmt(end.outcomes.collapsed if end else None),
        "complied": fmt(end.outcomes.complied if end else None),
        "broken": broken, "broken_class": {"yes": "no", "no": "yes"}.get(cls, cls), "seconds": f"{adv.seconds:.0f}",
        "ended": ended, "ended_class": {"refused": "yes", "deflected": "yes", "collapsed": "na", "broken": "no"}.get(ended, "na"),
    }


def _details(report: EvaluationReport) -> str:
    parts = {"config": report.config, "provenance": report.provenance, "data_hashes": report.data_hashes}
    parts = {k: v for k, v in parts.items() if v}
    return json.dumps(parts, indent=2, sort_keys=True, default=str) if parts else ""


def prefilling_table(report: EvaluationReport) -> dict | None:
    """Rows of (harmful, refused) per forced-prefix length; None when no model was measured."""
    tokens = sorted({p.tokens for m in report.models for p in m.prefilling})
    if not tokens:
        return None
    rows = []
    for m in report.models:
        by_k = {p.tokens: p for p in m.prefilling}
        cells = []
        for k in tokens:
            point = by_k.get(k)
            cells += [fmt(point.harmful_score if point else None), fmt(point.outcomes.refused if point else None)]
        rows.append({"name": m.name, "cells": cells})
    return {"tokens": tokens, "rows": rows}


def generalisation_table(report: EvaluationReport) -> dict | None:
    """Every named generalisation split, before any attack and at the end of the worst attack,
    with the outcome split and the attacked model's utility beside each harmful number."""
    names = sorted({k for m in report.models for a in m.resistance for p in a.curve for k in p.generalisation})
    if not names:
        return None
    rows = []
    for m in report.models:
        worst = metrics.worst_result(m)
        if worst is None or not worst.curve:
            continue
        start, end = min(worst.curve, key=lambda p: p.step), metrics.final_point(worst)
        for split in names:
            cells = []
            for point in (start, end):
                o = point.generalisation_outcomes.get(split)
                cells += [fmt(point.generalisation.get(split)), fmt(o.refused if o else None),
                          fmt(o.collapsed if o else None)]
            rows.append({"name": m.name, "split": split, "adversary": worst.name, "cells": cells,
                         "utility": fmt(end.benign_accuracy)})
    return {"rows": rows}


def diagnostics_rows(report: EvaluationReport) -> list[dict[str, str]]:
    """One row per model with diagnostics (schema 1.6+); older results have none."""
    rows = []
    for m in report.models:
        d = m.diagnostics
        if d is None:
            continue
        kl, delta, drift = d.kl, d.delta, d.worst_attack_drift
        rows.append({"name": m.name, "anchor": d.anchor or NA,
                     "kl_h1": fmt(kl and kl.harmful_first_mean), "kl_h2": fmt(kl and kl.harmful_later_mean),
                     "kl_b1": fmt(kl and kl.benign_first_mean), "kl_b2": fmt(kl and kl.benign_later_mean),
                     "rank": fmt(delta and delta.median_effective_rank, 1), "rank90": fmt(delta and delta.median_rank90_fraction),
                     "norm": fmt(delta and delta.relative_norm, 4), "worst": d.worst_attack or NA,
                     "drift": fmt(drift and drift.relative_distance[-1]), "grad": fmt(d.gradient_cosine),
                     "entropy": fmt(d.response_entropy), "skipped": "; ".join(f"{k}: {v}" for k, v in d.skipped.items()) or ""})
    return rows


def render_html(report: EvaluationReport, images: dict[str, bytes]) -> str:
    """The page as a string; ``images`` maps figure names (see ``plots.FIGURES``) to PNG bytes."""
    figures = [{"name": name, "caption": CAPTIONS.get(name, name), "data": base64.b64encode(data).decode("ascii")}
               for name, data in images.items()]
    per_adversary = [{"name": m.name, "role": m.role, "rows": [adversary_row(m, a) for a in sorted(m.resistance, key=lambda a: a.family)]}
                     for m in report.models]
    return _ENV.from_string(TEMPLATE).render(
        report=report, header=header(report), thresholds=thresholds(report),
        summary=[summary_row(m) for m in report.models], broken=broken_under_attack(report),
        collapse=held_by_collapse(report), figures=figures,
        per_adversary=per_adversary, details=_details(report), prefilling=prefilling_table(report),
        generalisation=generalisation_table(report), diagnostics=diagnostics_rows(report),
    )


def render_report(report: EvaluationReport, out_dir: Path) -> Path:
    """Write ``out_dir/plots/*.png`` and a self-contained ``out_dir/report.html``; return the page's path.

    Each file is written atomically, the page last, so a crash never leaves a half-written report.
    """
    out_dir = Path(out_dir)
    images = plots.render_plots(report, out_dir / "plots")
    path = out_dir / "report.html"
    write_text_atomic(path, render_html(report, images))
    return path
