"""Which diagnostic runs on which model or pair, with what inputs: the glue between
:func:`immunelm.api.diagnose.run_diagnose` (and ``evaluate``) and the diagnostic functions.

Each function here takes a :class:`Context` (loaded models, their tokenizers, the sampled
examples, the settings and a timer) and returns plain fields for the report schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from immunelm.diagnostics import conditioning, drift, gradients, landscape
from immunelm.diagnostics.kl import kl_profile
from immunelm.diagnostics.schema import PairDiagnostics, PairDrift
from immunelm.diagnostics.spectra import delta_spectra, subspace_overlap
from immunelm.diagnostics.task_vectors import angle, norm, task_vector


@dataclass
class Context:
    models: dict[str, Any]
    tokenizers: dict[str, Any]
    harmful: list  # (harmful prompt, harmful answer) pairs
    benign: list  # (benign prompt, answer) pairs
    settings: Any  # DiagnoseSettings
    timer: Any  # Timer: seconds per diagnostic
    task: Any = None  # EvalTask: its judge and generation settings score harmful_rate landscapes
    _alignment: dict = field(default_factory=dict)  # cached aligned - base deltas

    def landscape_metric(self, name: str):
        """The landscape's safety metric for model ``name``: the harmful loss (cheap), or the judged
        harmful rate of generated answers with the harmful loss beside it (what the paper plots)."""
        loss = landscape.harmful_loss_metric(self.tokenizers[name], self.harmful)
        if self.settings.landscape_metric == "harmful_loss":
            return loss
        scorer = harmful_scorer(self.task, self.tokenizers[name])

        def metric(model) -> dict[str, float]:
            # Peng et al.'s ASR is keyword non-refusal: a broken model that stops refusing is
            # outside the basin (a judged "harmful and correct" rate would count collapse as safe)
            score, _, outcomes = scorer.harmful(model, self.harmful, {"set": "landscape"})
            return {"harmful_rate": 1.0 - outcomes.refused, "harmful_score": score, "complied": outcomes.complied,
                    "collapsed": outcomes.collapsed, **loss(model)}
        return metric

    def alignment_deltas(self) -> Optional[dict]:
        """aligned - base per 2-D matrix (and as a task vector), computed once."""
        if "base" not in self.models or "aligned" not in self.models:
            return None
        if not self._alignment:
            self._alignment["vector"] = task_vector(self.models["aligned"], self.models["base"], "alignment task vector")
            self._alignment["matrices"] = matrices(self._alignment["vector"])
        return self._alignment


def matrices(tau: dict) -> dict:
    """The 2-D entries of a task vector: the per-matrix deltas the subspace overlap reads."""
    return {n: t for n, t in tau.items() if t.ndim == 2}


def pair(ctx: Context, child: str, parent: str, kind: str, wanted: set[str], grandparent: Optional[str] = None) -> PairDiagnostics:
    """Every asked pair diagnostic of ``child`` against ``parent`` (``grandparent``: the parent's own parent)."""
    out = PairDiagnostics(child=child, parent=parent, kind=kind)
    c, p, tok, s = ctx.models[child], ctx.models[parent], ctx.tokenizers.get(child), ctx.settings
    if "kl" in wanted:
        with ctx.timer("kl"):
            out.kl = kl_profile(c, p, tok, ctx.harmful, ctx.benign, first_k=s.first_k)
    if "spectra" in wanted:
        with ctx.timer("spectra"):
            out.spectra = delta_spectra(c, p, f"spectra of {child} - {parent}")
    alignment = ctx.alignment_deltas() if kind != "alignment" else None
    tau = task_vector(c, p, f"{child} - {parent}") if wanted & {"overlap", "task_vectors"} else None
    if "overlap" in wanted and alignment:
        with ctx.timer("overlap"):
            out.alignment_overlap = subspace_overlap(matrices(tau), alignment["matrices"],
                                                     s.overlap_fraction, f"overlap of {child} - {parent} with aligned - base")
    if "task_vectors" in wanted and alignment:
        with ctx.timer("task_vectors"):
            if norm(tau) > 0:  # an unchanged model has no direction (its spectra say so: rank 0)
                out.alignment_angle = angle(tau, alignment["vector"], f"{child} - {parent}", "aligned - base")
    if "task_vectors" in wanted and grandparent and kind == "attack" and grandparent != "base":
        with ctx.timer("task_vectors"):
            tau_parent = task_vector(p, ctx.models[grandparent], f"{parent} - {grandparent}")
            if norm(tau) > 0 and norm(tau_parent) > 0:
                out.parent_angle = angle(tau, tau_parent, f"{child} - {parent}", f"{parent} - {grandparent}")
    if "landscape" in wanted:
        with ctx.timer("landscape"):
            out.landscape = landscape.interpolate(p, c, path_grid(s), ctx.landscape_metric(child))
    if "drift" in wanted:
        with ctx.timer("drift"):
            out.drift = PairDrift(embedding=drift.embedding_drift(p, c, tok, ctx.harmful),
                                  harmful_direction=drift.harmful_direction_cosine(p, c, tok, ctx.harmful, ctx.benign))
    return out


def single(ctx: Context, name: str, wanted: set[str]) -> dict:
    """Every asked one-model diagnostic of ``name`` (fields of ModelDiagnostics)."""
    model, tok, s, out = ctx.models[name], ctx.tokenizers[name], ctx.settings, {}
    if "gradients" in wanted:
        with ctx.timer("gradients"):
            out["gradients"] = gradients.gradient_cosine(model, tok, ctx.harmful, ctx.benign)
    if "entropy" in wanted:
        with ctx.timer("entropy"):
            out["entropy"] = gradients.response_entropy(model, tok, ctx.harmful)
    if "conditioning" in wanted:
        with ctx.timer("conditioning"):
            out["conditioning"] = conditioning_of(ctx, name)
    if "landscape" in wanted:
        with ctx.timer("landscape"):
            out["landscape"] = landscape.slice_1d(model, landscape.random_direction(model, seed=s.seed), grid(s),
                                                  ctx.landscape_metric(name))
    if "landscape_2d" in wanted:
        with ctx.timer("landscape_2d"):
            coarse = grid(s, s.landscape_points_2d)
            out["landscape_2d"] = landscape.slice_2d(model, landscape.random_direction(model, seed=s.seed),
                                                     landscape.random_direction(model, seed=s.seed + 1), coarse, coarse,
                                                     ctx.landscape_metric(name))
    return out


def grid(s, points: int | None = None) -> list[float]:
    """linspace(-span, span, points) with 0 exactly in the middle (Peng et al.: 21 points, span 0.5)."""
    n = points or s.landscape_points
    return [round(-s.landscape_span + 2 * s.landscape_span * i / (n - 1), 10) for i in range(n)]


def path_grid(s) -> list[float]:
    """Along parent -> child: the same step, from -span to 1 + span, so both models are on the grid."""
    step = 2 * s.landscape_span / (s.landscape_points - 1)
    n = round((1 + 2 * s.landscape_span) / step)
    return [round(-s.landscape_span + i * step, 10) for i in range(n + 1)]


def harmful_scorer(task, tokenizer):
    """The evaluation's scorer for one tokenizer: the task's judge and generation settings."""
    from immunelm.eval.judges import build_judge
    from immunelm.eval.runner import EvaluationConfig, resolve_settings
    from immunelm.eval.scoring import Scorer

    settings = resolve_settings(EvaluationConfig(task=task.name), task)
    return Scorer(tokenizer, build_judge(settings.judge, **settings.judge_options), settings.generation, [], task.harmful_scorer)


def conditioning_of(ctx: Context, name: str) -> dict:
    """kappa of the harmful / benign probe Hessians; RIR relative to the aligned model where
    there is one (Zheng et al. 2025), relative to the identity always."""
    reference = ctx.models.get("aligned", ctx.models[name])
    return conditioning.relative_immunisation_ratio(
        ctx.models[name], reference, ctx.tokenizers[name], ctx.harmful, ctx.benign,
        draws=ctx.settings.conditioning_draws, size=max(2, 3 * len(ctx.harmful) // 4), seed=ctx.settings.seed)


def map_layer(model, setting: float) -> int:
    """A fraction of depth (< 1) or a layer index (>= 1) as an index into hidden_states."""
    layers = model.config.num_hidden_layers
    return round(setting * layers) if setting < 1 else min(int(setting), layers)


def representation_map(ctx: Context):
    with ctx.timer("map"):
        s, first = ctx.settings, next(iter(ctx.models.values()))
        tokenizer = next(iter(ctx.tokenizers.values()))  # one tokenizer: validate_diagnose checked the pairs share it
        return drift.representation_map(ctx.models, tokenizer, ctx.harmful, ctx.benign, layer=map_layer(first, s.map_layer),
                                        method=s.map_method, seed=s.seed)
