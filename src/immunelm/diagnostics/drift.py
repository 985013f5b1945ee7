"""Harmful embedding drift: how far an attack moves the representations of harmful prompts.

Huang et al. 2024, "Vaccine: Perturbation-aware Alignment for LLMs against Harmful Fine-tuning"
(https://arxiv.org/abs/2402.01109) name it "harmful embedding drift"; Rosati et al. 2024,
"Representation Noising" (https://arxiv.org/abs/2405.14577) defend by moving exactly these
representations. For two models A (e.g. aligned) and B (e.g. attacked) of one architecture and
prompts x_1..x_n, with h_l(x) the representation of x at layer l at its last prompt token:

    distance_l          = 1/n sum_i || h_l^A(x_i) - h_l^B(x_i) ||_2
    cosine_l            = 1/n sum_i cos(h_l^A(x_i), h_l^B(x_i))
    relative_distance_l = distance_l / (1/n sum_i || h_l^A(x_i) ||_2)

The harmful-direction probe asks whether the attack rotates the "harmful" feature: with
d_l^M = mean_harmful h_l^M - mean_benign h_l^M (Arditi et al. 2024's difference of means,
https://arxiv.org/abs/2406.11717), it reports cos(d_l^A, d_l^B) per layer.

Decisions:
* Layers are transformers' ``hidden_states``: index 0 = the embeddings, index l = the residual
  stream after block l - 1, so there are num_hidden_layers + 1. The last one is reported after
  the final norm (transformers' convention), so its norm is the norm's scale, not the stream's.
* The position is the last prompt token with the chat template's generation prompt (the
  assistant header), where the answer starts: ``prompt_rows`` + ``left_padded`` of
  :mod:`immunelm.attacks.directions`, whose position ids make a padded prompt's states equal its
  own. That token is the same for every prompt, so at layer 0 (no mixing yet) all prompts share
  one vector: the drift there is the change of that token's embedding, and the probe's
  difference of means is zero there; a direction shorter than 1e-5 of the (larger) harmful
  mean's norm is reported as None (cosine undefined), not as a cosine of rounding noise.
* Models run in eval mode (no dropout) under no_grad; their train/eval mode is restored.
  States are kept in float64 (n x (layers + 1) x hidden: ~18 MB for 128 prompts on SmolLM2).
* The 2-D map fits ONE projection on every (model, set, example) point, so models share axes.
  PCA (scikit-learn, full SVD with its sign convention) is deterministic; t-SNE is seeded, its
  perplexity capped at (n - 1) / 3 so small sets work (scikit-learn needs perplexity < n).
"""

from __future__ import annotations

from typing import Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from immunelm.attacks.directions import left_padded, pad_id, prompt_rows
from immunelm.data import Example
from immunelm.diagnostics.base import DiagnosticResult, finite, finite_list
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import eval_mode
from immunelm.models import ModelAdapter

#: A difference-of-means direction shorter than this fraction of the harmful mean has no direction.
MIN_RELATIVE_NORM = 1e-5


class EmbeddingDrift(DiagnosticResult):
    """Per layer (0 = embeddings, l = after block l - 1): A vs B on the same prompts."""

    examples: int
    distance: list[float]
    cosine: list[float]
    relative_distance: list[float]
    reference_norm: list[float]  # mean || h^A ||, the denominator of relative_distance


class DirectionCosine(DiagnosticResult):
    """Per layer: cos(d^A, d^B) of the harmful-minus-benign directions (None where one is zero)."""

    cosine: list[Optional[float]]
    norm_a: list[float]
    norm_b: list[float]


class MapPoint(DiagnosticResult):
    x: float
    y: float
    model: str
    set: str  # "harmful" or "benign"
    example: int  # index in its set


class RepresentationMap(DiagnosticResult):
    method: Literal["pca", "tsne"]
    layer: int  # index into hidden_states, resolved (never negative)
    points: list[MapPoint]
    explained_variance: Optional[list[float]] = None  # PCA only: variance ratio of each axis


# ----------------------------------------------------------------------------- states
def _chunks(items: Sequence, size: int) -> list[Sequence]:
    if size < 1:
        raise ImmuneLMError(f"batch_size must be >= 1, got {size}")
    return [items[lo:lo + size] for lo in range(0, len(items), size)]


def check_same_architecture(models: Sequence, what: str) -> int:
    """Block count shared by ``models``; a one-line error if their depths or widths differ."""
    shapes = [(a.num_layers, a.hidden_size) for a in map(ModelAdapter, models)]
    for shape in shapes[1:]:
        if shape != shapes[0]:
            raise ImmuneLMError(f"{what}: the models have (layers, hidden size) {shapes[0]} vs {shape}; "
                                "expected models of one architecture")
    return shapes[0][0]


def _rows(tokenizer, examples: Sequence[Example], what: str) -> list[list[int]]:
    if not examples:
        raise ImmuneLMError(f"{what}: no examples")
    return prompt_rows(tokenizer, examples)


@torch.no_grad()
def last_token_states(model, rows: Sequence[list[int]], pad: int) -> torch.Tensor:
    """``[layers + 1, batch, hidden]`` float64 on the CPU: every hidden state at each row's last
    token (the caller sets eval mode)."""
    device = next(model.parameters()).device
    out = model(**left_padded(rows, pad, device), output_hidden_states=True)
    return torch.stack([h[:, -1].double().cpu() for h in out.hidden_states])


def mean_states(model, tokenizer, examples: Sequence[Example], batch_size: int = 32,
                what: str = "mean states") -> torch.Tensor:
    """``[layers + 1, hidden]``: the mean last-token state of ``examples`` at every layer."""
    rows, pad, total = _rows(tokenizer, examples, what), pad_id(tokenizer), None
    with eval_mode(model):
        for chunk in _chunks(rows, batch_size):
            part = last_token_states(model, chunk, pad).sum(1)
            total = part if total is None else total + part
    return total / len(rows)


# ----------------------------------------------------------------------------- drift
def prompt_states(model, tokenizer, examples: Sequence[Example], batch_size: int = 32, what: str = "prompt states") -> torch.Tensor:
    """``[layers + 1, n, hidden]`` float64 on the CPU: every example's last-prompt-token state at
    every layer (kept, so an evaluation can compare one model with each of its attacked copies)."""
    rows, pad = _rows(tokenizer, examples, what), pad_id(tokenizer)
    with eval_mode(model):
        return torch.cat([last_token_states(model, chunk, pad) for chunk in _chunks(rows, batch_size)], dim=1)


def drift_between(states_a: torch.Tensor, states_b: torch.Tensor) -> EmbeddingDrift:
    """Per-layer drift of B's states from A's (A is the reference), from :func:`prompt_states`."""
    if states_a.shape != states_b.shape:
        raise ImmuneLMError(f"embedding drift: states of shape {tuple(states_a.shape)} vs {tuple(states_b.shape)}; "
                            "expected the same prompts through models of one architecture")
    distance = (states_a - states_b).norm(dim=-1).mean(-1)
    cosine = F.cosine_similarity(states_a, states_b, dim=-1).mean(-1)
    norm = states_a.norm(dim=-1).mean(-1)
    return EmbeddingDrift(
        examples=states_a.shape[1],
        distance=finite_list(distance, "embedding drift distance"),
        cosine=finite_list(cosine, "embedding drift cosine"),
        relative_distance=finite_list(distance / norm, "embedding drift relative distance"),
        reference_norm=finite_list(norm, "embedding drift reference norm"),
    )


def embedding_drift(model_a, model_b, tokenizer, examples: Sequence[Example], batch_size: int = 32) -> EmbeddingDrift:
    """Per-layer drift of B's prompt representations from A's (A is the reference)."""
    check_same_architecture([model_a, model_b], "embedding drift")
    return drift_between(prompt_states(model_a, tokenizer, examples, batch_size, "embedding drift"),
                         prompt_states(model_b, tokenizer, examples, batch_size, "embedding drift"))


# ----------------------------------------------------------------------------- probe
def harmful_direction(model, tokenizer, harmful: Sequence[Example], benign: Sequence[Example],
                      batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(d = mean harmful - mean benign, the harmful mean), each ``[layers + 1, hidden]``."""
    mean_h = mean_states(model, tokenizer, harmful, batch_size, "harmful direction (harmful prompts)")
    mean_b = mean_states(model, tokenizer, benign, batch_size, "harmful direction (benign prompts)")
    return mean_h - mean_b, mean_h


def _direction_cosine(da: torch.Tensor, db: torch.Tensor, scale: torch.Tensor) -> list[Optional[float]]:
    defined = (da.norm(dim=-1) > MIN_RELATIVE_NORM * scale) & (db.norm(dim=-1) > MIN_RELATIVE_NORM * scale)
    cosines = F.cosine_similarity(da, db, dim=-1)
    return [finite(c, f"harmful direction cosine[{l}]") if ok else None
            for l, (c, ok) in enumerate(zip(cosines, defined.tolist()))]


def harmful_direction_cosine(model_a, model_b, tokenizer, harmful: Sequence[Example], benign: Sequence[Example],
                             batch_size: int = 32) -> DirectionCosine:
    """cos(d^A, d^B) per layer: 1 = the attack kept the harmful direction, 0 = rotated it away."""
    check_same_architecture([model_a, model_b], "harmful direction cosine")
    da, mean_a = harmful_direction(model_a, tokenizer, harmful, benign, batch_size)
    db, mean_b = harmful_direction(model_b, tokenizer, harmful, benign, batch_size)
    scale = torch.maximum(mean_a.norm(dim=-1), mean_b.norm(dim=-1))
    return DirectionCosine(cosine=_direction_cosine(da, db, scale),
                           norm_a=finite_list(da.norm(dim=-1), "direction norm A"),
                           norm_b=finite_list(db.norm(dim=-1), "direction norm B"))


# ----------------------------------------------------------------------------- map
def _states_at(model, tokenizer, examples: Sequence[Example], layer: int, batch_size: int, what: str) -> torch.Tensor:
    rows, pad = _rows(tokenizer, examples, what), pad_id(tokenizer)
    with eval_mode(model):
        return torch.cat([last_token_states(model, chunk, pad)[layer] for chunk in _chunks(rows, batch_size)])


def _resolve(layer: int, count: int) -> int:
    if not -count <= layer < count:
        raise ImmuneLMError(f"representation map: layer {layer} out of range; the models have {count} hidden states "
                            f"(0 = embeddings .. {count - 1}, or -1 = the last)")
    return layer % count


def _project(points, method: str, seed: int, perplexity: float):
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full")
        return pca.fit_transform(points), pca.explained_variance_ratio_.tolist()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(perplexity, (len(points) - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points), None
    raise ImmuneLMError(f"representation map: unknown method '{method}'; expected pca or tsne")


def representation_map(models: Mapping[str, torch.nn.Module], tokenizer, harmful: Sequence[Example],
                       benign: Sequence[Example], layer: int = -1, method: Literal["pca", "tsne"] = "pca",
                       batch_size: int = 32, seed: int = 0, perplexity: float = 30.0) -> RepresentationMap:
    """2-D map of every model's last-prompt-token states of harmful and benign prompts at
    ``layer`` (an index into hidden_states; -1 = the last), one projection fitted on all points."""
    if not models:
        raise ImmuneLMError("representation map: no models")
    layer = _resolve(layer, check_same_architecture(list(models.values()), "representation map") + 1)
    blocks = [(name, set_name, _states_at(model, tokenizer, examples, layer, batch_size, f"representation map ({set_name})"))
              for name, model in models.items() for set_name, examples in (("harmful", harmful), ("benign", benign))]
    return project(blocks, layer, method, seed, perplexity)


def project(blocks: Sequence[tuple[str, str, torch.Tensor]], layer: int, method: Literal["pca", "tsne"] = "pca",
            seed: int = 0, perplexity: float = 30.0) -> RepresentationMap:
    """One 2-D projection of labelled ``(model, set, states [n, hidden])`` blocks taken at ``layer``."""
    labels = [(m, s, i) for m, s, states in blocks for i in range(len(states))]
    states = torch.cat([b[2] for b in blocks])
    if len(states) < 4:
        raise ImmuneLMError(f"representation map: {len(states)} points; a 2-D projection needs at least 4")
    xy, variance = _project(states.numpy(), method, seed, perplexity)
    xs, ys = finite_list(xy[:, 0].tolist(), "map x"), finite_list(xy[:, 1].tolist(), "map y")
    points = [MapPoint(x=x, y=y, model=m, set=s, example=i) for x, y, (m, s, i) in zip(xs, ys, labels)]
    return RepresentationMap(method=method, layer=layer, points=points,
                             explained_variance=finite_list(variance, "explained variance") if variance else None)
