"""Safety-critical weight removal by pruning (Wei et al. 2024, https://arxiv.org/abs/2402.05162).

Every weight of every linear layer in the decoder blocks gets two importance scores, one on
safety data (harmful prompts with refusals) and one on utility data (benign pairs):

* SNIP:  I(W) = sum_x |W * dL(x)/dW|, L(x) = the mean NLL of x's response tokens, one
  backward pass per example (``grad_batch_size=1``, the paper's per-instance score);
* Wanda: I(W_ij) = |W_ij| * ||X_j||_2, X_j = column j of the layer's stacked input activations.

Per weight matrix the paper removes the set difference

    S(q, p) = top-q of the safety scores  \\  top-p of the utility scores

(top-q = the int(q * numel) largest entries of that matrix, as the official code's
``prune_wandg_set_difference``), i.e. weights that matter for safety but not for utility,
by setting them to zero. The paper finds that ~3% of the parameters removed this way break
the safety of Llama-2-chat while its utility stays.

Scores, activations and the loss count the selected tokens of the safety and utility data of
:mod:`immunelm.attacks.weight_data` (shared with :mod:`immunelm.attacks.lowrank`, the
rank-level variant of the same paper): by default the response tokens, the official code's
``--disentangle``.

Scores are computed once on the unattacked model (the official code dumps them first); each
grid point starts again from the original weights. Peft-wrapped models are scored through the
adapter (forward passes keep it active) and their frozen base weights are edited.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from pydantic import Field
from torch import nn

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.weight_data import (
    WEI_2024, Batch, NothingToRemove, WeightEditData, all_linears, attack_rows, batches_for, forward_inputs, input_statistics,
    matrix, restore, snapshot, sweep, unedited,
)
from immunelm.config import Config, Fraction
from immunelm.eval.generation import eval_mode


# ----------------------------------------------------------------------------- settings
class SetDifference(Config):
    """One grid point: prune top-q safety minus top-p utility weights of each matrix."""

    q: Fraction = Field(description="Top fraction of each matrix by safety score.")
    p: Fraction = Field(description="Top fraction of each matrix by utility score, kept.")


def _default_grid() -> list[SetDifference]:
    return [SetDifference(q=f, p=f) for f in (0.01, 0.03, 0.05, 0.1)]


class PruningConfig(WeightEditData):
    """Safety-critical weight pruning (Wei et al. 2024, https://arxiv.org/abs/2402.05162, Sec. 2.2)."""

    score: Literal["snip", "wanda"] = Field("snip", description="snip: |W * dL/dW| (paper's best); wanda: |W| * ||X_j||_2.")
    grid: list[SetDifference] = Field(
        default_factory=_default_grid, min_length=1, max_length=64,
        description="(q, p) points, scored in order after the unattacked point 0 (paper: ~3% of weights removed breaks safety).")
    grad_batch_size: int = Field(1, ge=1, le=4096, description="SNIP: examples per backward pass; 1 = the paper's sum over examples of |grad|.")

    def points(self) -> list[SetDifference]:
        """The attack's own budget grid; point 0 removes nothing."""
        return [SetDifference(q=0, p=0), *self.grid]


# ----------------------------------------------------------------------------- scores
def wanda_scores(targets: dict[str, nn.Module], sq_norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|W_ij| * ||X_j||_2 as ``[out, in]`` (Wanda, Sun et al. 2023, as adapted by Wei et al. 2024)."""
    return {name: matrix(m).detach().float().abs() * sq_norms[name].sqrt().float().to(m.weight.device)[None, :]
            for name, m in targets.items()}


@contextmanager
def _grad_only(model, params: list[torch.Tensor]) -> Iterator[None]:
    """Gradients for ``params`` only (peft freezes base weights; its adapters need none here)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def snip_scores(model, targets: dict[str, nn.Module], batches: list[Batch]) -> dict[str, torch.Tensor]:
    """|W| * sum over batches of |dL/dW| as ``[out, in]`` (SNIP, Lee et al. 2019, as in Wei et al. 2024)."""
    params = [m.weight for m in targets.values()]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    with _grad_only(model, params), eval_mode(model):
        for batch in batches:
            loss = model(**forward_inputs(batch), labels=batch["labels"]).loss
            for total, grad in zip(acc, torch.autograd.grad(loss, params)):
                total += grad.float().abs()
    return {name: matrix(m, p.detach().float().abs() * a) for (name, m), p, a in zip(targets.items(), params, acc)}


def importance(run: AttackRun, cfg: PruningConfig, targets: dict[str, nn.Module], rows: list[dict]) -> dict[str, torch.Tensor]:
    if cfg.score == "snip":
        return snip_scores(run.model, targets, batches_for(run, rows, cfg, cfg.grad_batch_size))
    return wanda_scores(targets, input_statistics(run.model, targets, batches_for(run, rows, cfg), gram=False))


# ----------------------------------------------------------------------------- set difference
def top_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """The int(fraction * numel) largest entries of ``score`` (official code's rounding)."""
    k = int(fraction * score.numel())
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    mask[torch.topk(score.flatten(), k).indices] = True
    return mask.view_as(score)


def set_difference(safety: torch.Tensor, utility: torch.Tensor, q: float, p: float) -> torch.Tensor:
    """S(q, p): top-q by safety score and not top-p by utility score."""
    return top_mask(safety, q) & ~top_mask(utility, p)


@torch.no_grad()
def prune(targets: dict[str, nn.Module], safety: dict[str, torch.Tensor], utility: dict[str, torch.Tensor],
          point: SetDifference) -> int:
    """Zero S(q, p) in every matrix; returns how many weights were removed."""
    removed = 0
    for name, module in targets.items():
        mask = set_difference(safety[name], utility[name], point.q, point.p)
        matrix(module)[mask] = 0
        removed += int(mask.sum())
    return removed


@register_attack("safety_pruning", PruningConfig, paper=WEI_2024, family="weight-edit", budget_unit="(q, p)")
def safety_pruning(run: AttackRun, cfg: PruningConfig) -> AttackResult:
    started = time.perf_counter()
    try:
        safety_rows, utility_rows, data_info = attack_rows(run, cfg, "safety_pruning")
    except NothingToRemove as nothing:
        return unedited(run, cfg.points(), str(nothing), started)
    targets = all_linears(run.model)
    safety = importance(run, cfg, targets, safety_rows)
    utility = importance(run, cfg, targets, utility_rows)
    original = snapshot(targets)
    total = sum(s.numel() for s in safety.values())

    def edit(point: SetDifference) -> dict:
        restore(targets, original)
        removed = prune(targets, safety, utility, point)
        return {"q": point.q, "p": point.p, "removed": removed, "removed_fraction": removed / total}

    result = sweep(run, cfg.points(), edit, {"q": 0.0, "p": 0.0, "removed": 0, "removed_fraction": 0.0}, started)
    result.info.update(data_info, score=cfg.score, scored_weights=total, matrices=len(targets))
    return result
