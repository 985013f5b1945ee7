"""A self-contained ``report.html`` for ``immunelm diagnose``: a table per kind of diagnostic and
the figures inline (PNGs also saved under ``plots/``), written atomically, page last."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Optional

from jinja2 import Environment, StrictUndefined

from immunelm.diagnostics import plots
from immunelm.diagnostics.schema import DiagnosticsReport
from immunelm.io import atomic_path, write_text_atomic

CAPTIONS = {
    "kl_profiles": "Per-token KL(child || parent) by response position (Qi et al. 2024): solid on (harmful prompt, harmful "
                   "answer) pairs, dashed on benign pairs (the control). The dotted line ends the first-k tokens.",
    "delta_spectra": "Weight-delta spectra: left, the top singular values of each pair's delta relative to the largest "
                     "(median over matrices); right, each matrix's effective rank.",
    "alignment_geometry": "Does a change write where alignment wrote? Left: overlap of each delta's top-k output subspace "
                          "with the alignment delta's (k = 2.5% of the rank; the box is the overlap of random subspaces). "
                          "Right: cosine of each delta with the alignment delta as task vectors.",
    "drift_by_layer": "Harmful embedding drift: distance between the parent's and the child's last-prompt-token states on "
                      "harmful prompts, relative to their norm (left); cosine of the two models' harmful-minus-benign "
                      "directions (right).",
    "gradient_geometry": "Gradient geometry per model: cosine between the harmful and the benign loss gradients (SEAM) and "
                         "the response entropy on harmful prompts (TokenBuncher).",
    "landscapes": "Safety landscape (Peng et al. 2024): the safety metric along a random tensor-normalised direction around "
                  "each model (left) and along each pair's path parent -> child, extended beyond both (right). The basin "
                  "width in the table is the span of alpha around the model whose metric stays within the tolerance of the centre's.",
    "landscapes_2d": "2-D safety landscape around each model: two random tensor-normalised directions (+ = the model).",
    "representation_map": "2-D map of harmful and benign prompt representations of every model (one projection for all).",
}
_ENV = Environment(autoescape=True, undefined=StrictUndefined)
TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ImmuneLM diagnostics: {{ report.task }}</title>
<style>
 body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; padding: 24px 32px; max-width: 1300px; }
 h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; } table { border-collapse: collapse; font-size: 13px; }
 th, td { border: 1px solid #d6d6d6; padding: 4px 8px; text-align: right; } th { background: #f3f3f3; }
 td.name { text-align: left; font-weight: 600; } .note { color: #555; font-size: 12.5px; max-width: 900px; }
 figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 12.5px; color: #555; max-width: 900px; }
 pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
</style></head><body>
<h1>ImmuneLM diagnostics</h1>
<p class="note">task {{ report.task }} · created {{ report.created_utc }} · schema {{ report.schema_version }} ·
 wall time {{ "%.1f"|format(report.wall_seconds) }} s · git {{ report.provenance.get("git_revision", "unknown") }}</p>
<h2>Models</h2>
<table><tr><th>name</th><th>role</th><th>source</th><th>cos(g_harm, g_benign)</th><th>harmful response entropy</th>
<th>RIR vs aligned</th><th>RIR vs identity</th><th>basin width</th><th>VISAGE</th></tr>
{% for m in models %}<tr><td class="name">{{ m.name }}</td><td>{{ m.role }}</td><td class="name">{{ m.source }}</td>
<td>{{ m.grad }}</td><td>{{ m.entropy }}</td><td>{{ m.rir }}</td><td>{{ m.rir_id }}</td><td>{{ m.basin }}</td><td>{{ m.visage }}</td></tr>{% endfor %}
</table>
<h2>Pairs (a model and the checkpoint it was made from)</h2>
<table><tr><th>child</th><th>parent</th><th>kind</th><th>KL harmful first-k</th><th>KL harmful later</th><th>KL benign first-k</th>
<th>KL benign later</th><th>delta eff. rank (median)</th><th>rank90 / full</th><th>|delta| / |W|</th>
<th>overlap with alignment (chance)</th><th>cos with alignment</th><th>cos with parent's change</th><th>drift at last layer</th></tr>
{% for p in pairs %}<tr><td class="name">{{ p.child }}</td><td class="name">{{ p.parent }}</td><td>{{ p.kind }}</td>
<td>{{ p.kl_h1 }}</td><td>{{ p.kl_h2 }}</td><td>{{ p.kl_b1 }}</td><td>{{ p.kl_b2 }}</td><td>{{ p.rank }}</td><td>{{ p.rank90 }}</td>
<td>{{ p.norm }}</td><td>{{ p.overlap }}</td><td>{{ p.cos }}</td><td>{{ p.cos_parent }}</td><td>{{ p.drift }}</td></tr>{% endfor %}
</table>
<p class="note">Seconds per diagnostic: {{ seconds }}</p>
{% for f in figures %}<figure><img alt="{{ f.name }}" src="data:image/png;base64,{{ f.data }}"><figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
<h2>Configuration</h2><pre>{{ config }}</pre>
</body></html>
"""


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def model_row(m) -> dict:
    return {"name": m.name, "role": m.role, "source": m.source,
            "grad": fmt(m.gradients and m.gradients.cosine), "entropy": fmt(m.entropy and m.entropy.mean),
            "rir": fmt(m.conditioning and m.conditioning.get("rir_theta0")),
            "rir_id": fmt(m.conditioning and m.conditioning.get("rir_identity")),
            "basin": fmt(m.landscape and m.landscape.basin and m.landscape.basin.width, 2),
            "visage": fmt(m.landscape and m.landscape.visage, 1)}


def pair_row(p) -> dict:
    kl, sp, ov = p.kl, p.spectra, p.alignment_overlap
    last_drift = p.drift.embedding.relative_distance[-1] if p.drift else None
    return {"child": p.child, "parent": p.parent, "kind": p.kind,
            "kl_h1": fmt(kl and kl.harmful.first_mean), "kl_h2": fmt(kl and kl.harmful.later_mean),
            "kl_b1": fmt(kl and kl.benign and kl.benign.first_mean), "kl_b2": fmt(kl and kl.benign and kl.benign.later_mean),
            "rank": fmt(sp and sp.median_effective_rank, 1), "rank90": fmt(sp and sp.median_rank90_fraction, 3),
            "norm": fmt(sp and sp.relative_norm, 4),
            "overlap": f"{ov.mean_overlap:.3f} ({ov.mean_chance:.3f})" if ov else "n/a",
            "cos": fmt(p.alignment_angle and p.alignment_angle.cosine),
            "cos_parent": fmt(p.parent_angle and p.parent_angle.cosine), "drift": fmt(last_drift)}


def render_diagnostics(report: DiagnosticsReport, out_dir: Path) -> Path:
    images = {}
    for name, build in plots.FIGURES.items():
        fig = build(report)
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        images[name] = buffer.getvalue()
        with atomic_path(out_dir / "plots" / f"{name}.png") as tmp:
            tmp.write_bytes(images[name])
    figures = [{"name": n, "caption": CAPTIONS[n], "data": base64.b64encode(d).decode("ascii")} for n, d in images.items()]
    page = _ENV.from_string(TEMPLATE).render(
        report=report, models=[model_row(m) for m in report.models], pairs=[pair_row(p) for p in report.pairs],
        figures=figures, seconds=", ".join(f"{k} {v:.1f}" for k, v in sorted(report.seconds.items())),
        config=json.dumps(report.config, indent=1, sort_keys=True))
    path = out_dir / "report.html"
    write_text_atomic(path, page)
    return path
