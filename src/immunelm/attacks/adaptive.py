"""Adaptive fine-tuning attacks: what a defence's simulated attacker did not try.

``benign_then_harmful``: the first part of the budget fine-tunes on benign pairs, the rest on
harmful pairs. Bi-level and perturbation defences (TAR, MLAC, Vaccine, Booster, RepNoise)
simulate an attacker that starts on harmful data from the immunised weights; a benign warm-up
first moves the model out of the region the defence shaped (the seeds' "first steps on benign
data then harmful"; TAR's own red team switches retain -> forget data at 40% of its steps,
Tamirisa et al. 2024, https://arxiv.org/abs/2408.00761).

Two engine runs, benign then harmful, scored on one step axis (the harmful phase's steps are
offset by the benign phase's length). The optimiser state starts afresh in the harmful phase,
as an attacker who swaps datasets between two fine-tuning jobs would.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.finetune import FineTuneAttackConfig, benign_examples, fine_tune, harmful_examples
from immunelm.models.adapters import merged_full


class BenignThenHarmfulConfig(FineTuneAttackConfig):
    """A benign warm-up, then harmful SFT, within one step budget (``train.max_steps``)."""

    benign_fraction: float = Field(0.4, gt=0, lt=1, description="Share of the budget spent on benign pairs first "
                                                                "(TAR's red team switches data at 40%).")

    @model_validator(mode="after")
    def _two_phases(self) -> "BenignThenHarmfulConfig":
        if (self.train.max_steps or 0) < 2:
            raise ValueError("train.max_steps must be set and >= 2 (a benign phase, then a harmful one)")
        return self

    def effective(self, kind: str) -> dict:
        return {**super().effective(kind), "benign_fraction": self.benign_fraction}

    def split(self) -> int:
        """Steps of the benign phase (at least 1, leaving at least 1 harmful step)."""
        total = self.train.max_steps
        return min(max(1, round(total * self.benign_fraction)), total - 1)


def _phase(run: AttackRun, cfg: FineTuneAttackConfig, examples, steps: int, offset: int, points: list[int]) -> AttackResult:
    """One engine run of ``steps`` steps, scored at ``points`` (global steps) within it."""
    local = sorted({p - offset for p in points if offset <= p <= offset + steps})

    def score(model, step: int, wrap=None) -> dict:
        return run.score(model, step + offset, wrap)

    phase_run = AttackRun(run.model, run.tokenizer, run.data, local, score, run.description, run.judge)
    phase_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
    result = fine_tune(phase_run, phase_cfg, examples)
    for point in result.evaluations:  # the engine labels points with its own (local) step
        point["step"] += offset
    return result


@register_attack("benign_then_harmful", BenignThenHarmfulConfig, paper="https://arxiv.org/abs/2408.00761")
def benign_then_harmful(run: AttackRun, cfg: BenignThenHarmfulConfig) -> AttackResult:
    switch, total = cfg.split(), cfg.train.max_steps
    points = sorted(set(run.eval_at) | {switch})
    first = _phase(run, cfg, benign_examples(cfg, run.data), switch, 0, points)
    # With LoRA the benign phase's adapter is merged before the harmful phase adds its own: the engine
    # would otherwise wrap the adapter model in a second one (nested adapters). The optimiser state
    # restarts at the switch either way (two engine runs).
    run.model = merged_full(first.model)
    second = _phase(run, cfg, harmful_examples(cfg, run.data), total - switch, switch, points)
    # The switch point is scored by both phases (end of one, start of the other): keep it once.
    evaluations = first.evaluations + [e for e in second.evaluations if e["step"] > switch]
    return AttackResult(evaluations, first.seconds + second.seconds,
                        {"switch_step": switch, "examples": first.info["examples"] + second.info["examples"]},
                        model=second.model)
