"""LAPT: latent-perturbation adversarial training (Gu et al. 2025; the ASA/LAPT pair).

The activation-steering attack (ASA) adds Gaussian noise, normalised to the statistics of the
activation it is added to, at one layer; fragile layers are those where it unlocks harmful
output. LAPT trains the safe behaviour *under* such perturbations:

1. for each step pick one of the fragile ``layers`` (seeded), draw z ~ N(0, I) per token,
   standardise it and rescale it to the hidden state's own per-token mean and std
   (delta = mu_h + sigma_h * (z - mean z) / std z), and add ``scale * delta`` there;
2. train cross-entropy toward the safe responses (refusals + benign answers);
3. interpolate the weights back toward the starting model:
   theta = theta_0 + ``keep`` * (theta_trained - theta_0), trading robustness for utility.

``keep`` (0.5) and ``scale`` (1.0) are our defaults; the layers default to the middle of the
network, where steering is known to be most effective.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, NonNegativeInt

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import DefenceData, alignment_rows, register_defence, trained
from immunelm.engine import StepContext, TrainConfig, response_token_loss, train
from immunelm.models import ModelAdapter


class LAPTConfig(Config):
    layers: Optional[list[NonNegativeInt]] = Field(None, description="Fragile layers (None: the middle half of the network).")
    scale: float = Field(1.0, ge=0, description="Multiplier of the statistics-normalised noise.")
    keep: float = Field(0.5, ge=0, le=1, description="Interpolation: 0 = original weights, 1 = trained weights.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings.")


def normalised_noise(hidden: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise with, per token, the hidden state's own mean and standard deviation."""
    z = torch.randn(hidden.shape, generator=generator, device=hidden.device, dtype=torch.float32)
    z = (z - z.mean(-1, keepdim=True)) / z.std(-1, keepdim=True).clamp(min=1e-6)
    h = hidden.detach().float()
    return (h.mean(-1, keepdim=True) + h.std(-1, keepdim=True) * z).to(hidden.dtype)


def middle_layers(num_layers: int) -> list[int]:
    lo, hi = num_layers // 4, max(num_layers // 4 + 1, (3 * num_layers) // 4)
    return list(range(lo, hi))


def interpolate(model: torch.nn.Module, original: dict[str, torch.Tensor], keep: float) -> None:
    """In place: theta = theta_0 + keep * (theta - theta_0)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in original:
                param.copy_(original[name] + keep * (param - original[name]))


class LAPTStep:
    def __init__(self, cfg: LAPTConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = torch.Generator().manual_seed(seed)
        self.adapter: ModelAdapter | None = None

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        adapter = self.adapter = self.adapter or ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
        layers = self.cfg.layers if self.cfg.layers is not None else middle_layers(adapter.num_layers)
        layer = layers[int(torch.randint(len(layers), (1,), generator=self.rng))]
        edit = {layer: lambda h: self.cfg.scale * normalised_noise(h)}
        with adapter.add_to_outputs(edit):
            logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = response_token_loss(logits, batch["labels"])
        ctx.backward(loss)
        return {"loss": loss.detach(), "layer": torch.tensor(float(layer))}


@register_defence("lapt", LAPTConfig, paper="Gu et al. 2025 (ASA/LAPT)")
def lapt(model, tokenizer, data: DefenceData, cfg: LAPTConfig):
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                   step_fn=LAPTStep(cfg, cfg.train.seed), description="lapt")
    if cfg.train.lora:
        result.model = result.model.merge_and_unload()  # interpolate the merged weights (names match theta_0)
    interpolate(result.model, original, cfg.keep)
    return trained(result)
