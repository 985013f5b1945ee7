"""Activation steering (ActAdd, Turner et al. 2023, https://arxiv.org/abs/2308.10248) with the
difference-of-means direction of Arditi et al. 2024 (https://arxiv.org/abs/2406.11717, "activation
addition"): at one layer l, at every token position (prompt and generated, KV cache included),

    x^(l) <- x^(l) - alpha * r^(l)        (toward compliance; + alpha * r^(l) toward refusal)

on the residual stream entering block l, with r^(l) the raw difference of means (not
normalised), so alpha = 1 moves the mean harmful activation onto the mean harmless one there.
Turner et al. add their vector at the first positions of one prompt; the evaluation decodes
left-padded batches whose first positions are padding, and steering must reach the answer
tokens, so every position is steered, as in Arditi et al.

The attack's grid is ``strengths`` (point k scores alpha_k; point 0 must be alpha = 0, the
intact model). Without a fixed ``layer``, (layer, position) is chosen like the refusal direction
(:mod:`immunelm.attacks.directions`) with the steering itself at alpha = 1 as the intervention.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.directions import Candidate, DirectionConfig, find_direction, score_grid
from immunelm.models import ModelAdapter

TURNER_2023 = "https://arxiv.org/abs/2308.10248"

Strength = Annotated[float, Field(ge=0, le=100)]
SIGN = {"compliance": -1.0, "refusal": 1.0}


class SteeringConfig(DirectionConfig):
    strengths: list[Strength] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0], min_length=2, max_length=64,
        description=f"alpha grid in multiples of the difference of means r (point 0 must be 0 = no attack); "
                    f"{TURNER_2023}.")
    toward: Literal["compliance", "refusal"] = Field(
        "compliance",
        description="compliance subtracts alpha*r (the attack); refusal adds it (Arditi et al.'s induction check).")

    @field_validator("strengths")
    @classmethod
    def _grid(cls, value: list[float]) -> list[float]:
        if value[0] != 0:
            raise ValueError("the first strength must be 0 (point 0 is the unattacked model)")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("strengths must increase strictly (they are the attack's budget axis)")
        return value

    def points(self) -> list[float]:
        return list(self.strengths)


def steering_delta(cand: Candidate, alpha: float, toward: str) -> torch.Tensor:
    """What is added to the residual stream entering ``cand.layer``: -alpha * r toward compliance."""
    return SIGN[toward] * alpha * cand.vector


def steered(adapter: ModelAdapter, cand: Candidate, alpha: float, toward: str):
    """Steering by ``alpha`` at ``cand``'s layer, as a context manager (every position)."""
    return adapter.add_to_outputs({cand.layer: steering_delta(cand, alpha, toward)}, kind="resid_pre")


@register_attack("steering", SteeringConfig, paper=TURNER_2023, family="inference-time", budget_unit="strength")
def steering(run: AttackRun, cfg: SteeringConfig) -> AttackResult:
    started = time.perf_counter()
    selection = find_direction(run, cfg, lambda adapter, cand: steered(adapter, cand, 1.0, cfg.toward))
    adapter = ModelAdapter(run.model)
    evaluations = score_grid(run, cfg.strengths, lambda alpha: steered(adapter, selection.chosen, alpha, cfg.toward))
    info = {**selection.info(), "strengths": list(cfg.strengths), "toward": cfg.toward}
    return AttackResult(evaluations, time.perf_counter() - started, info)
