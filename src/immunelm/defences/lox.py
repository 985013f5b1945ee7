"""LoX: low-rank extrapolation (Perin et al. 2025), a training-free defence.

Alignment moves the weights by a delta whose top singular directions carry safety; a little
fine-tuning easily undoes a narrow alignment. LoX pushes further along those directions, for
every 2-D weight:

    W = W_align + alpha * Proj_k(W_align - W_base),   Proj_k = rank-k truncated SVD

(``anchor=aligned``, the paper's and official code's formula). The tutorial (seed 003) writes it
as W_base + alpha * Proj_k(delta) (``anchor=base``), which drops the delta's remainder; for full
rank the two differ only in what alpha means. Official defaults: k = 0 meaning full rank, alpha
1.0; the paper reports low rank (k ~ 6 at 7B, about the delta's effective rank) as more stable.
Needs the pre-alignment checkpoint (``DefenceData.load_base``; on the CLI ``base_model=``).
Records each matrix's effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised
singular values), the rank holding 90% of the delta's energy, and the energy share k keeps.
"""

from __future__ import annotations

import statistics
from typing import Literal

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.diagnostics.spectra import spectrum_stats
from immunelm.defences.base import DefenceData, Immunised, register_defence
from immunelm.errors import ImmuneLMError


class LoXConfig(Config):
    rank: int = Field(6, ge=0, description="k of the truncated SVD (paper ~6 at 7B; 0 = full rank, the official default).")
    alpha: float = Field(1.0, gt=0, le=100, description="Extrapolation coefficient (official default 1.0).")
    anchor: Literal["aligned", "base"] = Field("aligned", description="aligned: W_align + alpha*P_k (paper); base: W_base + alpha*P_k (seed 003).")
    skip_embeddings: bool = Field(False, description="Leave input/output embeddings unchanged.")


def extrapolate_weight(aligned: torch.Tensor, base: torch.Tensor, cfg: LoXConfig) -> tuple[torch.Tensor, dict]:
    delta = (aligned.float() - base.float())
    u, sigma, vh = torch.linalg.svd(delta, full_matrices=False)
    k = cfg.rank or sigma.numel()
    projected = (u[:, :k] * sigma[:k]) @ vh[:k]
    anchor = aligned.float() if cfg.anchor == "aligned" else base.float()
    return (anchor + cfg.alpha * projected).to(aligned.dtype), spectrum_stats(sigma, cfg.rank)


def embedding_names(model) -> set[str]:
    modules = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    embedding_ids = {id(p) for m in modules for p in m.parameters()}
    return {name for name, param in model.named_parameters() if id(param) in embedding_ids}


@torch.no_grad()
def lox_extrapolate(model, base_state: dict[str, torch.Tensor], cfg: LoXConfig) -> dict:
    """In place on ``model`` (the aligned one); returns per-matrix and summary spectrum stats."""
    skip = embedding_names(model) if cfg.skip_embeddings else set()
    per_matrix = {}
    for name, param in model.named_parameters():
        if param.ndim != 2 or name in skip:
            continue
        if name not in base_state or base_state[name].shape != param.shape:
            raise ImmuneLMError(f"LoX base: no weight '{name}' of shape {tuple(param.shape)} in the base checkpoint "
                                "(base and aligned must share an architecture)")
        new, stats = extrapolate_weight(param.data, base_state[name].to(param.device), cfg)
        param.copy_(new)
        per_matrix[name] = stats
    summary = {key: statistics.median(s[key] for s in per_matrix.values()) for key in ("effective_rank", "rank90", "energy_kept")}
    return {"matrices": len(per_matrix), "median": summary, "per_matrix": per_matrix}


@register_defence("lox", LoXConfig, paper="Perin et al. 2025 (LoX: low-rank extrapolation)", needs_base=True)
def lox(model, tokenizer, data: DefenceData, cfg: LoXConfig):
    if data.load_base is None:
        raise ImmuneLMError("lox needs the pre-alignment checkpoint: set base_model=... (organism models use organism:base)")
    base = data.load_base()
    info = lox_extrapolate(model, dict(base.named_parameters()), cfg)
    return Immunised(model, info)
