"""Vaccine: perturbation-aware alignment (Huang et al. 2024, https://arxiv.org/abs/2402.01109).

Harmful fine-tuning works by drifting the hidden embeddings the aligned model relies on.
Vaccine aligns under the worst-case bounded drift: per step,

1. pass 1: loss on the alignment batch; g_l = d loss / d e_l for each layer output e_l;
2. eps_l = rho * g_l / ||(g_1, ..., g_L)||_2 (ONE norm over all layers, batch and positions):
   the first-order worst perturbation of total size rho;
3. pass 2: add eps_l to the layer outputs via forward hooks, back-propagate the loss into
   the weights (pass 1 contributes no weight gradient).

``perturb="block"`` perturbs each decoder block's output (the paper's e_l); the official code
perturbs the attention module's output (``perturb="attn"``). rho: paper README 2, Booster's
script 5. The paper aligns from the pre-aligned model with LoRA at lr 1e-3; by default we
continue from the SFT-aligned organism with full weights at the organism's alignment lr.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, NonNegativeInt

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import DefenceData, alignment_rows, register_defence, trained
from immunelm.engine import StepContext, TrainConfig, response_token_loss, train
from immunelm.models import ModelAdapter

KIND = {"block": "resid_post", "attn": "attn_out"}


class VaccineConfig(Config):
    rho: float = Field(2.0, gt=0, description="Perturbation size (paper README 2; Booster's script 5).")
    perturb: Literal["block", "attn"] = Field("block", description="block = paper's layer outputs; attn = official code.")
    layers: Optional[list[NonNegativeInt]] = Field(None, description="Layers perturbed (None = all).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (paper: LoRA, lr 1e-3, on a 7B model).")


def vaccine_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """eps_l = rho * g_l / ||(g_1..g_L)||: total norm rho, each along its layer's gradient."""
    norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
    return [(rho * g / (norm + 1e-12)).detach() for g in grads]


class VaccineStep:
    def __init__(self, cfg: VaccineConfig) -> None:
        self.cfg = cfg
        self.adapter: ModelAdapter | None = None

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        adapter = self.adapter = self.adapter or ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
        layers = self.cfg.layers if self.cfg.layers is not None else list(range(adapter.num_layers))
        kind = KIND[self.cfg.perturb]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with adapter.read_outputs(layers, kind) as hidden:
            clean = response_token_loss(ctx.model(**inputs).logits, batch["labels"])
        grads = torch.autograd.grad(clean, [hidden[layer] for layer in layers])
        eps = vaccine_perturbation(list(grads), self.cfg.rho)
        with adapter.add_to_outputs(dict(zip(layers, eps)), kind):
            perturbed = response_token_loss(ctx.model(**inputs).logits, batch["labels"])
        ctx.backward(perturbed)
        return {"loss": perturbed.detach(), "clean_loss": clean.detach()}


@register_defence("vaccine", VaccineConfig, paper="https://arxiv.org/abs/2402.01109")
def vaccine(model, tokenizer, data: DefenceData, cfg: VaccineConfig):
    result = train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                   step_fn=VaccineStep(cfg), description="vaccine")
    return trained(result)
