"""Figures of a diagnostics report, one function per diagnostic (each returns a Figure, or None
when the report has nothing for it)."""

from __future__ import annotations

from typing import Optional

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from immunelm.diagnostics.schema import DiagnosticsReport  # noqa: E402


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def kl_profiles(report: DiagnosticsReport) -> Optional[Figure]:
    pairs = [p for p in report.pairs if p.kl]
    if not pairs:
        return None
    fig = _figure(9, 3.2)
    ax = fig.subplots()
    for i, p in enumerate(pairs):
        colour = f"C{i}"
        ax.plot(p.kl.harmful.per_position, color=colour, marker=".", label=f"{p.child} || {p.parent}: harmful")
        if p.kl.benign:
            ax.plot(p.kl.benign.per_position, color=colour, ls="--", label=f"{p.child} || {p.parent}: benign")
    ax.axvline(pairs[0].kl.first_k - 0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="response position t", ylabel="KL(child || parent)", yscale="symlog")
    ax.legend(fontsize=7, loc="upper right")
    return fig


def delta_spectra(report: DiagnosticsReport) -> Optional[Figure]:
    """Normalised top singular values of each delta (median over matrices), one line per pair."""
    pairs = [p for p in report.pairs if p.spectra]
    if not pairs:
        return None
    fig = _figure(9, 3.2)
    left, right = fig.subplots(1, 2)
    for i, p in enumerate(pairs):
        rows = [m.singular_values for m in p.spectra.matrices if m.singular_values and m.singular_values[0] > 0]
        if rows:
            width = min(len(r) for r in rows)
            median = [sorted(r[j] / r[0] for r in rows)[len(rows) // 2] for j in range(width)]
            left.plot(range(1, width + 1), median, marker=".", color=f"C{i}", label=f"{p.child} - {p.parent}")
        right.hist([m.effective_rank for m in p.spectra.matrices if m.rank90 > 0], bins=20, alpha=0.5, color=f"C{i}")
    left.set(xlabel="singular value index", ylabel="s_i / s_1 (median over matrices)", yscale="log")
    right.set(xlabel="effective rank of each matrix's delta", ylabel="matrices")
    left.legend(fontsize=7)
    return fig


def alignment_geometry(report: DiagnosticsReport) -> Optional[Figure]:
    """Subspace overlap (vs chance) and task-vector cosine of each delta with the alignment delta."""
    pairs = [p for p in report.pairs if p.alignment_overlap or p.alignment_angle]
    if not pairs:
        return None
    fig = _figure(9, 3.0)
    left, right = fig.subplots(1, 2)
    labels = [f"{p.child} - {p.parent}" for p in pairs]
    left.bar(labels, [p.alignment_overlap.mean_overlap if p.alignment_overlap else 0 for p in pairs], color="C0", label="overlap")
    left.bar(labels, [p.alignment_overlap.mean_chance if p.alignment_overlap else 0 for p in pairs], color="none",
             edgecolor="black", ls="--", label="chance (k/m)")
    left.set(ylabel="overlap with alignment subspace")
    left.legend(fontsize=7)
    right.bar(labels, [p.alignment_angle.cosine if p.alignment_angle else 0 for p in pairs], color="C1")
    right.axhline(0, color="black", lw=0.8)
    right.set(ylabel="cos(delta, aligned - base)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    return fig


def drift_by_layer(report: DiagnosticsReport) -> Optional[Figure]:
    pairs = [p for p in report.pairs if p.drift]
    if not pairs:
        return None
    fig = _figure(9, 3.0)
    left, right = fig.subplots(1, 2)
    for i, p in enumerate(pairs):
        left.plot(p.drift.embedding.relative_distance, marker=".", color=f"C{i}", label=f"{p.parent} -> {p.child}")
        right.plot([c if c is not None else float("nan") for c in p.drift.harmful_direction.cosine], marker=".", color=f"C{i}")
    left.set(xlabel="layer (0 = embeddings)", ylabel="harmful-prompt drift / ||h||")
    right.set(xlabel="layer", ylabel="cos of the harmful-benign direction", ylim=(-1.05, 1.05))
    left.legend(fontsize=7)
    return fig


def model_bars(report: DiagnosticsReport) -> Optional[Figure]:
    rows = [m for m in report.models if m.gradients or m.entropy]
    if not rows:
        return None
    fig = _figure(9, 3.0)
    left, right = fig.subplots(1, 2)
    names = [m.name for m in rows]
    left.bar(names, [m.gradients.cosine if m.gradients else 0 for m in rows], color="C2")
    left.axhline(0, color="black", lw=0.8)
    left.set(ylabel="cos(g_harmful, g_benign)")
    right.bar(names, [m.entropy.mean if m.entropy else 0 for m in rows], color="C3")
    right.set(ylabel="response entropy on harmful prompts (nats)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    return fig


def _safety_key(land) -> str:
    return "harmful_rate" if "harmful_rate" in land.values else "harmful_loss"


def landscapes(report: DiagnosticsReport) -> Optional[Figure]:
    """Left: around each model along a random direction; right: along each pair's path parent -> child."""
    around = [(m.name, m.landscape) for m in report.models if m.landscape]
    paths = [(f"{p.parent} -> {p.child}", p.landscape) for p in report.pairs if p.landscape]
    if not around and not paths:
        return None
    fig = _figure(10, 3.4)
    left, right = fig.subplots(1, 2)
    for ax, rows, xlabel in ((left, around, "alpha (random direction, tensor-normalised)"),
                             (right, paths, "a (0 = parent, 1 = child)")):
        for i, (name, land) in enumerate(rows):
            key = _safety_key(land)
            ax.plot(land.alphas, land.values[key], marker=".", color=f"C{i}", label=name)
        ax.set(xlabel=xlabel, ylabel=_safety_key(rows[0][1]) if rows else "")
        if rows:
            ax.legend(fontsize=7)
    return fig


def landscapes_2d(report: DiagnosticsReport) -> Optional[Figure]:
    rows = [(m.name, m.landscape_2d) for m in report.models if m.landscape_2d]
    if not rows:
        return None
    fig = _figure(3.2 * len(rows), 3.0)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, (name, land) in zip(axes, rows):
        key = _safety_key(land)
        contour = ax.contourf(land.betas, land.alphas, land.values[key], levels=12, cmap="viridis")
        ax.plot([0], [0], "r+")
        ax.set(title=f"{name}: {key}", xlabel="beta", ylabel="alpha")
        fig.colorbar(contour, ax=ax)
    return fig


def representation_map(report: DiagnosticsReport) -> Optional[Figure]:
    rmap = report.representation_map
    if not rmap:
        return None
    fig = _figure(6, 4.5)
    ax = fig.subplots()
    models = list(dict.fromkeys(p.model for p in rmap.points))
    for i, model in enumerate(models):
        for mark, subset in (("o", "harmful"), ("x", "benign")):
            pts = [p for p in rmap.points if p.model == model and p.set == subset]
            ax.scatter([p.x for p in pts], [p.y for p in pts], s=12, marker=mark, color=f"C{i}", label=f"{model} {subset}")
    ax.set(title=f"{rmap.method.upper()} of last-prompt-token states, hidden state {rmap.layer}")
    ax.legend(fontsize=6, ncols=2)
    return fig


FIGURES = {
    "kl_profiles": kl_profiles, "delta_spectra": delta_spectra, "alignment_geometry": alignment_geometry,
    "drift_by_layer": drift_by_layer, "gradient_geometry": model_bars, "landscapes": landscapes, "landscapes_2d": landscapes_2d,
    "representation_map": representation_map,
}
