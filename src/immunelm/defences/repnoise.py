"""RepNoise: representation noising (Rosati et al. 2024, https://arxiv.org/abs/2405.14577).

Remove the information about harmful answers from the model's representations, so an attacker
has nothing to recover:

    L = L_harmless + beta * MMD(harmful activations, Gaussian noise)
        - alpha * log(mean over layers of harmful CE + 1)

* L_harmless: SFT on harmless data (refusals and benign answers);
* MMD: squared maximum mean discrepancy with a Gaussian kernel between the response-token hidden
  states of (harmful prompt, harmful answer) pairs at every layer and samples of N(0, I) of the
  same shape (a sum of kernels over several bandwidths, a common robust choice);
* the ascent term: harmful cross-entropy read out from every layer (logit lens: final norm and
  unembedding applied to that layer's residual), averaged over layers; maximising its log keeps
  the harmful answer unlikely at every depth, not just at the output.

Defaults beta = 0.001, alpha = 1 (paper); Booster's reproduction used alpha = 0.1.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, PositiveFloat

from immunelm.config import Config
from immunelm.data import IGNORE_INDEX, PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.engine import StepContext, TrainConfig, response_token_loss, train
from immunelm.models import ModelAdapter


class RepNoiseConfig(Config):
    alpha: float = Field(1.0, ge=0, description="Weight of the harmful-CE ascent term (paper 1; Booster's script 0.1).")
    beta: float = Field(0.001, ge=0, description="Weight of the MMD-to-noise term (paper 0.001).")
    bandwidths: list[PositiveFloat] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0], description="Gaussian kernel sigmas (x sqrt(dim)).")
    harmful_batch_size: int = Field(32, ge=1, description="Harmful pairs per step.")
    mmd_max_tokens: Optional[int] = Field(
        None, ge=2, description="Random subset of activation rows for the MMD (its cost is quadratic); None = all.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (paper: lr 2e-5 on 7B models).")


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float]) -> torch.Tensor:
    """Biased squared MMD between row samples ``x`` [n, d] and ``y`` [m, d] (0 when x == y)."""
    xy = torch.cat([x, y]).float()
    dist = torch.cdist(xy, xy).pow(2)
    scale = x.shape[1]
    kernel = sum(torch.exp(-dist / (2 * (s * s) * scale)) for s in bandwidths)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def layer_ce(adapter: ModelAdapter, hidden: dict[int, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the harmful-answer CE read out from each layer (logit lens)."""
    losses = [response_token_loss(adapter.unembedding(adapter.final_norm(h)), labels) for h in hidden.values()]
    return torch.stack(losses).mean()


class RepNoiseStep:
    def __init__(self, cfg: RepNoiseConfig, harmful: BatchStream) -> None:
        self.cfg, self.harmful = cfg, harmful
        self.adapter: ModelAdapter | None = None

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        adapter = self.adapter = self.adapter or ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
        harmless = response_token_loss(
            ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        harm = self.harmful.next(batch["input_ids"].device)
        with adapter.read_outputs(None) as hidden:
            ctx.model(input_ids=harm["input_ids"], attention_mask=harm["attention_mask"])
        response = harm["labels"] != IGNORE_INDEX
        acts = torch.cat([h[response] for h in hidden.values()])
        if self.cfg.mmd_max_tokens and acts.shape[0] > self.cfg.mmd_max_tokens:
            acts = acts[torch.randperm(acts.shape[0], device=acts.device)[: self.cfg.mmd_max_tokens]]
        noise = torch.randn_like(acts)
        mmd = gaussian_mmd(acts, noise, self.cfg.bandwidths)
        harmful_ce = layer_ce(adapter, hidden, harm["labels"])
        loss = harmless + self.cfg.beta * mmd - self.cfg.alpha * torch.log(harmful_ce + 1)
        ctx.backward(loss)
        return {"loss": loss.detach(), "harmless": harmless.detach(), "mmd": mmd.detach(), "harmful_ce": harmful_ce.detach()}


@register_defence("repnoise", RepNoiseConfig, paper="https://arxiv.org/abs/2405.14577")
def repnoise(model, tokenizer, data: DefenceData, cfg: RepNoiseConfig):
    harmful = harmful_stream(tokenizer, data, cfg.harmful_batch_size, cfg.train.seed)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer), step_fn=RepNoiseStep(cfg, harmful),
                 description="repnoise"))
