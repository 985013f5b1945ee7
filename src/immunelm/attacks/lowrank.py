"""Safety-critical rank removal: ActSVD with orthogonal projection (Wei et al. 2024,
https://arxiv.org/abs/2402.05162, Sec. 2.3).

For a linear layer W (``[out, in]``) and a data set, ActSVD takes the top-r left singular
vectors U of the layer's output activations W X (X = the selected tokens' inputs as columns;
bias left out, as in the official code). They are computed as the top-r eigenvectors of
W C W^T with C = X X^T, which spans the same subspace without storing X. With
Pi_u = U_u U_u^T (top r_u on utility data) and Pi_s = U_s U_s^T (top r_s on safety data),
the edit is the paper's

    dW = (I - Pi_u) Pi_s W,      W' = W - dW = Pi_u W + (I - Pi_u)(I - Pi_s) W

so every direction of the safety subspace orthogonal to the utility subspace is removed from
W's outputs (v^T W' = 0), the utility subspace's part is kept (Pi_u W' = Pi_u W), and
rank(dW) <= min(r_s, out - r_u).

Ranks are fractions of each matrix's rank min(out, in): r = round(f * rank), at least 1 for
f > 0. The official ``main_low_rank_diff.py`` takes rank_pos = d - r_u and rank_neg = d - r_s;
its README example (3000, 4000 at d = 4096) is r_u = 1096 (27%), r_s = 96 (2.3%), hence the
defaults below. The grid is r_s; each point reports the rank actually removed,
sum rank(dW) / sum rank(W) over the edited matrices (the paper: ~2.5% of the rank breaks
safety). Like the official code the edit goes block by block, block i's activations recorded
after blocks < i were edited (``sequential=false``: every block from one pass on the
unattacked model, cheaper on deep models). Safety and utility data: see
:mod:`immunelm.attacks.weight_data`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from pydantic import Field
from torch import nn

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.weight_data import (
    WEI_2024, Batch, NothingToRemove, WeightEditData, attack_rows, batches_for, block_linears, input_statistics, matrix,
    restore, snapshot, sweep, unedited, write_matrix,
)
from immunelm.config import Fraction

#: Singular values of dW below this fraction of its largest are rounding noise, not removed rank.
RANK_RTOL = 1e-9
#: Output directions with a squared singular value below this fraction of the largest are ones the
#: data do not excite (fewer tokens than dimensions): eigh returns arbitrary vectors there.
EIG_RTOL = 1e-12

Grams = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # (safety, utility) C per layer


class LowRankConfig(WeightEditData):
    """Safety-critical rank removal, ActSVD (Wei et al. 2024, https://arxiv.org/abs/2402.05162, Sec. 2.3)."""

    utility_rank: Fraction = Field(0.25, description="r_u as a fraction of each matrix's rank: the utility subspace kept "
                                                     "(official README example: 1096 of 4096).")
    safety_ranks: list[Fraction] = Field(
        default_factory=lambda: [0.01, 0.025, 0.05, 0.1], min_length=1, max_length=64,
        description="r_s grid as fractions of each matrix's rank (official README example: 96 of 4096 = 2.3%).")
    sequential: bool = Field(True, description="Record block i after editing blocks < i (official code); false = one pass.")

    def points(self) -> list[float]:
        """The attack's own budget grid; point 0 (r_s = 0) removes nothing."""
        return [0.0, *self.safety_ranks]


def rank_of(fraction: float, full: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * full))


def top_directions(w: torch.Tensor, gram: torch.Tensor, r: int) -> torch.Tensor:
    """``[out, <= r]``: the top-r left singular vectors of W X, given C = X X^T (only those with a
    non-zero singular value: the rest would be arbitrary)."""
    values, vectors = torch.linalg.eigh(w @ gram @ w.T)
    order = values.argsort(descending=True)[:r]
    return vectors[:, order[values[order] > EIG_RTOL * values.max().clamp(min=0)]]


def removed_component(w: torch.Tensor, u_safety: torch.Tensor, u_utility: torch.Tensor) -> torch.Tensor:
    """dW = (I - Pi_u) Pi_s W, without forming the [out, out] projections."""
    a = u_safety @ (u_safety.T @ w)
    return a - u_utility @ (u_utility.T @ a)


@torch.no_grad()
def edit_matrix(module: nn.Module, safety_gram: torch.Tensor, utility_gram: torch.Tensor,
                utility_rank: float, safety_rank: float) -> tuple[int, int]:
    """W <- W - dW in float64; returns (rank(dW), rank budget min(out, in))."""
    w = matrix(module).detach().double()
    full = min(w.shape)
    delta = removed_component(w, top_directions(w, safety_gram, rank_of(safety_rank, full)),
                              top_directions(w, utility_gram, rank_of(utility_rank, full)))
    write_matrix(module, w - delta)
    return int(torch.linalg.matrix_rank(delta, rtol=RANK_RTOL)), full


def remove_ranks(blocks: list[dict[str, nn.Module]], grams_of: Callable[[dict[str, nn.Module]], Grams],
                 utility_rank: float, safety_rank: float) -> dict:
    removed = total = 0
    for block in blocks:
        safety, utility = grams_of(block)
        for name, module in block.items():
            rank, full = edit_matrix(module, safety[name], utility[name], utility_rank, safety_rank)
            removed, total = removed + rank, total + full
    return {"utility_rank": utility_rank, "safety_rank": safety_rank, "removed_rank": removed, "total_rank": total,
            "removed_rank_fraction": removed / total}


def gram_source(model, blocks: list[dict[str, nn.Module]], safety: list[Batch], utility: list[Batch],
                sequential: bool) -> Callable[[dict[str, nn.Module]], Grams]:
    """Block -> its (safety, utility) Gram matrices: recorded now (sequential) or once up front."""
    def record(targets: dict[str, nn.Module]) -> Grams:
        return input_statistics(model, targets, safety, gram=True), input_statistics(model, targets, utility, gram=True)

    if sequential:
        return record
    once = record({name: m for block in blocks for name, m in block.items()})
    return lambda block: once


@register_attack("safety_lowrank", LowRankConfig, paper=WEI_2024, family="weight-edit", budget_unit="safety rank")
def safety_lowrank(run: AttackRun, cfg: LowRankConfig) -> AttackResult:
    started = time.perf_counter()
    try:
        safety_rows, utility_rows, data_info = attack_rows(run, cfg, "safety_lowrank")
    except NothingToRemove as nothing:
        return unedited(run, cfg.points(), str(nothing), started)
    blocks = block_linears(run.model)
    targets = {name: m for block in blocks for name, m in block.items()}
    original = snapshot(targets)
    grams_of = gram_source(run.model, blocks, batches_for(run, safety_rows, cfg), batches_for(run, utility_rows, cfg),
                           cfg.sequential)

    def edit(safety_rank: float) -> dict:
        restore(targets, original)
        return remove_ranks(blocks, grams_of, cfg.utility_rank, safety_rank)

    total = sum(min(matrix(m).shape) for m in targets.values())
    start = {"utility_rank": cfg.utility_rank, "safety_rank": 0.0, "removed_rank": 0, "total_rank": total,
             "removed_rank_fraction": 0.0}
    result = sweep(run, cfg.points(), edit, start, started)
    result.info.update(data_info, matrices=len(targets))
    return result
