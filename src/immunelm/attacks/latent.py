"""Latent adversarial perturbation: a bounded edit of the residual stream, the model frozen.

Latent adversarial training (Casper et al. 2024, https://arxiv.org/abs/2403.05030; targeted
LAT, Sheshadri et al. 2024, https://arxiv.org/abs/2407.15549) trains a model against an
adversary who perturbs the residual stream at one layer within an L2 ball of radius epsilon
per token. Used as an attack, that adversary alone is the threat: with the weights fixed,
projected gradient descent finds

    delta* = argmin_{||delta||_2 <= epsilon} CE(harmful answers | prompts; h_l + delta)

on the attacker's (harmful prompt, harmful answer) pairs, and the attacked model is the
original one with ``h_l <- h_l + delta*`` at ``blocks.<l>.hook_resid_pre`` (the residual
stream entering block l; l = 0 edits the token embeddings).

Choices stated:

* **Universal, one vector at every position.** delta is one vector shared by every prompt
  and added at every position (prompt, answer and each generated token), so it transfers to
  held-out prompts and behaves the same with and without the KV cache (each decoding step
  adds the same vector to its one new position). Its per-token L2 norm is its norm.
* **Projection after every optimiser step** (PGD): delta <- delta * min(1, epsilon / ||delta||).
* **Scale-free parameterisation.** The engine trains u with delta = epsilon * u / sqrt(d) and
  ||u|| <= sqrt(d) (d = hidden size), so an Adam step of ``lr`` moves delta by about ``lr *
  epsilon``, whatever the model's residual scale; ``relative`` (default) takes epsilon as a
  fraction of the mean clean residual norm measured at that point on the attacker's examples.
* Training is the shared engine (plain response cross-entropy through the frozen model, the
  perturbation its only parameter); the budget is optimiser steps, scored at the suite's
  steps with the perturbation installed. Step 0 is the unattacked model (delta starts at 0).

Measured on the built-in aligned organism (layer 2 of 4, residual norm 8.7, 100 steps): harmful
score 0 at epsilon 0.25, about 0.5 at 0.5 (benign 0.99), 1.0 at 1.0 (benign 0.94).
"""

from __future__ import annotations

import abc
import math
import random
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from immunelm.attacks.base import AttackResult, AttackRun, PromptWrap, register_attack
from immunelm.attacks.finetune import draw
from immunelm.config import Config, Seed
from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.engine import TrainConfig, TrainResult, train
from immunelm.models import ModelAdapter
from immunelm.models.hooks import HookPoint

CASPER_2024 = "https://arxiv.org/abs/2403.05030"
SHESHADRI_2024 = "https://arxiv.org/abs/2407.15549"


def frozen_train_config(train_cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that would train the model itself (the attack changes no weight)."""
    if train_cfg.lora is not None:
        raise ValueError("train.lora must be unset: this attack trains no weights of the model (it is frozen)")
    return train_cfg


class LatentPerturbationConfig(Config):
    """One latent-perturbation attacker (Casper et al. 2024, https://arxiv.org/abs/2403.05030)."""

    layer: Optional[int] = Field(
        None, ge=-512, lt=512,
        description="Block l whose incoming residual stream (blocks.<l>.hook_resid_pre) is perturbed; negative counts "
                    "from the end; unset = chosen by depth (LAT perturbs middle layers, https://arxiv.org/abs/2403.05030).")
    depth: float = Field(0.5, ge=0, le=1, description="When layer is unset: l = floor(depth * number of blocks), capped at the last.")
    epsilon: float = Field(
        0.5, gt=0, le=1000,
        description="L2 bound on the perturbation per token (LAT's epsilon, https://arxiv.org/abs/2403.05030); "
                    "a fraction of the mean clean residual norm at that point when relative=true.")
    relative: bool = Field(True, description="epsilon relative to the measured residual norm (true) or absolute (false).")
    examples: int = Field(64, ge=1, le=100_000, description="Harmful (prompt, answer) pairs the perturbation is fitted on.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=0.05, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; max_steps = budget; lr is about the fraction of epsilon one Adam step moves delta.")
    seed: Seed = Field(0, description="Which attacker examples are drawn.")

    @model_validator(mode="after")
    def _frozen(self) -> "LatentPerturbationConfig":
        frozen_train_config(self.train)
        return self


def project(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` (last dim) onto the ball of ``radius``:
    delta * min(1, radius / ||delta||)."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * (radius / norm.clamp_min(1e-12)).clamp(max=1.0)


class FrozenLM(nn.Module, metaclass=abc.ABCMeta):
    """The attacked model, frozen and kept in eval mode, plus an attack's own parameters (the
    only ones the engine trains). Subclasses install their edit in ``installed()``; ``forward``
    runs the model with it, so the engine's plain SFT step trains the edit."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        for param in lm.parameters():
            param.requires_grad_(False)
        lm.eval()
        self.adapter = ModelAdapter(lm)

    @property
    def device(self) -> torch.device:
        return self.adapter.embedding.weight.device

    def train(self, mode: bool = True) -> "FrozenLM":
        super().train(mode)
        self.lm.eval()  # the edit is fitted to the model as it is scored: no dropout
        return self

    @abc.abstractmethod
    def installed(self) -> AbstractContextManager[None]:
        """A context in which every forward pass of ``lm`` carries the edit."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        with self.installed():
            return self.lm(input_ids=input_ids, attention_mask=attention_mask)


class ResidualPerturbation(FrozenLM):
    """delta = radius * u / sqrt(d), added at ``point``; ``project_`` keeps ||delta|| <= radius."""

    def __init__(self, lm: nn.Module, point: HookPoint, radius: float) -> None:
        super().__init__(lm)
        self.point, self.radius = point, float(radius)
        self.scale = math.sqrt(self.adapter.hidden_size)
        self.unit = nn.Parameter(torch.zeros(self.adapter.hidden_size, device=self.device))

    @property
    def delta(self) -> torch.Tensor:
        return self.radius * self.unit / self.scale

    def project_(self) -> None:
        with torch.no_grad():
            self.unit.copy_(project(self.unit, self.scale))  # ||u|| <= sqrt(d)  <=>  ||delta|| <= radius

    @contextmanager
    def installed(self) -> Iterator[None]:
        with self.adapter.add_to_outputs({self.point.name: lambda hidden: self.delta}):
            yield


def draw_harmful(run: AttackRun, n: int, seed: int) -> list[Example]:
    return draw(run.data.harmful, n, random.Random(seed), "harmful")


def choose_point(adapter: ModelAdapter, cfg: LatentPerturbationConfig) -> HookPoint:
    layer = cfg.layer if cfg.layer is not None else min(adapter.num_layers - 1, int(cfg.depth * adapter.num_layers))
    return adapter.point(layer, "resid_pre")


@torch.no_grad()
def mean_residual_norm(adapter: ModelAdapter, point: HookPoint, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean L2 norm of the clean hidden state at ``point`` over the non-padding tokens."""
    total, count = 0.0, 0
    device = adapter.embedding.weight.device
    for batch in batches:
        mask = batch["attention_mask"].to(device).bool()
        with adapter.read_outputs(point.name, detach=True) as seen:
            adapter.model(input_ids=batch["input_ids"].to(device), attention_mask=mask.long())
        total += float(seen[point.name].float().norm(dim=-1)[mask].sum())
        count += int(mask.sum())
    return total / max(1, count)


def optimise(run: AttackRun, module: FrozenLM, rows: list[dict], train_cfg: TrainConfig,
             wrap: PromptWrap | None = None, callbacks=()) -> TrainResult:
    """Fit ``module``'s parameters with the engine, scoring at ``run.eval_at`` with the edit
    installed (``wrap`` rewrites the harmful prompts at scoring). Step 0 is the unattacked
    model, the same point for every adversary."""
    def evaluate(trained: FrozenLM, step: int) -> dict:
        if step == 0:
            return run.score(trained.lm, 0)
        with trained.installed():
            return run.score(trained.lm, step, wrap=wrap)

    return train(train_cfg.model_copy(update={"eval_at": run.eval_at}), module, rows,
                 PaddingCollator.for_tokenizer(run.tokenizer), evaluate=evaluate, callbacks=callbacks,
                 description=run.description)


def loss_info(result: TrainResult) -> dict:
    losses = [row["loss"] for row in result.history if "loss" in row]
    return {"loss_first": losses[0], "loss_last": losses[-1]} if losses else {}


@register_attack("latent_perturbation", LatentPerturbationConfig, paper=CASPER_2024, family="inference-time")
def latent_perturbation(run: AttackRun, cfg: LatentPerturbationConfig) -> AttackResult:
    rows = [encode_example(run.tokenizer, e) for e in draw_harmful(run, cfg.examples, cfg.seed)]
    module = ResidualPerturbation(run.model, choose_point(ModelAdapter(run.model), cfg), radius=cfg.epsilon)
    point, collate, size = module.point, PaddingCollator.for_tokenizer(run.tokenizer), cfg.train.batch_size
    norm = mean_residual_norm(module.adapter, point, [collate(rows[i:i + size]) for i in range(0, len(rows), size)])
    module.radius = cfg.epsilon * norm if cfg.relative else cfg.epsilon
    result = optimise(run, module, rows, cfg.train, callbacks=[lambda *_: module.project_()])
    info = {"hook_point": point.name, "layer": point.layer, "epsilon": module.radius, "residual_norm": norm,
            "delta_norm": float(module.delta.detach().norm()), "examples": len(rows), **loss_info(result)}
    return AttackResult(result.evaluations, result.seconds, info)
