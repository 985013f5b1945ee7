"""MLAC: meta-learned adversarial censoring (Henderson et al. 2022, https://arxiv.org/abs/2211.14946).

Learn weights that are a bad starting point for the harmful task: per outer step an inner loop
simulates K steps of the harmful adversary, theta' = Adversary_K(theta; D_harm), and the outer
step maximises the adversary's loss *after* adaptation while keeping the desirable task:

    min_theta   task_weight * L_d(theta)  -  adversary_weight * L_h(theta'(theta); held-out D_harm)

L_d is the alignment loss (refusals + benign answers); L_h is harmful cross-entropy on harmful
pairs the inner adversary never trains on. The gradient of L_h(theta') w.r.t. theta is
first-order by default (taken at theta', FO-MAML); ``second_order=true`` differentiates through
the K inner steps exactly with ``torch.func`` (plain SGD inner steps only; memory grows with K,
so use it on small models). Paper: K = 16 inner steps were enough.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, register_defence, trained
from immunelm.defences.bilevel import InnerAdversary, adapted_gradient, add_to_grads, harmful_split, trainable
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, response_token_loss, train


class MLACConfig(Config):
    inner_steps: int = Field(16, ge=1, description="K simulated adversary steps per outer step (paper: 16 enough).")
    adversary: InnerAdversary = Field(
        default_factory=lambda: InnerAdversary(optimizer="adamw", lr=1e-4),
        description="The simulated attacker (default: the organism's standard AdamW 1e-4 attack).")
    adversary_weight: float = Field(1.0, ge=0, description="Weight of the maximised post-adaptation harmful loss.")
    task_weight: float = Field(1.0, ge=0, description="Weight of the desirable-task (alignment) loss, the penalty.")
    second_order: bool = Field(False, description="Exact gradient through the inner loop (torch.func; SGD inner steps).")
    inner_batch_size: int = Field(16, ge=1, description="Harmful pairs per inner step.")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of D_harm kept for the outer loss.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=100, log_every=10),
        description="Outer-loop engine settings (outer steps, lr, optimiser).")

    @model_validator(mode="after")
    def _exact_needs_sgd(self) -> "MLACConfig":
        if self.second_order and (self.adversary.optimizer != "sgd" or self.adversary.momentum):
            raise ValueError("second_order=true needs adversary.optimizer=sgd with momentum 0 "
                             "(the exact gradient is taken through plain SGD steps)")
        return self


def _functional_loss(model, weights: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = functional_call(model, weights, args=(), kwargs={
        "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}).logits
    return response_token_loss(logits, batch["labels"])


def second_order_adversary_loss(model, lr: float, batches: list[dict], heldout: dict) -> torch.Tensor:
    """L_h(theta_K) where theta_{i+1} = theta_i - lr * grad L_h(theta_i), differentiable in theta."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, fast = [n for n, _ in named], [p for _, p in named]
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
        for batch in batches:
            grads = torch.autograd.grad(_functional_loss(model, dict(zip(names, fast)), batch), fast, create_graph=True)
            fast = [w - lr * g for w, g in zip(fast, grads)]
        return _functional_loss(model, dict(zip(names, fast)), heldout)


def adversary_loss_gradient(model, cfg: MLACConfig, batches: list[dict], heldout: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(L_h after K adversary steps, its gradient w.r.t. the trainable weights): first-order
    (taken at theta') or exact (through the inner steps), per ``cfg.second_order``."""
    params = trainable(model)
    if cfg.second_order:
        loss = second_order_adversary_loss(model, cfg.adversary.lr, batches, heldout)
        return loss.detach(), list(torch.autograd.grad(loss, params))
    last = len(batches) - 1
    outer, _ = adapted_gradient(model, params, cfg.adversary, lambda i: batches[i], len(batches),
                                lambda: causal_lm_loss(model, heldout), lambda i: 1.0 if i == last else None)
    return torch.tensor(outer.losses[-1]), outer.total


class MLACStep:
    def __init__(self, cfg: MLACConfig, harmful: BatchStream, heldout: BatchStream) -> None:
        self.cfg, self.harmful, self.heldout = cfg, harmful, heldout

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["input_ids"].device
        model = ctx.accelerator.unwrap_model(ctx.model)
        inner = [self.harmful.next(device) for _ in range(self.cfg.inner_steps)]
        adapted_loss, grads = adversary_loss_gradient(model, self.cfg, inner, self.heldout.next(device))
        task = causal_lm_loss(ctx.model, batch)
        ctx.backward(self.cfg.task_weight * task)
        add_to_grads(ctx, trainable(ctx.model), [-self.cfg.adversary_weight * g for g in grads])
        return {"loss": task.detach(), "adapted_harmful_loss": adapted_loss}


@register_defence("mlac", MLACConfig, paper="https://arxiv.org/abs/2211.14946")
def mlac(model, tokenizer, data: DefenceData, cfg: MLACConfig):
    harmful, heldout = harmful_split(tokenizer, data, cfg.inner_batch_size, cfg.heldout_fraction, cfg.train.seed)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                 step_fn=MLACStep(cfg, harmful, heldout), description="mlac"))
