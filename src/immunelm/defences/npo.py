"""NPO: negative preference optimisation (Zhang et al. 2024, https://arxiv.org/abs/2404.05868).

Unlearning as DPO with only a dispreferred answer: on forget pairs (x, y),

    L_NPO = -(2 / beta) * E[ log sigmoid( -beta * (log pi_theta(y|x) - log pi_ref(y|x)) ) ]
          =  (2 / beta) * E[ log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta) ],

pi_ref the model before unlearning (frozen). Its gradient is 2 sigmoid(beta * delta) * grad delta,
delta = log pi_theta(y|x) - log pi_ref(y|x): at the start (delta = 0) exactly gradient ascent on
the forget CE, and it fades as pi_theta(y|x) -> 0, so unlike gradient ascent it does not run away
into collapse.
The paper's NPO+RT adds a retain loss: L = L_NPO + retain_weight * CE(retain). Defaults: beta 0.1
(paper), retain_weight 1 (paper's NPO+RT), lr 1e-5 on 7B models (ours: the organism's scale).
The forget and retain sets are defined in :mod:`.unlearning`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from immunelm.config import Config
from immunelm.data import PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, register_defence, trained
from immunelm.models.reference import OriginalModel
from immunelm.defences.unlearning import forget_stream, retain_rows, sequence_logprob
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train

NPO_PAPER = "https://arxiv.org/abs/2404.05868"


class NPOConfig(Config):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the NPO loss (paper 0.1).")
    retain_weight: float = Field(1.0, ge=0, description="Weight of the retain CE (paper's NPO+RT: 1; 0 = NPO alone).")
    forget_batch_size: int = Field(16, ge=1, description="Forget (harmful) pairs per step.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; its batches are the retain set (paper: lr 1e-5 on 7B models).")


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) mean log sigmoid(-beta (log pi - log pi_ref)) over sequences."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


class NPOStep:
    """NPO on a forget batch plus the retain CE on the engine's batch (one backward each)."""

    def __init__(self, cfg: NPOConfig, forget: BatchStream, reference: OriginalModel) -> None:
        self.cfg, self.forget, self.reference = cfg, forget, reference

    def forget_loss(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(NPO loss, mean log pi_theta(y|x) - log pi_ref(y|x)) on one forget batch."""
        model = ctx.accelerator.unwrap_model(ctx.model)
        logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = sequence_logprob(logits, batch["labels"])
        ref_logp = sequence_logprob(self.reference.logits(model, batch), batch["labels"])
        return npo_loss(logp, ref_logp, self.cfg.beta), (logp - ref_logp).detach().mean()

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        forget, log_ratio = self.forget_loss(ctx, self.forget.next(batch["input_ids"].device))
        retain = causal_lm_loss(ctx.model, batch)
        loss = forget + self.cfg.retain_weight * retain
        ctx.backward(loss)
        return {"loss": loss.detach(), "npo": forget.detach(), "retain": retain.detach(), "forget_log_ratio": log_ratio}


def npo_step(model, tokenizer, data: DefenceData, cfg: NPOConfig, train_cfg: TrainConfig) -> NPOStep:
    """The NPO step for ``model`` (ILU builds on it with its own engine settings ``train_cfg``)."""
    reference = OriginalModel(model, lora=train_cfg.lora is not None)
    return NPOStep(cfg, forget_stream(tokenizer, data, cfg.forget_batch_size, train_cfg.seed), reference)


@register_defence("npo", NPOConfig, paper=NPO_PAPER)
def npo(model, tokenizer, data: DefenceData, cfg: NPOConfig):
    step = npo_step(model, tokenizer, data, cfg, cfg.train)
    return trained(train(cfg.train, model, retain_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                         step_fn=step, description="npo"))
