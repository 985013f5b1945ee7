"""RMU: representation misdirection for unlearning (Li et al. 2024, WMDP, https://arxiv.org/abs/2403.03218).

At one layer l, push the residual stream of forget text toward a fixed random direction and keep
the retain text's residual where the frozen model had it:

    L = mean_t || h_l(x_forget)_t - c * u ||^2  +  alpha * mean_t || h_l(x_retain)_t - h_l^frozen(x_retain)_t ||^2

u is drawn once, uniform in [0, 1)^d and normalised (the paper's code), c the steering
coefficient; the mean is over tokens and hidden units (MSE). Only the MLPs of blocks l-2..l are
updated (the paper's code updates three layers' MLP weights at and below l); everything else is
frozen under full fine-tuning (under LoRA the adapters' targets decide instead).

Paper defaults (Zephyr-7B): l = 7 of 32, c = 6.5, alpha = 1200, lr 5e-5. The scale of c must match
the model's residual norms, so here ``steering_coefficient`` is *relative to the mean residual
norm at l on the forget set* by default (``absolute=false``), measured once before training
(decision, issue 12: c = 6.5 fits Zephyr's layer-7 norms, not a 64-wide organism). Tokens: every
non-padding token of the forget pairs (the paper's forget corpora are plain text, all tokens).
"""

from __future__ import annotations

import torch
from pydantic import Field

from immunelm.config import Config, Seed
from immunelm.data import PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, register_defence, trained
from immunelm.models.reference import OriginalModel, hidden_states
from immunelm.defences.unlearning import forget_stream, retain_rows
from immunelm.engine import StepContext, TrainConfig, train
from immunelm.models import ModelAdapter
from immunelm.models.depth import LayerChoice, resolve_layer

RMU_PAPER = "https://arxiv.org/abs/2403.03218"


class RMUConfig(Config):
    layer: LayerChoice = Field(0.25, description="Block l whose output is misdirected: index or depth fraction (paper 7 of 32).")
    updated_layers: int = Field(3, ge=1, le=4096, description="MLPs of blocks l-n+1..l are trained (paper: 3).")
    steering_coefficient: float = Field(
        6.5, gt=0, description="c (paper 6.5); a multiple of the mean residual norm at l unless absolute.")
    absolute: bool = Field(False, description="Use c as given (the paper's scale) instead of x the residual norm.")
    alpha: float = Field(1200.0, ge=0, description="Weight of the retain activation MSE (paper 1200).")
    forget_batch_size: int = Field(16, ge=1, description="Forget (harmful) pairs per step.")
    seed: Seed = Field(0, description="Draws the random direction u.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=5e-4, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; its batches are the retain set (paper: lr 5e-5 on Zephyr-7B).")


def random_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """u: uniform in [0, 1)^d, unit norm (the paper's code), seeded."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def token_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens and hidden units of (hidden - target)^2."""
    diff = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    return (diff * mask).sum() / mask.sum().clamp(min=1)


def mlp_parameters(model, layers: list[int]) -> list[torch.nn.Parameter]:
    adapter = ModelAdapter(model)
    return [p for layer in layers for p in adapter.mlp(layer).parameters()]


class RMUStep:
    def __init__(self, cfg: RMUConfig, forget: BatchStream, original: OriginalModel, layer: int, target: torch.Tensor) -> None:
        self.cfg, self.forget, self.original, self.layer, self.target = cfg, forget, original, layer, target
        self.adapter: ModelAdapter | None = None

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = ctx.accelerator.unwrap_model(ctx.model)
        adapter = self.adapter = self.adapter or ModelAdapter(model)
        harm = self.forget.next(batch["input_ids"].device)
        h_forget = hidden_states(ctx.model, adapter, harm, [self.layer])[0]
        forget = token_mse(h_forget, self.target.to(h_forget.device), harm["attention_mask"])
        h_retain = hidden_states(ctx.model, adapter, batch, [self.layer])[0]
        h_frozen = self.original.hidden_states(model, batch, [self.layer])[0]
        retain = token_mse(h_retain, h_frozen, batch["attention_mask"])
        loss = forget + self.cfg.alpha * retain
        ctx.backward(loss)
        return {"loss": loss.detach(), "forget_mse": forget.detach(), "retain_mse": retain.detach()}


@torch.no_grad()
def mean_residual_norm(model, batch: dict[str, torch.Tensor], layer: int) -> float:
    """Mean L2 norm of block ``layer``'s output over the batch's non-padding tokens."""
    hidden = hidden_states(model, ModelAdapter(model), batch, [layer])[0].float()
    mask = batch["attention_mask"].bool()
    return float(hidden.norm(dim=-1)[mask].mean())


def rmu_step(model, tokenizer, data: DefenceData, cfg: RMUConfig, train_cfg: TrainConfig) -> tuple[RMUStep, dict]:
    """The RMU step for ``model`` and what it chose; under full fine-tuning everything outside the
    updated MLPs is frozen here (undo with ``model.requires_grad_(True)`` after training)."""
    adapter = ModelAdapter(model)
    layer = resolve_layer(cfg.layer, adapter.num_layers)
    forget = forget_stream(tokenizer, data, cfg.forget_batch_size, train_cfg.seed)
    scale = 1.0 if cfg.absolute else mean_residual_norm(model, forget.next(next(model.parameters()).device), layer)
    forget = forget_stream(tokenizer, data, cfg.forget_batch_size, train_cfg.seed)  # the scale's batch is not consumed
    coefficient = cfg.steering_coefficient * scale
    target = coefficient * random_direction(adapter.hidden_size, cfg.seed)
    original = OriginalModel(model, lora=train_cfg.lora is not None)
    updated = [l for l in range(layer - cfg.updated_layers + 1, layer + 1) if l >= 0]
    if not train_cfg.lora:
        keep = {id(p) for p in mlp_parameters(model, updated)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    info = {"layer": layer, "updated_layers": updated, "coefficient": coefficient}
    return RMUStep(cfg, forget, original, layer, target), info


@register_defence("rmu", RMUConfig, paper=RMU_PAPER)
def rmu(model, tokenizer, data: DefenceData, cfg: RMUConfig):
    step, info = rmu_step(model, tokenizer, data, cfg, cfg.train)
    result = train(cfg.train, model, retain_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                   step_fn=step, description="rmu")
    if not cfg.train.lora:
        result.model.requires_grad_(True)  # hand back an ordinary, fully trainable model
    return trained(result, **info)
