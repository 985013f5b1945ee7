"""Condition-number immunisation (Zheng et al. 2025, https://arxiv.org/abs/2505.23760).

Make the harmful task's linear-probe Hessian ill-conditioned (slow for gradient descent) and the
benign one well-conditioned, with two regularisers on feature Grams S = Phi^T Phi (Phi = the last
hidden states the LM head reads; see :mod:`immunelm.diagnostics.conditioning`), sigma = the
singular values of S, k = its size:

    R_well(S) = sigma_max^2 / 2 - ||S||_F^2 / (2k)          (Nenov et al. 2024; min -> kappa down)
    R_ill(S)  = 1 / (||S||_F^2 / (2k) - sigma_min^2 / 2)     (min -> kappa up)
    L = L_align + lambda_ill * R_ill(S_harm) + lambda_well * R_well(S_benign)

The paper proves one gradient step of each moves kappa monotonically for linear feature
extractors (tested on random matrices in the test suite); whether it transfers to a language
model is an open question the seeds raise, measured on the organism in ``docs/defences.md``.
S is divided by its row count (kappa is unchanged; the weights' scale then does not depend on
the batch). Paper (ResNet-18): lambda_well 5e-5, lambda_ill 2e6, lr 1e-5; the scale depends on
the features, so the organism's defaults were set so both terms start near the CE's size.
"""

from __future__ import annotations

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.diagnostics.conditioning import feature_gram, probe_features, singular_values
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train


class ConditionNumberConfig(Config):
    lambda_ill: float = Field(10.0, ge=0, description="Weight of R_ill on the harmful Gram (paper 2e6 on ResNet features).")
    lambda_well: float = Field(1e-4, ge=0, description="Weight of R_well on the benign Gram (paper 5e-5 on ResNet features).")
    aux_batch_size: int = Field(64, ge=1, description="Harmful and benign pairs per step for the two Grams (rows must exceed the hidden size, or kappa is infinite).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (paper: lr 1e-5, 3 epochs).")


def r_well(gram: torch.Tensor) -> torch.Tensor:
    sigma = singular_values(gram)
    return sigma[-1].pow(2) / 2 - sigma.pow(2).sum() / (2 * sigma.numel())


def r_ill(gram: torch.Tensor) -> torch.Tensor:
    sigma = singular_values(gram)
    return 1 / (sigma.pow(2).sum() / (2 * sigma.numel()) - sigma[0].pow(2) / 2)


class ConditionNumberStep:
    def __init__(self, cfg: ConditionNumberConfig, harmful: BatchStream, benign: BatchStream) -> None:
        self.cfg, self.harmful, self.benign = cfg, harmful, benign

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["input_ids"].device
        align = causal_lm_loss(ctx.model, batch)
        ill = r_ill(feature_gram(probe_features(ctx.model, self.harmful.next(device))))
        well = r_well(feature_gram(probe_features(ctx.model, self.benign.next(device))))
        loss = align + self.cfg.lambda_ill * ill + self.cfg.lambda_well * well
        ctx.backward(loss)
        return {"loss": loss.detach(), "align": align.detach(), "r_ill": ill.detach(), "r_well": well.detach()}


@register_defence("condition-number", ConditionNumberConfig, paper="https://arxiv.org/abs/2505.23760")
def condition_number(model, tokenizer, data: DefenceData, cfg: ConditionNumberConfig):
    seed, size = cfg.train.seed, cfg.aux_batch_size
    benign = BatchStream([encode_example(tokenizer, e) for e in data.benign], PaddingCollator.for_tokenizer(tokenizer),
                         size, seed + 2, what="benign")
    step = ConditionNumberStep(cfg, harmful_stream(tokenizer, data, size, seed), benign)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                 step_fn=step, description="condition-number"))
