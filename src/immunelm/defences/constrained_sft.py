"""Token-wise constrained SFT (Qi et al. 2024, https://arxiv.org/abs/2406.05946, Sec. 4).

Objective per response token t (y_t, prefix x, y_<t):
    L = -sum_t (2 / beta_t) log sigmoid(beta_t * (log p_theta(y_t) - log p_ref(y_t)))
whose gradient is w_t * grad(-log p_theta(y_t)) with
    w_t = 2 * (1 - sigmoid(beta_t * (log p_theta - log p_ref)))   (stop-gradient),
so a token whose probability already rose above the reference's stops being pushed. A large
beta_t makes that fall-off sharp (a tight constraint): the paper constrains positions 2-5 most
(beta 2.0), the first token less (0.5) and later tokens barely (0.1). We implement the
weighted-CE form ``-sum_t w_t log p(y_t)`` with w_t clamped >= ``min_weight`` (1e-3).

Where it protects: constrained SFT is an objective for *the fine-tuning itself* (a provider
fine-tuning on a customer's data). As an ``immunise`` step it trains the defender's safety data
(refusals + recovery examples + utility) with the constraint relative to the starting model;
an adversary running plain SFT is not bound by it, which the evaluation will show.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import IGNORE_INDEX, PaddingCollator
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.defences.deep_align import DeepAlignConfig, augmented_rows
from immunelm.engine import StepContext, TrainConfig, label_logprobs, train


class ConstrainedSFTConfig(Config):
    beta_first: float = Field(0.5, gt=0, description="beta_1 (paper 0.5).")
    beta_early: float = Field(2.0, gt=0, description="beta_2..beta_5 (paper 2.0).")
    beta_late: float = Field(0.1, gt=0, description="beta_t for t > 5 (paper 0.1).")
    early_until: int = Field(5, ge=1, description="Last position using beta_early.")
    min_weight: float = Field(1e-3, ge=0, description="Lower clamp of w_t.")
    data: DeepAlignConfig = Field(default_factory=DeepAlignConfig, description="Safety data recipe (recovery augmentation).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings.")


def position_betas(labels: torch.Tensor, cfg: ConstrainedSFTConfig) -> torch.Tensor:
    """beta for each (shifted) label position: response positions counted from 1."""
    mask = labels != IGNORE_INDEX
    position = mask.long().cumsum(dim=1)  # 1 at the first response token
    beta = torch.full(labels.shape, cfg.beta_late, dtype=torch.float32, device=labels.device)
    beta[position <= cfg.early_until] = cfg.beta_early
    beta[position == 1] = cfg.beta_first
    return beta


def token_weights(logp: torch.Tensor, logp_ref: torch.Tensor, beta: torch.Tensor, min_weight: float) -> torch.Tensor:
    """w_t = stopgrad(2 (1 - sigmoid(beta_t (log p_theta - log p_ref)))), clamped below."""
    return (2 * (1 - torch.sigmoid(beta * (logp - logp_ref)))).clamp(min=min_weight).detach()


class ConstrainedStep:
    """Weighted cross-entropy against a frozen reference copy of the starting model."""

    def __init__(self, reference: torch.nn.Module, cfg: ConstrainedSFTConfig) -> None:
        self.reference = reference.eval().requires_grad_(False)
        self.cfg = cfg

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logp, mask = label_logprobs(ctx.model(**inputs).logits, batch["labels"])
        with torch.no_grad():
            logp_ref, _ = label_logprobs(self.reference(**inputs).logits, batch["labels"])
        beta = position_betas(batch["labels"], self.cfg)[:, 1:]
        weights = token_weights(logp, logp_ref, beta, self.cfg.min_weight)
        loss = -(weights * logp * mask).sum() / mask.sum().clamp(min=1)
        ctx.backward(loss)
        return {"loss": loss.detach(), "mean_weight": (weights * mask).sum().detach() / mask.sum().clamp(min=1)}


@register_defence("constrained-sft", ConstrainedSFTConfig, paper="https://arxiv.org/abs/2406.05946")
def constrained_sft(model, tokenizer, data: DefenceData, cfg: ConstrainedSFTConfig):
    reference = copy.deepcopy(model)
    rows = augmented_rows(tokenizer, data, cfg.data)
    result = train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), step_fn=ConstrainedStep(reference, cfg),
                   description="constrained-sft")
    return trained(result)
