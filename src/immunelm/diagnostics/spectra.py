"""Weight-delta spectra and the overlap of two deltas' subspaces: is a change low-rank, and do
attacks write where alignment wrote?

For every matrix W of two checkpoints of one architecture, the delta D = W_to - W_from has
singular values s_1 >= s_2 >= ...; with p_i = s_i / sum_j s_j,

    effective rank = exp(-sum_i p_i log p_i)       (Roy & Vetterli 2007, as LoX reports it)
    rank90         = min { r : sum_{i<=r} s_i^2 >= 0.9 sum_i s_i^2 }   (rank for 90% energy)

Subspace overlap (Wei et al. 2024, https://arxiv.org/abs/2402.05162: safety lives in ~2.5% of
the rank): with U_a, U_b the top-k left singular vectors of two deltas of the same matrix (e.g.
alignment = aligned - base and attack = attacked - aligned), the principal angles' cosines are
the singular values of U_a^T U_b, and

    overlap = ||U_a^T U_b||_F^2 / k  in [0, 1]       (mean squared cosine of the principal angles)

Two random k-dim subspaces of R^m have E[overlap] = k / m: the result reports the ratio to that
chance level. Decisions: k = max(1, round(fraction * min(shape))) with fraction 0.025 (Wei et
al.'s ~2.5%); left (output-space) singular vectors, because an update "writes" into the output
space of W; every 2-D parameter counts, embeddings included (tied ones once); matrices whose
delta is exactly zero are listed with rank 0 and left out of the overlap.
"""

from __future__ import annotations

import statistics
from typing import Optional

import torch

from immunelm.diagnostics.base import DiagnosticResult, finite, matching_parameters

TOP_SINGULAR_VALUES = 16  # kept per matrix for the figure; the statistics use all of them


def spectrum_stats(sigma: torch.Tensor, rank: int = 0) -> dict[str, float]:
    """Effective rank, rank for 90% energy, and the energy share the top ``rank`` keep."""
    sigma = sigma.double()
    energy = sigma.pow(2)
    total = float(energy.sum())
    if total == 0:
        return {"effective_rank": 0.0, "rank90": 0, "energy_kept": 1.0}
    p = sigma / sigma.sum()
    p = p[p > 0]
    cumulative = torch.cumsum(energy, 0) / total
    return {
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "rank90": int((cumulative < 0.9).sum()) + 1,
        "energy_kept": float(cumulative[min(rank, sigma.numel()) - 1]) if rank else 1.0,
    }


class MatrixSpectrum(DiagnosticResult):
    name: str
    shape: tuple[int, int]
    singular_values: list[float]  # the top TOP_SINGULAR_VALUES
    effective_rank: float
    rank90: int
    relative_norm: float  # ||D||_F / ||W_from||_F


class DeltaSpectra(DiagnosticResult):
    matrices: list[MatrixSpectrum]
    median_effective_rank: float
    median_rank90: float
    median_rank90_fraction: float  # rank90 / min(shape): comparable across model sizes
    relative_norm: float  # over all matrices together


def two_d_deltas(model_to, model_from, what: str) -> dict[str, torch.Tensor]:
    """D = W_to - W_from for every 2-D parameter (float32, on CPU)."""
    names = matching_parameters(model_to, model_from, what)
    to, frm = dict(model_to.named_parameters()), dict(model_from.named_parameters())
    return {n: (to[n].detach().float().cpu() - frm[n].detach().float().cpu()) for n in names if to[n].ndim == 2}


@torch.no_grad()
def delta_spectra(model_to, model_from, what: str = "weight-delta spectra") -> DeltaSpectra:
    """The spectrum of every matrix of ``model_to - model_from``."""
    frm = dict(model_from.named_parameters())
    rows, sq_delta, sq_from = [], 0.0, 0.0
    for name, delta in two_d_deltas(model_to, model_from, what).items():
        sigma = torch.linalg.svdvals(delta.double())
        stats = spectrum_stats(sigma)
        norm_from = float(frm[name].detach().double().norm())
        sq_delta, sq_from = sq_delta + float(sigma.pow(2).sum()), sq_from + norm_from**2
        rows.append(MatrixSpectrum(
            name=name, shape=tuple(delta.shape), singular_values=[finite(s, f"{what}: {name} singular value") for s in sigma[:TOP_SINGULAR_VALUES]],
            effective_rank=stats["effective_rank"], rank90=stats["rank90"],
            relative_norm=finite(float(sigma.pow(2).sum().sqrt()) / max(norm_from, 1e-12), f"{what}: {name} relative norm")))
    changed = [r for r in rows if r.rank90 > 0] or rows
    return DeltaSpectra(
        matrices=rows, median_effective_rank=statistics.median(r.effective_rank for r in changed),
        median_rank90=statistics.median(r.rank90 for r in changed),
        median_rank90_fraction=statistics.median(r.rank90 / min(r.shape) for r in changed),
        relative_norm=(sq_delta / max(sq_from, 1e-24)) ** 0.5)


def top_left_subspace(delta: torch.Tensor, k: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(delta.double(), full_matrices=False)
    return u[:, :k]


def overlap(u_a: torch.Tensor, u_b: torch.Tensor) -> float:
    """||U_a^T U_b||_F^2 / k: 1 for the same subspace, 0 for orthogonal ones."""
    return float((u_a.T @ u_b).pow(2).sum()) / u_a.shape[1]


class MatrixOverlap(DiagnosticResult):
    name: str
    k: int
    overlap: float
    chance: float  # k / m, the expected overlap of two random subspaces


class SubspaceOverlap(DiagnosticResult):
    fraction: float
    matrices: list[MatrixOverlap]
    mean_overlap: float
    mean_chance: float
    ratio_to_chance: Optional[float]


@torch.no_grad()
def subspace_overlap(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], fraction: float = 0.025,
                     what: str = "subspace overlap") -> SubspaceOverlap:
    """Overlap of the top-k output subspaces of two deltas (from :func:`two_d_deltas`), matrix by matrix."""
    rows = []
    for name, d_a in first.items():
        d_b = second.get(name)
        if d_b is None or not d_a.any() or not d_b.any():
            continue  # a matrix one of the two changes did not touch has no subspace
        m = d_a.shape[0]
        k = max(1, round(fraction * min(d_a.shape)))
        rows.append(MatrixOverlap(name=name, k=k, chance=k / m,
                                  overlap=finite(overlap(top_left_subspace(d_a, k), top_left_subspace(d_b, k)), f"{what}: {name}")))
    mean = statistics.fmean(r.overlap for r in rows) if rows else 0.0
    chance = statistics.fmean(r.chance for r in rows) if rows else 0.0
    return SubspaceOverlap(fraction=fraction, matrices=rows, mean_overlap=mean, mean_chance=chance,
                           ratio_to_chance=mean / chance if chance else None)
