"""Circuit Breakers / Representation Rerouting (Zou et al. 2024, https://arxiv.org/abs/2406.04313).

Instead of refusing, the model's internal representations of harmful content are rerouted away
from where they were (so harmful generations break down), while benign representations stay:

    L(t) = c_rr(t) * ReLU(cos(h_cb(x_harm), h_orig(x_harm)))  +  c_ret(t) * ||h_cb(x_ret) - h_orig(x_ret)||_2
    c_rr(t) = alpha * (1 - t / (2T)),   c_ret(t) = alpha * t / (2T)

at target layers (paper: 10 and 20 of 32 -> chosen here by relative depth for any model),
trained with LoRA on a frozen model (paper: r16, lr 1e-4, 150 steps, alpha 10). h_orig comes
from the same network with the adapters disabled (no second copy in memory); with full
fine-tuning a frozen copy is used instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from immunelm.config import Config, Fraction
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, harmful_stream, register_defence, trained
from immunelm.models.reference import OriginalModel, hidden_states
from immunelm.engine import LoraSettings, StepContext, TrainConfig, train
from immunelm.models import ModelAdapter


class CircuitBreakersConfig(Config):
    alpha: float = Field(10.0, ge=0, description="Schedule scale (paper 10).")
    target_depths: list[Fraction] = Field(
        default_factory=lambda: [10 / 32, 20 / 32],
        description="Target layers as fractions of depth (paper: layers 10 and 20 of 32).")
    harmful_batch_size: int = Field(32, ge=1, description="Circuit-breaker (harmful) pairs per step.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=32, max_steps=150, log_every=25,
                                            lora=LoraSettings(r=16, alpha=16)),
        description="Engine settings (paper: LoRA r16, lr 1e-4, 150 steps).")


def target_layers(num_layers: int, depths: list[float]) -> list[int]:
    """Block indices at the given relative depths (hidden_states index k = output of block k-1)."""
    return sorted({min(num_layers - 1, max(0, round(d * num_layers) - 1)) for d in depths})


def coefficients(step: int, total: int, alpha: float) -> tuple[float, float]:
    """(c_rr, c_ret): rerouting fades from alpha to alpha/2, retain grows from 0 to alpha/2."""
    frac = step / (2 * total)
    return alpha * (1 - frac), alpha * frac


def reroute_loss(h_cb: torch.Tensor, h_orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ReLU(cosine(h_cb, h_orig)): zero once representations are orthogonal."""
    cos = F.cosine_similarity(h_cb.float(), h_orig.float(), dim=-1)
    return (F.relu(cos) * mask).sum() / mask.sum().clamp(min=1)


def retain_loss(h_cb: torch.Tensor, h_orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ||h_cb - h_orig||_2."""
    dist = (h_cb.float() - h_orig.float()).norm(dim=-1)
    return (dist * mask).sum() / mask.sum().clamp(min=1)


class CircuitBreakersStep:
    def __init__(self, cfg: CircuitBreakersConfig, harmful: BatchStream, original: OriginalModel) -> None:
        self.cfg, self.harmful, self.original = cfg, harmful, original
        self.adapter: ModelAdapter | None = None

    def _mean_loss(self, loss_fn, model, batch, layers) -> torch.Tensor:
        pairs = zip(hidden_states(model, self.adapter, batch, layers), self.original.hidden_states(model, batch, layers))
        return sum(loss_fn(a, b, batch["attention_mask"]) for a, b in pairs) / len(layers)

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = ctx.accelerator.unwrap_model(ctx.model)
        self.adapter = self.adapter or ModelAdapter(model)
        layers = target_layers(self.adapter.num_layers, self.cfg.target_depths)
        harm = self.harmful.next(batch["input_ids"].device)
        c_rr, c_ret = coefficients(ctx.step, ctx.total_steps, self.cfg.alpha)
        rr = self._mean_loss(reroute_loss, model, harm, layers)
        ret = self._mean_loss(retain_loss, model, batch, layers)
        loss = c_rr * rr + c_ret * ret
        ctx.backward(loss)
        return {"loss": loss.detach(), "reroute": rr.detach(), "retain": ret.detach()}


@register_defence("circuit-breakers", CircuitBreakersConfig, paper="https://arxiv.org/abs/2406.04313")
def circuit_breakers(model, tokenizer, data: DefenceData, cfg: CircuitBreakersConfig):
    harmful = harmful_stream(tokenizer, data, cfg.harmful_batch_size, cfg.train.seed)
    original = OriginalModel(model, lora=cfg.train.lora is not None)
    retain = [encode_example(tokenizer, e) for e in data.refusals + data.benign]
    return trained(train(cfg.train, model, retain, PaddingCollator.for_tokenizer(tokenizer), step_fn=CircuitBreakersStep(cfg, harmful, original),
                 description="circuit-breakers"))
