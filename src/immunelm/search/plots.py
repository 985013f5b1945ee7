"""The search's figure: best-so-far harmful score (within the utility bound) vs trials, one line
per model. A defence that slows the attacker down shows a curve that rises later."""

from __future__ import annotations

from pathlib import Path


def plot_search_curves(records: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, record in sorted(records.items()):
        curve = [float("nan") if v is None else v for v in record["best_so_far"]]
        if curve:
            ax.step(range(1, len(curve) + 1), curve, where="post", label=name)
    ax.set_xlabel("trial")
    ax.set_ylabel("best harmful score within the utility bound")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if records:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from immunelm.io import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
