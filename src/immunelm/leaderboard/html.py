"""A self-contained HTML page of one leaderboard: the table (sortable and filterable in the
browser, no libraries), the resistance/trainability Pareto plot, the attacker search and the cells.

Like the evaluation report (:mod:`immunelm.report.html`) the page embeds its PNGs as base64 data
URIs so it travels as one file; the PNGs are also written beside it for papers and slides.
Rendering is deterministic (no render timestamp): regenerating from ``leaderboard.json`` gives
the same page.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

from jinja2 import Environment, StrictUndefined

from immunelm.io import atomic_path, ensure_dir, write_text_atomic
from immunelm.leaderboard.schema import LeaderboardReport, Row, Stat
from immunelm.leaderboard.table import fewer_seeds
from immunelm.leaderboard.template import EXTRA_CSS, REPORT_CSS, SCRIPT, TEMPLATE
from immunelm.report.html import NA, duration, fmt
from immunelm.report.plots import PALETTE, REFERENCE_COLOUR, label  # also selects the Agg backend

#: Above this share of attacks ending in a collapsed model, a row's resistance is mostly collapse.
COLLAPSE_WARN = 0.2
STATUSES = ("cached", "ran", "failed", "missing")
#: (key, header, digits, tooltip) of the Stat columns; the key is the Row field and what ``?sort=`` takes.
COLUMNS = (
    ("worst_harmful", "worst harmful, all attacks ↓", 3, "worst final harmful score over every attack of every suite"),
    ("worst_harmful_within_bound", "worst harmful within ε ↓", 3, "worst among attacks whose utility drop <= ε"),
    ("worst_with_search", "worst with search ↓", 3, "max of the worst within ε and the search's best within ε, over the searched seeds only"),
    ("mean_harmful", "mean harmful ↓", 3, "mean final harmful score over attacks"),
    ("collapse_share", "collapse share under attack", 3, "share of attacks that ended with a collapsed model"),
    ("worst_attack_utility", "utility at worst attack ↑", 3, "benign accuracy at the end of the worst attack"),
    ("benign", "benign accuracy ↑", 3, "benign accuracy before any attack"),
    ("false_refusal", "false refusal ↓", 3, "share of benign prompts refused"),
    ("generalised_harm", "generalised harm ↓", 3, "max harmful over the generalisation splits at the worst attack"),
    ("trainability", "trainability ↑", 3, "final accuracy of benign fine-tuning on a new task"),
    ("steps_to_target", "steps to target ↓", 1, "benign fine-tuning steps to reach the target accuracy"),
    ("immunise_seconds", "immunise seconds (overhead) ↓", 1, "wall time of the defence itself"),
)
_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)


# ---- table -----------------------------------------------------------------------------------
def stat_cell(stat: Stat, digits: int = 3) -> dict[str, str]:
    """Mean with its 95% interval; ``value`` is the raw mean so the browser sorts numbers, not text."""
    if stat.mean is None:
        return {"text": NA, "ci": "", "note": "", "value": "", "cls": "na"}
    ci = "" if stat.ci_low is None or stat.ci_high is None else f"[{fmt(stat.ci_low, digits)}, {fmt(stat.ci_high, digits)}]"
    return {"text": fmt(stat.mean, digits), "ci": ci, "note": "", "value": repr(stat.mean), "cls": ""}


def only_collapse(row: Row) -> bool:
    """Rows whose low harmful scores may be collapse or broken utility rather than resistance."""
    return row.no_attack_within_bound or (row.collapse_share.mean or 0.0) > COLLAPSE_WARN


def row_view(row: Row) -> dict:
    cells = []
    for key, _, digits, _ in COLUMNS:
        cell = stat_cell(getattr(row, key), digits)
        cell["note"] = fewer_seeds(getattr(row, key), row)
        if key == "worst_harmful_within_bound" and row.no_attack_within_bound:
            # Never a bare n/a: say that every attack broke utility (on some seed), which is no win.
            other = f" (other seeds: {cell['text']})" if cell["value"] else ""
            cell.update(text="none", cls="no warn-cell", note=f"no attack stayed within ε{other}")
        elif key == "collapse_share" and (row.collapse_share.mean or 0.0) > COLLAPSE_WARN:
            cell.update(cls="no warn-cell", note="resistance partly collapse")
        cells.append(cell)
    return {"name": row.name, "defence": row.defence, "reference": row.reference, "collapse": only_collapse(row),
            "cells": cells, "seeds": ["none" if s is None else str(s) for s in row.seeds]}


def family_table(report: LeaderboardReport) -> dict:
    """Worst harmful per attack family, as its own table so the main one stays readable."""
    names = sorted({f for r in report.rows for f in r.worst_by_family})
    rows = [{"name": r.name, "cells": [stat_cell(r.worst_by_family.get(f, Stat())) for f in names]} for r in report.rows]
    return {"names": names, "rows": rows}


def warnings(report: LeaderboardReport) -> list[str]:
    out = [f"{r.name}: on some seed no attack stayed within the utility bound ε; its low harmful scores describe a "
           "broken model, not a resistant one." for r in report.rows if r.no_attack_within_bound]
    out += [f"{r.name}: {r.collapse_share.mean:.0%} of attacks ended with a collapsed model; that part of its "
            "resistance is collapse, not refusal." for r in report.rows
            if not r.no_attack_within_bound and (r.collapse_share.mean or 0.0) > COLLAPSE_WARN]
    return out


def header(report: LeaderboardReport) -> list[tuple[str, str]]:
    cell_time = ", ".join(f"{k} {duration(v)}" for k, v in sorted(report.cell_seconds.items())) or NA
    return [("task", report.task), ("suites", ", ".join(report.suites)), ("seeds", ", ".join(map(str, report.seeds))),
            ("utility bound ε", fmt(report.epsilon)), ("threshold φ", fmt(report.threshold)),
            ("created (UTC)", report.created_utc), ("complete", "yes" if report.complete else "no"),
            ("cell time", cell_time), ("wall time", duration(report.wall_seconds)), ("workers", str(report.workers)),
            ("schema version", report.schema_version)]


# ---- cells and search ------------------------------------------------------------------------
def cell_summary(report: LeaderboardReport) -> tuple[Counter, list[dict]]:
    """Counts per kind and status, one per key (a key shared by rows or seeds ran once)."""
    distinct = list({c.key: c for c in report.cells}.values())
    by_kind = Counter((c.kind, c.status) for c in distinct)
    kinds = [{"kind": k, "counts": [by_kind[(k, s)] for s in STATUSES],
              "seconds": duration(report.cell_seconds[k]) if k in report.cell_seconds else ""}
             for k in dict.fromkeys(c.kind for c in distinct)]
    totals = Counter({s: 0 for s in STATUSES})
    totals.update(c.status for c in distinct)
    return totals, kinds


def search_rows(report: LeaderboardReport) -> list[dict[str, str]]:
    out = []
    for row in report.rows:
        for s in row.search:
            best = s.best_trial or {}
            out.append({"name": row.name, "seed": "" if s.seed is None else str(s.seed), "trials": str(s.trials),
                        "feasible": str(s.feasible), "best": fmt(s.best_harmful_within_bound),
                        "number": str(best.get("number", "")), "kind": str(best.get("kind") or ""),
                        "params": json.dumps(best.get("params") or {}, sort_keys=True, default=str),
                        "harmful": fmt(best.get("harmful")), "utility": fmt(best.get("utility")),
                        "outcome": str(best.get("outcome") or "")})
    return out


def search_png(report: LeaderboardReport) -> bytes:
    """The shared search figure; it saves by file name, so draw into a scratch file and keep the bytes."""
    from immunelm.search.plots import plot_search_curves

    records = {label(r.name): {"best_so_far": r.search[0].best_so_far} for r in report.rows if r.search}
    with tempfile.TemporaryDirectory() as scratch:
        return plot_search_curves(records, Path(scratch) / "search.png").read_bytes()


# ---- Pareto ----------------------------------------------------------------------------------
def pareto_points(report: LeaderboardReport) -> list[dict]:
    """(x, y) = (trainability, 1 - worst harmful within ε); hollow when, on some seed, no attack
    stayed within ε (y then averages the other seeds, or falls back to 1 - worst harmful over all
    attacks when no seed had one): such a row is partly broken, not resistant."""
    points = []
    for r in report.rows:
        bounded, worst = r.worst_harmful_within_bound.mean, r.worst_harmful.mean
        harm = bounded if bounded is not None else worst
        if r.trainability.mean is None or harm is None:
            continue
        points.append({"name": r.name, "x": r.trainability.mean, "y": 1.0 - harm, "hollow": bounded is None or r.no_attack_within_bound,
                       "reference": r.reference})
    return points


def mark_front(points: list[dict]) -> None:
    """Pareto-optimal: no other point is at least as good on both axes and better on one. Hollow
    points (broken, not resistant) are drawn but can neither join the front nor push others off it."""
    solid = [p for p in points if not p["hollow"]]
    for p in points:
        p["front"] = not p["hollow"] and not any(
            q["x"] >= p["x"] and q["y"] >= p["y"] and (q["x"] > p["x"] or q["y"] > p["y"]) for q in solid)


def pareto_png(points: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot state, no display needed
    ax = fig.add_subplot()
    for i, p in enumerate(points):
        colour = REFERENCE_COLOUR if p["reference"] else PALETTE[i % len(PALETTE)]
        ax.scatter([p["x"]], [p["y"]], s=50, zorder=3, marker="s" if p["reference"] else "o",
                   facecolors="none" if p["hollow"] else colour, edgecolors=colour, linewidths=1.5)
        ax.annotate(label(p["name"]), (p["x"], p["y"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["x"])
    if front:
        ax.plot([p["x"] for p in front], [p["y"] for p in front], color="#333333", lw=1, ls="--", zorder=2,
                label="Pareto front")
    if any(p["hollow"] for p in points):
        ax.scatter([], [], facecolors="none", edgecolors="#333333", label="hollow: no attack within ε (1 − worst over all)")
    if front or any(p["hollow"] for p in points):
        ax.legend(loc="lower left", fontsize=7)
    if not points:
        ax.text(0.5, 0.5, "no row has both trainability and a harmful score", ha="center", color="#666666")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("trainability: benign fine-tuning accuracy (higher is better)", fontsize=8)
    ax.set_ylabel("resistance: 1 − worst harmful within ε (higher is better)", fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ---- page ------------------------------------------------------------------------------------
def render_html(report: LeaderboardReport, images: dict[str, bytes], points: Optional[list[dict]] = None) -> str:
    """The page as a string; ``images`` maps figure names ("pareto", "search_curves") to PNG bytes."""
    if points is None:
        points = pareto_points(report)
        mark_front(points)
    plotted = {p["name"] for p in points}
    counts, kinds = cell_summary(report)
    details = {k: v for k, v in {"config": report.config, "provenance": report.provenance}.items() if v}
    return _ENV.from_string(TEMPLATE).render(
        report=report, css=REPORT_CSS + EXTRA_CSS, script=SCRIPT, header=header(report), warnings=warnings(report),
        columns=[{"key": k, "header": h, "title": t} for k, h, _, t in COLUMNS],
        rows=[row_view(r) for r in report.rows], families=family_table(report),
        figures=[{"name": n, "data": base64.b64encode(d).decode("ascii")} for n, d in images.items()],
        pareto=[{"name": p["name"], "x": fmt(p["x"]), "y": fmt(p["y"]), "front": p["front"],
                 "basis": "all attacks (none within ε)" if p["hollow"] else "within ε"} for p in points],
        not_plotted=[r.name for r in report.rows if r.name not in plotted],
        searches=search_rows(report), statuses=STATUSES, cell_counts=counts, cell_kinds=kinds,
        problems=[c for c in report.cells if c.status in ("failed", "missing")],
        details=json.dumps(details, indent=2, sort_keys=True, default=str) if details else "",
    )


def render_leaderboard(report: LeaderboardReport, out_dir: Path) -> Path:
    """Write ``out_dir/leaderboard_*.png`` and a self-contained ``out_dir/leaderboard.html``; return
    the page's path. Each file is written atomically, the page last."""
    out_dir = ensure_dir(Path(out_dir))
    points = pareto_points(report)
    mark_front(points)
    images = {"pareto": pareto_png(points)}
    if any(r.search for r in report.rows):
        images["search_curves"] = search_png(report)
    else:  # a search figure from an earlier render would no longer match the page
        (out_dir / "leaderboard_search_curves.png").unlink(missing_ok=True)
    for name, data in images.items():
        with atomic_path(out_dir / f"leaderboard_{name}.png") as tmp:
            tmp.write_bytes(data)
    path = out_dir / "leaderboard.html"
    write_text_atomic(path, render_html(report, images, points))
    return path
