"""A low-rank representation intervention (ReFT, Wu et al. 2024, https://arxiv.org/abs/2404.03592),
the inference-time attack E.T. immunises against (Cevallos-Moreno et al. 2026).

With the model frozen, a rank-r intervention on the residual stream entering block l,

    h <- h + R^T (W h - R h)          R, W in R^{r x d}  (NoReFT, no bias, R not orthogonalised)

is fitted by the engine (plain response CE) on the attacker's (harmful prompt, harmful answer) pairs
and installed at every position while scoring. W starts equal to R, so the intervention starts as
the identity (step 0 = the unattacked model, like every attack); R starts at N(0, 1/d). E.T.'s
attacker: rank 2, lr 4e-3, 20 prompts x 10 epochs, all positions of the block's input.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.latent import FrozenLM, draw_harmful, frozen_train_config, loss_info, optimise
from immunelm.config import Config, Seed
from immunelm.data import encode_example
from immunelm.engine import TrainConfig
from immunelm.models import ModelAdapter
from immunelm.models.depth import LayerChoice, resolve_layer
from immunelm.models.hooks import HookPoint

REFT_PAPER = "https://arxiv.org/abs/2404.03592"


class ReFTAttackConfig(Config):
    layer: LayerChoice = Field(0.5, description="Block l whose incoming residual stream is intervened on: index or depth fraction.")
    rank: int = Field(2, ge=1, le=4096, description="r, rank of the intervention (E.T.'s attacker: 2).")
    examples: int = Field(64, ge=1, le=100_000, description="Harmful (prompt, answer) pairs it is fitted on (E.T.: 20).")
    seed: Seed = Field(0, description="Which examples are drawn, and R's initialisation.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=4e-3, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; max_steps = budget (E.T.'s attacker: lr 4e-3, batch 10, 10 epochs).")

    @model_validator(mode="after")
    def _frozen(self) -> "ReFTAttackConfig":
        frozen_train_config(self.train)
        return self


class LowRankIntervention(nn.Module):
    """edit(h) = (h W^T - h R^T) R: what the intervention adds to h."""

    def __init__(self, hidden_size: int, rank: int, seed: int, device: Optional[torch.device] = None) -> None:
        super().__init__()
        start = torch.randn(rank, hidden_size, generator=torch.Generator().manual_seed(seed)) / hidden_size ** 0.5
        self.R = nn.Parameter(start.clone().to(device))
        self.W = nn.Parameter(start.clone().to(device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.to(self.R.dtype)
        return (h @ self.W.T - h @ self.R.T) @ self.R


class ReFTAttack(FrozenLM):
    def __init__(self, lm: nn.Module, point: HookPoint, rank: int, seed: int) -> None:
        super().__init__(lm)
        self.point = point
        self.intervention = LowRankIntervention(self.adapter.hidden_size, rank, seed, self.device)

    @contextmanager
    def installed(self) -> Iterator[None]:
        with self.adapter.add_to_outputs({self.point.name: self.intervention}):
            yield


@contextmanager
def grad_flags_kept(model: nn.Module) -> Iterator[None]:
    """FrozenLM freezes the model it wraps; a defence that fits an attack mid-training gets its
    requires_grad flags back afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


@register_attack("reft_intervention", ReFTAttackConfig, paper=REFT_PAPER, family="inference-time")
def reft_intervention(run: AttackRun, cfg: ReFTAttackConfig) -> AttackResult:
    rows = [encode_example(run.tokenizer, e) for e in draw_harmful(run, cfg.examples, cfg.seed)]
    layer = resolve_layer(cfg.layer, ModelAdapter(run.model).num_layers)
    module = ReFTAttack(run.model, ModelAdapter(run.model).point(layer, "resid_pre"), cfg.rank, cfg.seed)
    result = optimise(run, module, rows, cfg.train)
    info = {"hook_point": module.point.name, "layer": layer, "rank": cfg.rank, "examples": len(rows), **loss_info(result)}
    return AttackResult(result.evaluations, result.seconds, info)
