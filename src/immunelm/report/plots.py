"""The report's figures: one pillar per axis, never a folded score.

Figures are built with the object-oriented API on an explicit Agg canvas (no pyplot): reports
are rendered on headless machines, and this neither needs a display nor switches the backend
of a user who already has pyplot open in a notebook. Which number each figure reads comes from
:mod:`immunelm.report.metrics`, as the tables' numbers do.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: headless by default

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from immunelm.eval.schema import EvaluationReport, ModelReport, Outcomes  # noqa: E402
from immunelm.io import atomic_path  # noqa: E402
from immunelm.report.metrics import (  # noqa: E402
    adversary_names, cross_domain, final_point, no_attack_within_bound, reference_model, threshold, worst_final,
    worst_result,
)

OUTCOME_COLOURS = {"refused": "#4c9a6a", "collapsed": "#e0a33a", "complied": "#c8453b"}
REFERENCE_COLOUR = "#555555"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")


# ---- drawing helpers ------------------------------------------------------------------------
def label(text: str) -> str:
    """Escape '$' so user-chosen names are drawn verbatim, never parsed as mathtext."""
    return text.replace("$", r"\$")


def colours(report: EvaluationReport) -> dict[str, str]:
    defended = iter(PALETTE * (1 + len(report.models) // len(PALETTE)))
    return {m.name: REFERENCE_COLOUR if m.role == "reference" else next(defended) for m in report.models}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _empty(message: str) -> Figure:
    fig = _figure(6, 1.6)
    fig.text(0.5, 0.5, message, ha="center", va="center", color="#666666")
    return fig


# ---- figures --------------------------------------------------------------------------------
def _budget_label(report: EvaluationReport, name: str) -> tuple[str, str]:
    """(panel title, x-axis label): optimiser steps, or the point of an attack's own grid."""
    adv = next(a for m in report.models for a in m.resistance if a.name == name)
    if adv.budget_unit == "steps":
        return f"{label(name)} ({adv.family})", "attack step"
    grid = _grid_axis(adv)
    return f"{label(name)} ({adv.family})", grid[1] if grid else f"{adv.budget_unit} point (0 = no attack)"


#: Where grid attacks record the value behind each point (the fraction removed, the strength).
_GRID_VALUES = (("removed_fraction", "fraction of weights removed"), ("removed_rank_fraction", "fraction of rank removed"))


def _grid_axis(adv) -> tuple[list[float], str] | None:
    """The real budget values of a grid attack's points (from its info), when it recorded them."""
    points = adv.info.get("points")
    for key, name in _GRID_VALUES:
        if isinstance(points, list) and points and all(isinstance(p, dict) and key in p for p in points):
            return [float(p[key]) for p in points], name
    strengths = adv.info.get("strengths")
    if isinstance(strengths, list) and strengths:
        return [float(v) for v in strengths], "steering strength"
    return None


def _xs(adv, pts) -> list[float]:
    grid = _grid_axis(adv) if adv.budget_unit != "steps" else None
    if grid and all(p.step < len(grid[0]) for p in pts):
        return [grid[0][p.step] for p in pts]
    return [p.step for p in pts]


def resistance_curves(report: EvaluationReport) -> Figure:
    """(a) Harmful score vs attack budget, one panel per adversary, one line per model; the
    attacked model's utility (benign accuracy) dotted beside it, so a curve that stays low
    because the model broke never reads as resistance."""
    names = adversary_names(report)
    if not names:
        return _empty("no resistance results in this report")
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = _figure(4.3 * ncols, 2.9 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    colour, phi = colours(report), threshold(report)
    for ax, name in zip(axes.flat, names):
        for model in report.models:
            adv = next((a for a in model.resistance if a.name == name), None)
            if adv and adv.curve:
                pts = sorted(adv.curve, key=lambda p: p.step)
                xs = _xs(adv, pts)
                ax.plot(xs, [p.harmful_score for p in pts], marker="o", ms=3,
                        color=colour[model.name], ls="--" if model.role == "reference" else "-",
                        label=label(model.name))
                utility = [(x, p.benign_accuracy) for x, p in zip(xs, pts) if p.benign_accuracy is not None]
                if utility:
                    ax.plot(*zip(*utility), color=colour[model.name], lw=0.9, ls=":", alpha=0.7)
        if phi is not None:
            ax.axhline(phi, color="#999999", lw=0.8, ls=":")
        title, xlabel = _budget_label(report, name)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("harmful score (lower is better)\ndotted: benign accuracy", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if phi is not None:
        handles.append(Line2D([], [], color="#999999", lw=0.8, ls=":"))
        labels.append(f"threshold φ = {phi:g}")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize=8)
    return fig


PILLARS: tuple[tuple[str, Callable[[ModelReport], Optional[float]]], ...] = (
    ("worst-case harmful ↓\n(resistance)", worst_final),
    ("benign accuracy ↑\n(stability)", lambda m: m.stability.benign_accuracy if m.stability else None),
    ("cross-domain harmful ↓\n(generalisation)", cross_domain),
    ("fine-tune accuracy ↑\n(trainability)", lambda m: m.trainability.final_accuracy if m.trainability else None),
)


def pillar_comparison(report: EvaluationReport) -> Figure:
    """(b) Each pillar side by side against the reference model (dashed tick), never summed."""
    if not report.models:
        return _empty("no models in this report")
    fig = _figure(max(7.0, 1.2 + 0.55 * len(report.models) * len(PILLARS)), 3.6)
    ax = fig.add_subplot()
    colour, n = colours(report), len(report.models)
    width = 0.8 / n
    ref = reference_model(report)
    for j, model in enumerate(report.models):
        for i, (_, value_of) in enumerate(PILLARS):
            x, value = i - 0.4 + width * (j + 0.5), value_of(model)
            if value is None:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#666666")
                continue
            ax.bar(x, value, width * 0.92, color=colour[model.name], label=label(model.name) if i == 0 else None,
                   hatch="//" if model.role == "reference" else None, edgecolor="white", linewidth=0.5)
            if n <= 6:
                ax.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
            if i == 0 and no_attack_within_bound(model):  # a low bar here is a broken model, not resistance
                ax.text(x, value + 0.08, "utility broken", ha="center", va="bottom", fontsize=6, rotation=90,
                        color="#b3261e")
    for i, (_, value_of) in enumerate(PILLARS):
        ref_value = value_of(ref) if ref else None
        if ref_value is not None:
            ax.hlines(ref_value, i - 0.45, i + 0.45, colors=REFERENCE_COLOUR, linestyles="--", lw=1)
    ax.set_xticks(range(len(PILLARS)), [name for name, _ in PILLARS], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="dashed: reference" if ref else None, title_fontsize=7)
    return fig


def _outcome_bars(model: ModelReport) -> tuple[str, list[tuple[str, Optional[Outcomes]]]]:
    """Group label and two bars: before any attack, and at the end of the model's worst adversary."""
    adv = worst_result(model)
    start = model.stability.harmful_outcomes if model.stability and model.stability.harmful_outcomes else None
    if start is None and adv:
        start = min(adv.curve, key=lambda p: p.step).outcomes
    end = final_point(adv) if adv else None
    group = textwrap.fill(model.name, 24) + (f"\nworst: {textwrap.fill(adv.name, 24)}" if adv else "")
    return group, [("step 0", start), (f"step {end.step}" if end else "attacked", end.outcomes if end else None)]


def outcome_bars(report: EvaluationReport) -> Figure:
    """(c) Refused / collapsed / complied stacked: a collapsed model must not pass as safe."""
    if not report.models:
        return _empty("no models in this report")
    fig = _figure(max(6.0, 1.5 + 2.1 * len(report.models)), 4.0)
    ax = fig.add_subplot()
    ticks, tick_labels, centres, groups, labelled = [], [], [], [], set()
    for j, model in enumerate(report.models):
        group, bars = _outcome_bars(model)
        centres.append(2.6 * j + 0.5)
        groups.append(label(group))
        for k, (when, outcomes) in enumerate(bars):
            x = 2.6 * j + k
            ticks.append(x)
            tick_labels.append(when)
            if outcomes is None:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="#666666")
                continue
            bottom = 0.0
            for kind, col in OUTCOME_COLOURS.items():
                share = getattr(outcomes, kind)
                ax.bar(x, share, 0.8, bottom=bottom, color=col, label=None if kind in labelled else kind)
                labelled.add(kind)
                bottom += share
    ax.set_xticks(ticks, tick_labels, fontsize=7)
    names = ax.secondary_xaxis(-0.1)
    names.set_xticks(centres, groups, fontsize=8)
    names.tick_params(length=0)
    names.spines["bottom"].set_visible(False)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of harmful prompts", fontsize=8)
    if labelled:
        fig.legend(loc="outside right upper", fontsize=8)
    return fig


def resistance_vs_trainability(report: EvaluationReport) -> Figure:
    """(d) The trade-off: a defence that also blocks benign fine-tuning is not a free win."""
    points = [(m, m.trainability.final_accuracy, worst_final(m)) for m in report.models if m.trainability]
    points = [(m, x, y) for m, x, y in points if y is not None]
    if not points:
        return _empty("no model has both trainability and resistance results")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    colour, phi = colours(report), threshold(report)
    for model, x, y in points:
        ax.scatter([x], [y], s=45, color=colour[model.name], marker="s" if model.role == "reference" else "o",
                   zorder=3)
        broken = "\n(utility broken by every attack)" if no_attack_within_bound(model) else ""
        ax.annotate(label(model.name) + broken, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    if phi is not None:
        ax.axhline(phi, color="#999999", lw=0.8, ls=":", label=f"threshold φ = {phi:g}")
        ax.legend(loc="upper left", fontsize=8)
    ax.text(0.98, 0.03, "better ↘", transform=ax.transAxes, ha="right", fontsize=8, color="#666666")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("trainability: final benign fine-tune accuracy (higher is better)", fontsize=8)
    ax.set_ylabel("worst-case final harmful score (lower is better)", fontsize=8)
    ax.grid(alpha=0.3)
    missing = [m.name for m in report.models if m not in [p[0] for p in points]]
    if missing:
        ax.set_title(label("not shown (n/a): " + ", ".join(missing)), loc="left", fontsize=7, color="#666666")
    return fig


FIGURES: dict[str, Callable[[EvaluationReport], Figure]] = {
    "resistance_curves": resistance_curves,
    "pillars": pillar_comparison,
    "outcomes": outcome_bars,
    "resistance_vs_trainability": resistance_vs_trainability,
}


def render_plots(report: EvaluationReport, plots_dir: Path) -> dict[str, bytes]:
    """Write every figure to ``plots_dir/<name>.png`` atomically and return the PNG bytes."""
    images: dict[str, bytes] = {}
    for name, build in FIGURES.items():
        buffer = io.BytesIO()
        build(report).savefig(buffer, format="png")
        images[name] = buffer.getvalue()
        with atomic_path(Path(plots_dir) / f"{name}.png") as tmp:
            tmp.write_bytes(images[name])
    return images
