"""How a method plugs into the engine: a step function, not a copied training loop.

A step function receives the :class:`StepContext` and one micro-batch, runs as many forward
and backward passes as the method needs (calling ``ctx.backward`` for each loss it wants to
contribute), and returns a dict of detached scalar metrics. The engine owns everything
around it: accumulation, clipping, optimiser and scheduler steps, logging, evaluation,
checkpoints, devices and distributed wrapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from immunelm.data.chat import IGNORE_INDEX


@dataclass
class StepContext:
    model: torch.nn.Module
    accelerator: Any
    step: int  # optimiser steps completed before this one
    total_steps: int
    grad_accum: int
    state: dict[str, Any] = field(default_factory=dict)  # per-run scratch space for methods
    # Whether any loss back-propagated since the last optimiser step was nan/inf. Kept as a
    # tensor so checking it costs one device sync per optimiser step, not one per backward.
    nonfinite_loss: torch.Tensor | None = None

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, scaled for gradient accumulation."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.nonfinite_loss = bad if self.nonfinite_loss is None else self.nonfinite_loss | bad
        self.accelerator.backward(loss / self.grad_accum)

    def take_nonfinite_loss(self) -> torch.Tensor:
        """The flag since the last call (then reset): True if a back-propagated loss was nan/inf."""
        flag = self.nonfinite_loss if self.nonfinite_loss is not None else torch.tensor(False)
        self.nonfinite_loss = None
        return flag


class TrainStep(Protocol):
    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ...


def response_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled (response) tokens."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y_t | y_<t) at every next-token position, 0 where unlabelled; the label mask), both (B, T-1)."""
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logp.gather(-1, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def mean_token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """tau^2 * mean over positions where ``mask`` of KL(softmax(p / tau) || softmax(q / tau)); logits (B, T, V),
    mask (B, T). AntiDote's drift penalty (tau 1) and UNDO's distillation loss."""
    logp = F.log_softmax(p_logits.float() / temperature, dim=-1)
    logq = F.log_softmax(q_logits.float() / temperature, dim=-1)
    per_position = (logp.exp() * (logp - logq)).sum(dim=-1)
    weights = mask.to(per_position.dtype)
    return temperature ** 2 * (per_position * weights).sum() / weights.sum().clamp(min=1)


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward ``batch`` through ``model`` and return its response-token cross-entropy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return response_token_loss(logits, batch["labels"])


class CausalLMStep:
    """Plain supervised fine-tuning: cross-entropy on response tokens (SFT, SFT attacks)."""

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = causal_lm_loss(ctx.model, batch)
        ctx.backward(loss)
        return {"loss": loss.detach()}
