"""SOPHON: non-fine-tunable learning (Deng et al. 2024, https://arxiv.org/abs/2404.12699).

The MAML-style sibling of MLAC: fine-tuning simulation (FTS) on the restricted domain with a
*bounded* maximise-loss objective, plus normal training on the allowed domain:

    min_theta  alpha * mean_{i=0..K} L_restrict(theta_i)  +  beta * L_allowed(theta)

where theta_0 = theta and theta_{i+1} is one simulated fine-tuning step on harmful pairs.
L_restrict is evaluated on held-out harmful pairs and is bounded below, unlike MLAC's -CE:

* ``inverse_ce`` (paper's default for classification): -log(1 - p(y_t)) per response token,
  zero when the model gives the harmful token no probability;
* ``kl_uniform``: KL(U || p), zero when the output is uniform over the vocabulary.

The FTS gradient is first-order (taken at each theta_i). L_allowed is the alignment loss
(refusals + benign answers). Paper defaults are for image classifiers; the organism's are ours.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from immunelm.config import Config
from immunelm.data import IGNORE_INDEX, PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, register_defence, trained
from immunelm.defences.bilevel import (
    InnerAdversary, adapted_gradient, add_to_grads, harmful_split, response_logits, trainable,
)
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train


class SophonConfig(Config):
    inner_steps: int = Field(8, ge=1, description="K simulated fine-tuning steps per outer step.")
    adversary: InnerAdversary = Field(
        default_factory=lambda: InnerAdversary(optimizer="adamw", lr=1e-4), description="Simulated fine-tuner.")
    objective: Literal["inverse_ce", "kl_uniform"] = Field("inverse_ce", description="Restricted-domain loss.")
    alpha: float = Field(1.0, ge=0, description="Weight of the fine-tuning-simulation (restricted) loss.")
    beta: float = Field(1.0, ge=0, description="Weight of the allowed-domain (alignment) loss.")
    inner_batch_size: int = Field(16, ge=1, description="Harmful pairs per inner step.")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of D_harm held out for L_restrict.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=100, log_every=10),
        description="Outer-loop engine settings.")


def inverse_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(target)) over rows: 0 when the target gets no probability."""
    p = F.softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


def kl_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(U || p) = -log V - mean_v log p_v: 0 for a uniform output."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (-math.log(logits.shape[-1]) - logp.mean(-1)).mean()


def restricted_loss(model, batch: dict[str, torch.Tensor], objective: str) -> torch.Tensor:
    logits = response_logits(model, batch)
    if objective == "kl_uniform":
        return kl_from_uniform(logits)
    targets = batch["labels"][:, 1:]
    return inverse_cross_entropy(logits, targets[targets != IGNORE_INDEX])


class SophonStep:
    def __init__(self, cfg: SophonConfig, harmful: BatchStream, heldout: BatchStream) -> None:
        self.cfg, self.harmful, self.heldout = cfg, harmful, heldout

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["input_ids"].device
        model = ctx.accelerator.unwrap_model(ctx.model)
        params = trainable(model)
        heldout = self.heldout.next(device)
        weight = self.cfg.alpha / (self.cfg.inner_steps + 1)  # mean over theta_0 .. theta_K
        outer, inner = adapted_gradient(model, params, self.cfg.adversary, lambda i: self.harmful.next(device),
                                        self.cfg.inner_steps, lambda: restricted_loss(model, heldout, self.cfg.objective),
                                        lambda i: weight)
        allowed = causal_lm_loss(ctx.model, batch)
        ctx.backward(self.cfg.beta * allowed)
        add_to_grads(ctx, params, outer.total)
        return {"loss": allowed.detach(), "restricted": torch.tensor(sum(outer.losses) / len(outer.losses)),
                "inner_loss_last": torch.tensor(inner[-1])}


@register_defence("sophon", SophonConfig, paper="https://arxiv.org/abs/2404.12699")
def sophon(model, tokenizer, data: DefenceData, cfg: SophonConfig):
    harmful, heldout = harmful_split(tokenizer, data, cfg.inner_batch_size, cfg.heldout_fraction, cfg.train.seed)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                 step_fn=SophonStep(cfg, harmful, heldout), description="sophon"))
