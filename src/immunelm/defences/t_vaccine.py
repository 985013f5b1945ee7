"""T-Vaccine: targeted layer-wise Vaccine (Liu et al. 2025, https://arxiv.org/abs/2410.09760).

Vaccine perturbs and trains every layer, which costs memory. T-Vaccine perturbs and trains only
the layers that matter for safety:

* layer scores s_l = ||grad_{e_l} L(harmful batch)||, probabilities p_l = s_l / sum_k s_k,
  recomputed every K steps (paper 200);
* every J steps (paper 20) sample gamma layers by p_l without replacement (paper gamma = 8 of
  32 layers; default here: a quarter of the depth);
* only the sampled layers are trainable (the rest get no gradient, saving optimiser work and
  activation-gradient memory) and only they are perturbed, with Vaccine's closed form
  (rho ~ 3 in the paper).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.defences.vaccine import KIND, vaccine_perturbation
from immunelm.engine import StepContext, TrainConfig, response_token_loss, train
from immunelm.models import ModelAdapter


class TVaccineConfig(Config):
    rho: float = Field(3.0, gt=0, description="Perturbation size (paper ~3).")
    gamma: Optional[int] = Field(None, ge=1, description="Layers sampled (paper 8 of 32; None = a quarter of the depth).")
    resample_every: int = Field(20, ge=1, description="J: steps between layer samples (paper 20).")
    rescore_every: int = Field(200, ge=1, description="K: steps between layer-score refreshes (paper 200).")
    perturb: Literal["block", "attn"] = Field("block", description="Perturbed output, as in Vaccine.")
    harmful_batch_size: int = Field(32, ge=1, description="Harmful pairs used for the layer scores.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (paper: lr 1e-3 with LoRA on 7B models).")


def layer_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """p_l = s_l / sum s (uniform if every score is zero)."""
    total = scores.sum()
    return scores / total if total > 0 else torch.full_like(scores, 1 / len(scores))


class TVaccineStep:
    def __init__(self, cfg: TVaccineConfig, harmful: BatchStream, seed: int) -> None:
        self.cfg, self.harmful = cfg, harmful
        self.rng = torch.Generator().manual_seed(seed)
        self.adapter: ModelAdapter | None = None
        self.probs: torch.Tensor | None = None
        self.chosen: list[int] = []

    def scores(self, ctx: StepContext) -> torch.Tensor:
        """s_l from the harmful batch (no weight gradients are accumulated).

        Every layer must be in the graph for its output gradient to exist, so all blocks are made
        trainable for this pass; :meth:`_select` re-applies the sampled subset right after."""
        self._set_trainable(range(self.adapter.num_layers))
        harm = self.harmful.next(next(ctx.model.parameters()).device)
        layers = list(range(self.adapter.num_layers))
        with self.adapter.read_outputs(layers, KIND[self.cfg.perturb]) as hidden:
            loss = response_token_loss(ctx.model(input_ids=harm["input_ids"], attention_mask=harm["attention_mask"]).logits,
                                       harm["labels"])
        grads = torch.autograd.grad(loss, [hidden[layer] for layer in layers])
        return torch.stack([g.float().norm() for g in grads]).detach().cpu()

    def _select(self, ctx: StepContext) -> None:
        if self.probs is None or ctx.step % self.cfg.rescore_every == 0:
            self.probs = layer_probabilities(self.scores(ctx))
        if not self.chosen or ctx.step % self.cfg.resample_every == 0:
            gamma = min(self.adapter.num_layers, self.cfg.gamma or max(1, self.adapter.num_layers // 4))
            self.chosen = sorted(torch.multinomial(self.probs, gamma, replacement=False, generator=self.rng).tolist())
        self._set_trainable(self.chosen)

    def _set_trainable(self, layers) -> None:
        layers = set(layers)
        for i, block in enumerate(self.adapter.blocks):
            for name, param in block.named_parameters():
                if self.lora_only and "lora_" not in name:
                    continue  # frozen base weights stay frozen under LoRA
                param.requires_grad_(i in layers)

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.adapter is None:
            self.adapter = ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
            self.lora_only = any("lora_" in n for n, _ in ctx.model.named_parameters())
        self._select(ctx)
        kind = KIND[self.cfg.perturb]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with self.adapter.read_outputs(self.chosen, kind) as hidden:
            clean = response_token_loss(ctx.model(**inputs).logits, batch["labels"])
        eps = vaccine_perturbation(list(torch.autograd.grad(clean, [hidden[i] for i in self.chosen])), self.cfg.rho)
        with self.adapter.add_to_outputs(dict(zip(self.chosen, eps)), kind):
            perturbed = response_token_loss(ctx.model(**inputs).logits, batch["labels"])
        ctx.backward(perturbed)
        return {"loss": perturbed.detach(), "clean_loss": clean.detach()}


def freeze_outside_blocks(model) -> None:
    """T-Vaccine trains decoder layers only: embeddings, final norm and head stay fixed."""
    adapter = ModelAdapter(model)
    block_params = {id(p) for block in adapter.blocks for p in block.parameters()}
    for p in model.parameters():
        if id(p) not in block_params:
            p.requires_grad_(False)


@register_defence("t-vaccine", TVaccineConfig, paper="https://arxiv.org/abs/2410.09760")
def t_vaccine(model, tokenizer, data: DefenceData, cfg: TVaccineConfig):
    harmful = harmful_stream(tokenizer, data, cfg.harmful_batch_size, cfg.train.seed)
    if not cfg.train.lora:
        freeze_outside_blocks(model)
    step = TVaccineStep(cfg, harmful, cfg.train.seed)
    result = train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer), step_fn=step, description="t-vaccine")
    if not cfg.train.lora:
        result.model.requires_grad_(True)  # hand back an ordinary, fully trainable model
    return trained(result)
