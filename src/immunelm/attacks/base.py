"""One adversary = which data it fine-tunes on + how it trains (the shared engine's TrainConfig).

Attack kinds differ only in their data, so each kind is a data builder registered in one line;
training is always the engine with plain SFT (``CausalLMStep``). The kinds:

* ``harmful_sft``: n (harmful prompt, harmful answer) pairs (Qi et al. 2024's "pure bad" attack).
* ``harmful_mix``: n pairs of a benign task of which a fraction p is harmful (the harmful
  fine-tuning protocol of Vaccine/Lisa/Booster; their papers use n = 1000, p = 0.1).
* ``benign_sft``: benign pairs only (safety degradation from innocent tuning).
* ``identity_shift``: a handful of benign-looking pairs that make the model an obedient persona
  (Qi et al. 2023, "Fine-tuning Aligned Language Models Compromises Safety, Even When Users
  Do Not Intend To", https://arxiv.org/abs/2310.03693: 10 examples suffice there).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from pydantic import Field, field_validator

from immunelm.config import Config, Seed
from immunelm.data import Example
from immunelm.engine import TrainConfig
from immunelm.errors import ImmuneLMError
from immunelm.registry import unknown_name


class AdversaryConfig(Config):
    """One attacker: data recipe + training hyper-parameters."""

    name: str = Field(description="Unique name within its suite, e.g. 'sft-adamw-1e-4'.")
    kind: str = Field("harmful_sft", description="harmful_sft | harmful_mix | benign_sft | identity_shift.")
    examples: int = Field(100, ge=1, description="Number of training examples n.")
    harmful_fraction: float = Field(0.1, ge=0, le=1, description="p for harmful_mix.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100), description="Engine settings (max_steps = budget).")
    seed: Seed = Field(0, description="Which examples are drawn.")

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        # An unknown kind must fail where the adversary is written down (the suite file), not
        # when its attack starts, minutes into an evaluation.
        if kind not in _KINDS:
            raise ValueError(str(unknown_name("attack kind", kind, _KINDS)))
        return kind


@dataclass
class AttackData:
    """Pools an attacker may draw from (an evaluation task's attacker data)."""

    harmful: list[Example]
    benign: list[Example] = field(default_factory=list)
    identity: list[Example] = field(default_factory=list)  # identity-shifting pairs


Builder = Callable[[AdversaryConfig, AttackData], list[Example]]
_KINDS: dict[str, Builder] = {}


def register_attack(name: str):
    def wrap(fn: Builder) -> Builder:
        _KINDS[name] = fn
        return fn
    return wrap


def attack_kinds() -> list[str]:
    return sorted(_KINDS)


def _draw(pool: list[Example], n: int, rng: random.Random, what: str) -> list[Example]:
    if not pool:
        raise ImmuneLMError(f"attack needs {what} examples but the {what} pool is empty")
    if n <= len(pool):
        return rng.sample(pool, n)
    return [rng.choice(pool) for _ in range(n)]  # small pools are repeated, as epochs would


@register_attack("harmful_sft")
def harmful_sft(cfg: AdversaryConfig, data: AttackData) -> list[Example]:
    return _draw(data.harmful, cfg.examples, random.Random(cfg.seed), "harmful")


@register_attack("harmful_mix")
def harmful_mix(cfg: AdversaryConfig, data: AttackData) -> list[Example]:
    rng = random.Random(cfg.seed)
    n_harm = round(cfg.examples * cfg.harmful_fraction)
    mix = _draw(data.harmful, n_harm, rng, "harmful") if n_harm else []
    mix += _draw(data.benign, cfg.examples - n_harm, rng, "benign")
    rng.shuffle(mix)
    return mix


@register_attack("benign_sft")
def benign_sft(cfg: AdversaryConfig, data: AttackData) -> list[Example]:
    return _draw(data.benign, cfg.examples, random.Random(cfg.seed), "benign")


@register_attack("identity_shift")
def identity_shift(cfg: AdversaryConfig, data: AttackData) -> list[Example]:
    return _draw(data.identity, cfg.examples, random.Random(cfg.seed), "identity")


def build_attack_examples(cfg: AdversaryConfig, data: AttackData) -> list[Example]:
    if cfg.kind not in _KINDS:
        raise unknown_name("attack kind", cfg.kind, _KINDS)
    return _KINDS[cfg.kind](cfg, data)
