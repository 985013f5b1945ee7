"""SEAM: self-destructive language model (Wang et al. 2025, https://arxiv.org/abs/2505.12186).

Make harmful fine-tuning self-destructive: align so that the gradient of the harmful loss points
*against* the gradient of benign tasks, so that every harmful step also climbs the benign loss.
The update is

    grad = grad L_ul + alpha * grad L_up + beta * grad L_sd

* L_ul = -log(mean over layers of the harmful CE read out from each block (logit lens) + 1), the
  RepNoise-style unlearning term on (harmful prompt, harmful answer);
* L_up = CE of the refusals (the official code), or of D_align = refusals + benign pairs
  (``up_data=align``, the default here: on the organism refusal-only training made the model refuse
  benign requests too, benign accuracy 0.00 after 300 steps at lr 2e-5 and 1.5e-4, recorded in
  benchmarks/results/defence_probe_family3-defaults.json and defence_eval_quick_family3-sanity.json);
* L_sd = cos(g_a, g_b), g_a = grad CE(harmful batch), g_b = grad CE(benign batch), both over all
  trainable weights. Its gradient is H_a (g^_b - c g^_a) / ||g_a|| + H_b (g^_a - c g^_b) / ||g_b||
  (c = cos, g^ = unit vectors, H the Hessians), estimated Hessian-free by forward differences as
  the official code does: H_a v ~ (g_a(theta + eps v) - g_a(theta)) / eps, one extra gradient
  per product (6 gradient evaluations per step in all).

Defaults alpha 1, beta 0.01, eps 1e-3 (official config; lr 2e-5 and no gradient clipping on 7B
models). The official code restricts the harmful CEs to the answer tokens that differ from the
refusal; here the harmful answers and refusals are separate pairs, so the whole answer counts.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.defences.bilevel import add_to_grads, trainable, weights_restored
from immunelm.defences.repnoise import layer_ce
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train
from immunelm.models import ModelAdapter

SEAM_PAPER = "https://arxiv.org/abs/2505.12186"


class SEAMConfig(Config):
    alpha: float = Field(1.0, ge=0, description="Weight of the refusal CE L_up (official config 1).")
    beta: float = Field(0.01, ge=0, description="Weight of the self-destructive term cos(g_harm, g_benign) (official 0.01).")
    eps: float = Field(1e-3, gt=0, description="Finite-difference step of the Hessian-vector products (official 1e-3).")
    aux_batch_size: int = Field(16, ge=1, description="Harmful and benign pairs per step (official 4).")
    up_data: Literal["align", "refusals"] = Field(
        "align", description="L_up's data: refusals + benign (align, ours) or refusals only (official code).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=16, max_steps=300, log_every=25),
        description="Engine settings; its batches are L_up's data (official: lr 2e-5, 1 epoch on 7B).")


def flat_norm(vectors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(v.float().pow(2).sum() for v in vectors))


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.float() * y.float()).sum() for x, y in zip(a, b)) / (flat_norm(a) * flat_norm(b) + 1e-12)


def gradient_at(params: list[torch.nn.Parameter], loss_fn, shift: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """grad loss_fn() at theta (+ shift), weights and .grad restored afterwards."""
    with weights_restored(params):
        if shift is not None:
            with torch.no_grad():
                for p, s in zip(params, shift):
                    p.add_(s)
        return list(torch.autograd.grad(loss_fn(), params))


def self_destructive_gradient(params: list[torch.nn.Parameter], harmful_loss, benign_loss, eps: float
                              ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(finite-difference estimate of grad cos(g_a, g_b), the cosine) with g_a = grad harmful_loss(),
    g_b = grad benign_loss(); four gradient evaluations."""
    g_a, g_b = gradient_at(params, harmful_loss), gradient_at(params, benign_loss)
    norm_a, norm_b = flat_norm(g_a), flat_norm(g_b)
    c = cosine(g_a, g_b)
    unit_a = [g / (norm_a + 1e-12) for g in g_a]
    unit_b = [g / (norm_b + 1e-12) for g in g_b]
    shift_a = [eps * (ub - c * ua) for ua, ub in zip(unit_a, unit_b)]  # the direction H_a is applied to
    shift_b = [eps * (ua - c * ub) for ua, ub in zip(unit_a, unit_b)]
    g_a_shifted, g_b_shifted = gradient_at(params, harmful_loss, shift_a), gradient_at(params, benign_loss, shift_b)
    estimate = [(ap - a) / (eps * norm_a) + (bp - b) / (eps * norm_b)
                for a, ap, b, bp in zip(g_a, g_a_shifted, g_b, g_b_shifted)]
    return estimate, c.detach()


class SEAMStep:
    def __init__(self, cfg: SEAMConfig, harmful: BatchStream, benign: BatchStream) -> None:
        self.cfg, self.harmful, self.benign = cfg, harmful, benign
        self.adapter: ModelAdapter | None = None

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        adapter = self.adapter = self.adapter or ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
        device = batch["input_ids"].device
        harm, benign = self.harmful.next(device), self.benign.next(device)
        params = trainable(ctx.model)
        estimate, cos = self_destructive_gradient(params, lambda: causal_lm_loss(ctx.model, harm),
                                                  lambda: causal_lm_loss(ctx.model, benign), self.cfg.eps)
        with adapter.read_outputs(None) as hidden:
            ctx.model(input_ids=harm["input_ids"], attention_mask=harm["attention_mask"])
        harmful_ce = layer_ce(adapter, hidden, harm["labels"])
        unlearn = -torch.log(harmful_ce + 1)
        refusal = causal_lm_loss(ctx.model, batch)
        ctx.backward(unlearn + self.cfg.alpha * refusal)
        add_to_grads(ctx, params, [self.cfg.beta * g for g in estimate])
        return {"loss": (unlearn + self.cfg.alpha * refusal + self.cfg.beta * cos).detach(), "unlearn": unlearn.detach(),
                "refusal": refusal.detach(), "grad_cosine": cos, "harmful_ce": harmful_ce.detach()}


@register_defence("seam", SEAMConfig, paper=SEAM_PAPER)
def seam(model, tokenizer, data: DefenceData, cfg: SEAMConfig):
    seed, size = cfg.train.seed, cfg.aux_batch_size
    benign = BatchStream([encode_example(tokenizer, e) for e in data.benign], PaddingCollator.for_tokenizer(tokenizer),
                         size, seed + 2, what="benign")
    step = SEAMStep(cfg, harmful_stream(tokenizer, data, size, seed), benign)
    rows = alignment_rows(tokenizer, data) if cfg.up_data == "align" else [encode_example(tokenizer, e) for e in data.refusals]
    return trained(train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), step_fn=step, description="seam"))
