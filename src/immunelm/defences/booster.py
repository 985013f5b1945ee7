"""Booster: attenuating harmful perturbation (Huang et al. 2024, https://arxiv.org/abs/2409.01586).

Alignment with a regulariser that makes one simulated harmful step lower the harmful loss as
little as possible. Per step, three gradient evaluations:

    g_h  = grad h(w)                    harmful loss h on (harmful prompt, harmful answer)
    w'   = w - alpha * g_h / ||g_h||    one normalised simulated harmful step
    g_h' = grad h(w')
    g_a  = grad f(w)                    alignment loss f
    update direction = g_a + lambda * (g_h - g_h')

(g_h - g_h' is the gradient of h(w) - h(w'), the harmful-loss reduction rate, taken first-order
as in the paper.) Defaults lambda = 5, alpha = 0.1 (paper; its GSM8K tables used lambda = 25).
Under several processes the extra term is averaged across processes like DDP gradients.
"""

from __future__ import annotations

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.defences.bilevel import add_to_grads, after_normalised_step, trainable
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train


class BoosterConfig(Config):
    lam: float = Field(5.0, ge=0, description="lambda, weight of the attenuation term (paper 5; GSM8K 25).")
    alpha: float = Field(0.1, gt=0, description="Step size of the simulated harmful step (paper 0.1).")
    harmful_batch_size: int = Field(32, ge=1, description="Harmful examples per step for h.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings.")


def attenuation(g_h: list[torch.Tensor], g_h_shifted: list[torch.Tensor], lam: float) -> list[torch.Tensor]:
    """lambda * (g_h - g_h'): the gradient of lambda * (h(w) - h(w'))."""
    return [lam * (a - b) for a, b in zip(g_h, g_h_shifted)]


class BoosterStep:
    def __init__(self, cfg: BoosterConfig, harmful: BatchStream) -> None:
        self.cfg, self.harmful = cfg, harmful

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = trainable(ctx.model)
        harmful = self.harmful.next(batch["input_ids"].device)
        h = causal_lm_loss(ctx.model, harmful)
        g_h = torch.autograd.grad(h, params)
        with after_normalised_step(params, list(g_h), self.cfg.alpha):
            h_shifted = causal_lm_loss(ctx.model, harmful)
            g_h_shifted = torch.autograd.grad(h_shifted, params)
        f = causal_lm_loss(ctx.model, batch)
        ctx.backward(f)
        add_to_grads(ctx, params, attenuation(list(g_h), list(g_h_shifted), self.cfg.lam))
        return {"loss": f.detach(), "harmful_loss": h.detach(), "harmful_reduction": (h - h_shifted).detach()}


@register_defence("booster", BoosterConfig, paper="https://arxiv.org/abs/2409.01586")
def booster(model, tokenizer, data: DefenceData, cfg: BoosterConfig):
    step = BoosterStep(cfg, harmful_stream(tokenizer, data, cfg.harmful_batch_size, cfg.train.seed))
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer), step_fn=step, description="booster"))
