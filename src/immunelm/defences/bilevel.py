"""Parts shared by the defences that simulate an attacker inside their step: Booster's and
CTRAP's one normalised harmful step, and the bi-level (meta-learning) defences MLAC, TAR and SOPHON.

A bi-level outer step lets a simulated adversary fine-tune the current weights theta for K inner
steps, reads an outer loss at the adapted weights theta', and puts theta back exactly. The outer
gradient is first-order (FO-MAML, Finn et al. 2017, https://arxiv.org/abs/1703.03400): the
gradient of the outer loss at theta' stands in for its gradient through the inner loop, so at
most one backward graph exists at any time, whatever K is (TAR's memory requirement). MLAC also
offers the exact second-order gradient through ``torch.func`` (see :mod:`.mlac`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import IGNORE_INDEX
from immunelm.defences.base import BatchStream, DefenceData, harmful_stream
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss
from immunelm.engine.optim import build_optimizer


class InnerAdversary(Config):
    """The simulated attacker of one inner loop."""

    optimizer: Literal["adamw", "adam", "sgd", "adagrad", "adadelta"] = Field("adamw", description="Inner optimiser.")
    lr: float = Field(1e-4, gt=0, description="Inner learning rate.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")

    def train_config(self) -> TrainConfig:
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, max_steps=1, max_grad_norm=None)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def weights_restored(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside the block ``params`` may move and their ``.grad`` may be overwritten; on exit both
    are exactly as before. A saved copy, not an undo: ``w - a*g + a*g != w`` in floating point,
    and the engine may already hold accumulated gradients from earlier micro-batches."""
    saved = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        with torch.no_grad():
            for p, weight, grad in zip(params, saved, grads):
                p.copy_(weight)
                p.grad = grad


@contextmanager
def after_normalised_step(params: list[torch.nn.Parameter], grads: list[torch.Tensor], alpha: float) -> Iterator[None]:
    """Inside the block the weights are w' = w - alpha * g / ||g|| (one normalised simulated harmful
    step, ||g|| over all params: Booster, CTRAP); on exit weights and ``.grad`` are exactly as before."""
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) + 1e-12
    with weights_restored(params):
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(alpha * g / norm)
        yield


def add_to_grads(ctx: StepContext, params: list[torch.nn.Parameter], extras: list[torch.Tensor]) -> None:
    """Add a gradient computed outside ``ctx.backward`` to ``.grad``, scaled for accumulation and
    averaged across processes like a DDP gradient."""
    for p, extra in zip(params, extras):
        if ctx.accelerator.num_processes > 1:
            extra = ctx.accelerator.reduce(extra, "mean")
        extra = extra / ctx.grad_accum
        p.grad = extra.clone() if p.grad is None else p.grad.add_(extra)


class GradientSum:
    """Sum of weighted gradients of several losses, each taken at whatever the weights are when
    it is added (the first-order outer gradient), one backward graph at a time."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.total = [torch.zeros_like(p) for p in params]
        self.losses: list[float] = []

    def add(self, loss: torch.Tensor, weight: float = 1.0) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for total, grad in zip(self.total, grads):
            if grad is not None:
                total.add_(grad, alpha=weight)
        self.losses.append(float(loss.detach()))


def simulate_attack(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    adversary: InnerAdversary,
    next_batch: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Run ``steps`` inner steps of ``adversary`` on ``next_batch(i)`` (harmful SFT), calling
    ``after_step(i)`` after step i. Moves ``params`` in place: wrap in :func:`weights_restored`.
    Returns the inner losses."""
    optimizer = build_optimizer(params, adversary.train_config())
    losses = []
    for i in range(steps):
        loss = causal_lm_loss(model, next_batch(i))
        for p, grad in zip(params, torch.autograd.grad(loss, params)):
            p.grad = grad
        optimizer.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(i)
    return losses


def adapted_gradient(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    adversary: InnerAdversary,
    next_batch: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    outer_loss: Callable[[], torch.Tensor],
    weight_at: Callable[[int], float | None],
) -> tuple[GradientSum, list[float]]:
    """First-order outer gradient: simulate the attack and, at inner step i (i = -1: before the
    first step) where ``weight_at(i)`` is not None, add ``weight * grad outer_loss()`` taken at the
    adapted weights. Weights and ``.grad`` are restored afterwards. Returns (sum, inner losses)."""
    outer = GradientSum(params)

    def probe(i: int) -> None:
        weight = weight_at(i)
        if weight is not None:
            outer.add(outer_loss(), weight)

    with weights_restored(params):
        probe(-1)
        inner_losses = simulate_attack(model, params, adversary, next_batch, steps, after_step=probe)
    return outer, inner_losses


def response_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits at the positions that predict a response token, ``[n_tokens, vocab]``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return logits[batch["labels"][:, 1:] != IGNORE_INDEX].float()


def harmful_split(tokenizer, data: DefenceData, batch_size: int, heldout_fraction: float, seed: int) -> tuple[BatchStream, BatchStream]:
    """The defender's harmful pairs split into (the simulated adversary's stream, a held-out
    stream for the outer loss, which the simulated adversary never trains on)."""
    stream = harmful_stream(tokenizer, data, batch_size, seed)
    rows = list(stream.rows)
    if len(rows) < 2:
        return stream, stream  # one example: nothing to hold out; both losses share it
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = min(len(rows) - 1, max(1, round(len(rows) * heldout_fraction)))
    held = [rows[i] for i in order[:cut]]
    train = [rows[i] for i in order[cut:]]
    return (BatchStream(train, stream.collate, batch_size, seed), BatchStream(held, stream.collate, batch_size, seed + 1))
