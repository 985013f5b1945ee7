"""TAR: tamper-resistant safeguards (Tamirisa et al. 2024, https://arxiv.org/abs/2408.00761).

The LLM-scale bi-level defence. Per outer step:

1. sample an adversary from a configurable distribution (learning rate, optimiser, data source:
   harmful, or benign then harmful switching at 40% of the inner steps);
2. run K inner steps of it on the defender's harmful pairs (first-order: no graph kept);
3. every ``tr_every``-th inner step i, add the gradient of the tamper-resistance loss at the
   current adapted weights, L_TR = negative entropy of the output distribution on *held-out*
   harmful pairs, weighted ``exp(tr_weight_rate * (i - (K - 1)))`` (later steps count more);
   the sum is averaged over the accumulation points and scaled by lambda_TR;
4. restore the weights and add lambda_retain * retain loss at theta: MSE between every layer's
   hidden states and a frozen copy's (``retain=representation``) or plain LM loss (``lm``) on
   the alignment data (refusals + benign answers).

Minimising the negative entropy makes the attacked model's outputs on harmful data as
uncertain as possible throughout the attack, not only at its first step (MLAC's CE pathology).
Paper: 750 outer steps at lr 2e-5, K = 64 AdamW inner steps, adversary lr in {2e-6, 2e-5, 4e-5},
every 4th step weighted 4.0 * exp(0.0625 (i - (K-1))) where 4.0 is lambda_TR (applied once),
lambda_retain = 1. Organism defaults scale K, the outer steps and the learning rates (same
1 : 10 : 20 ratios around the organism's standard attack lr 1e-4).
"""

from __future__ import annotations

import math
import random
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat

from immunelm.config import Config
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, register_defence, trained
from immunelm.defences.bilevel import (
    InnerAdversary, adapted_gradient, add_to_grads, harmful_split, response_logits, trainable,
)
from immunelm.models.reference import OriginalModel, hidden_states
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train
from immunelm.models import ModelAdapter

Source = Literal["harmful", "benign-then-harmful"]


class AdversaryDistribution(Config):
    """The training adversaries A_train TAR samples from (one per outer step, uniformly)."""

    lrs: list[PositiveFloat] = Field(default_factory=lambda: [1e-5, 1e-4, 2e-4],
                             description="Inner learning rates (paper {2e-6, 2e-5, 4e-5} at 8B).")
    optimizers: list[Literal["adamw", "adam", "sgd"]] = Field(default_factory=lambda: ["adamw"], description="Inner optimisers (paper AdamW).")
    sources: list[Source] = Field(default_factory=lambda: ["harmful", "benign-then-harmful"], description="Inner data sources.")
    switch_at: float = Field(0.4, gt=0, lt=1, description="benign-then-harmful: fraction of inner steps on benign data.")


class TARConfig(Config):
    inner_steps: int = Field(16, ge=1, description="K inner adversary steps (paper 64).")
    adversaries: AdversaryDistribution = Field(default_factory=AdversaryDistribution)
    tr_every: int = Field(4, ge=1, description="Accumulate the tamper-resistance gradient every N inner steps (paper 4).")
    tr_weight_rate: float = Field(0.0625, ge=0, description="Weight exp(rate * (i - (K-1))) of inner step i (paper 0.0625).")
    lambda_tr: float = Field(4.0, ge=0, description="Tamper-resistance weight (paper 4).")
    lambda_retain: float = Field(1.0, ge=0, description="Retain weight (paper 1).")
    retain: Literal["representation", "lm"] = Field("representation", description="Hidden-state MSE to a frozen copy, or LM loss.")
    inner_batch_size: int = Field(16, ge=1, description="Pairs per inner step.")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of D_harm held out for L_TR.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=100, log_every=10),
        description="Outer-loop engine settings (paper: 750 steps, lr 2e-5).")


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum_v p log p (minimised: outputs as uncertain as possible)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (logp.exp() * logp).sum(-1).mean()


def tr_weight(i: int, steps: int, rate: float) -> float:
    return math.exp(rate * (i - (steps - 1)))


def sample_adversary(rng: random.Random, dist: AdversaryDistribution) -> tuple[InnerAdversary, Source]:
    optimizer = rng.choice(dist.optimizers)
    adversary = InnerAdversary(optimizer=optimizer, lr=rng.choice(dist.lrs), momentum=0.9 if optimizer == "sgd" else 0.0)
    return adversary, rng.choice(dist.sources)


class TARStep:
    def __init__(self, cfg: TARConfig, harmful: BatchStream, heldout: BatchStream, benign: BatchStream | None,
                 original: OriginalModel | None) -> None:
        self.cfg, self.harmful, self.heldout, self.benign, self.original = cfg, harmful, heldout, benign, original
        self.rng = random.Random(cfg.train.seed)
        self.adapter: ModelAdapter | None = None

    def _inner_batch(self, source: Source, device):
        switch = round(self.cfg.adversaries.switch_at * self.cfg.inner_steps)
        return lambda i: (self.benign if source == "benign-then-harmful" and i < switch else self.harmful).next(device)

    def _weight(self, i: int) -> float | None:
        if i < 0 or (i + 1) % self.cfg.tr_every:
            return None
        points = self.cfg.inner_steps // self.cfg.tr_every
        return self.cfg.lambda_tr * tr_weight(i, self.cfg.inner_steps, self.cfg.tr_weight_rate) / max(1, points)

    def _retain(self, ctx: StepContext, model, batch) -> torch.Tensor:
        if self.original is None:
            return causal_lm_loss(ctx.model, batch)
        layers = list(range(self.adapter.num_layers))
        ours = hidden_states(ctx.model, self.adapter, batch, layers)
        theirs = self.original.hidden_states(model, batch, layers)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return sum(((a.float() - b.float()).pow(2) * mask).sum() / (mask.sum() * a.shape[-1]) for a, b in zip(ours, theirs)) / len(layers)

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["input_ids"].device
        model = ctx.accelerator.unwrap_model(ctx.model)
        self.adapter = self.adapter or ModelAdapter(model)
        params = trainable(model)
        adversary, source = sample_adversary(self.rng, self.cfg.adversaries)
        heldout = self.heldout.next(device)
        outer, inner = adapted_gradient(model, params, adversary, self._inner_batch(source, device), self.cfg.inner_steps,
                                        lambda: negative_entropy(response_logits(model, heldout)), self._weight)
        retain = self._retain(ctx, model, batch)
        ctx.backward(self.cfg.lambda_retain * retain)
        add_to_grads(ctx, params, outer.total)
        return {"loss": retain.detach(), "tr_neg_entropy": torch.tensor(sum(outer.losses) / max(1, len(outer.losses))),
                "inner_loss_last": torch.tensor(inner[-1]), "adversary_lr": torch.tensor(adversary.lr)}


@register_defence("tar", TARConfig, paper="https://arxiv.org/abs/2408.00761")
def tar(model, tokenizer, data: DefenceData, cfg: TARConfig):
    harmful, heldout = harmful_split(tokenizer, data, cfg.inner_batch_size, cfg.heldout_fraction, cfg.train.seed)
    benign = None
    if "benign-then-harmful" in cfg.adversaries.sources:  # BatchStream names data.benign if it is empty
        benign = BatchStream([encode_example(tokenizer, e) for e in data.benign], PaddingCollator.for_tokenizer(tokenizer),
                             cfg.inner_batch_size, cfg.train.seed + 2, what="benign")
    original = OriginalModel(model, lora=cfg.train.lora is not None) if cfg.retain == "representation" else None
    step = TARStep(cfg, harmful, heldout, benign, original)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                 step_fn=step, description="tar"))
