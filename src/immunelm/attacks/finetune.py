"""Supervised fine-tuning attacks: they differ only in the data they fine-tune on.

Training is always the shared engine with plain SFT (``CausalLMStep``), scored at the suite's
``eval_at`` steps. The kinds:

* ``harmful_sft``: n (harmful prompt, harmful answer) pairs (Qi et al. 2024's "pure bad" attack,
  https://arxiv.org/abs/2310.03693).
* ``harmful_mix``: n pairs of a benign task of which a fraction p is harmful (the harmful
  fine-tuning protocol of Vaccine/Lisa/Booster; their papers use n = 1000, p = 0.1).
* ``benign_sft``: benign pairs only (safety degradation from innocent tuning).
* ``identity_shift``: a handful of benign-looking pairs that make the model an obedient persona
  (Qi et al. 2023, "Fine-tuning Aligned Language Models Compromises Safety, Even When Users
  Do Not Intend To", https://arxiv.org/abs/2310.03693: 10 examples suffice there).
"""

from __future__ import annotations

import random
from typing import Callable

from pydantic import Field

from immunelm.attacks.base import AttackData, AttackResult, AttackRun, register_attack
from immunelm.config import Config, Seed
from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.engine import TrainConfig, train
from immunelm.errors import ImmuneLMError

QI_2023 = "https://arxiv.org/abs/2310.03693"


class FineTuneAttackConfig(Config):
    """One fine-tuning attacker: how many examples it draws and how it trains."""

    examples: int = Field(100, ge=1, description="Number of training examples n.")
    harmful_fraction: float = Field(0.1, ge=0, le=1, description="p for harmful_mix (ignored by the other kinds).")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100), description="Engine settings (max_steps = budget).")
    seed: Seed = Field(0, description="Which examples are drawn.")

    def effective(self, kind: str) -> dict:
        """What determines the attacked weights (for the suite's duplicate check)."""
        out = {**self.model_dump(mode="json"), "train": self.train.weight_settings()}
        if kind != "harmful_mix":
            out.pop("harmful_fraction")
        return out


def draw(pool: list[Example], n: int, rng: random.Random, what: str) -> list[Example]:
    if not pool:
        raise ImmuneLMError(f"attack needs {what} examples but the task's {what} pool is empty")
    if n <= len(pool):
        return rng.sample(pool, n)
    return [rng.choice(pool) for _ in range(n)]  # small pools are repeated, as epochs would


def harmful_examples(cfg: FineTuneAttackConfig, data: AttackData) -> list[Example]:
    return draw(data.harmful, cfg.examples, random.Random(cfg.seed), "harmful")


def mix_examples(cfg: FineTuneAttackConfig, data: AttackData) -> list[Example]:
    rng = random.Random(cfg.seed)
    n_harm = round(cfg.examples * cfg.harmful_fraction)
    mix = draw(data.harmful, n_harm, rng, "harmful") if n_harm else []
    mix += draw(data.benign, cfg.examples - n_harm, rng, "benign")
    rng.shuffle(mix)
    return mix


def benign_examples(cfg: FineTuneAttackConfig, data: AttackData) -> list[Example]:
    return draw(data.benign, cfg.examples, random.Random(cfg.seed), "benign")


def identity_examples(cfg: FineTuneAttackConfig, data: AttackData) -> list[Example]:
    return draw(data.identity, cfg.examples, random.Random(cfg.seed), "identity")


def fine_tune(run: AttackRun, cfg: FineTuneAttackConfig, examples: list[Example]) -> AttackResult:
    """The engine on ``examples``, scoring the attacked copy at ``run.eval_at``."""
    rows = [encode_example(run.tokenizer, e) for e in examples]
    result = train(cfg.train.model_copy(update={"eval_at": run.eval_at}), run.model, rows,
                   PaddingCollator.for_tokenizer(run.tokenizer), evaluate=run.score, description=run.description)
    return AttackResult(result.evaluations, result.seconds, {"examples": len(rows)}, model=result.model)


def _register(name: str, examples_for: Callable[[FineTuneAttackConfig, AttackData], list[Example]], paper: str) -> None:
    def run(attack: AttackRun, cfg: FineTuneAttackConfig) -> AttackResult:
        return fine_tune(attack, cfg, examples_for(cfg, attack.data))
    register_attack(name, FineTuneAttackConfig, paper=paper)(run)


_register("harmful_sft", harmful_examples, QI_2023)
_register("harmful_mix", mix_examples, "https://arxiv.org/abs/2402.01109")
_register("benign_sft", benign_examples, QI_2023)
_register("identity_shift", identity_examples, QI_2023)

#: The data each fine-tuning kind draws (tests and the distinctness check read it).
DRAWS = {"harmful_sft": harmful_examples, "harmful_mix": mix_examples, "benign_sft": benign_examples,
         "identity_shift": identity_examples}
