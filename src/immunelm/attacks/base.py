"""The attack plug-in boundary, the mirror of :mod:`immunelm.defences.base`.

An attack is registered once with ``@register_attack(name, ConfigClass, paper=..., family=...)``
and lives in its own module under ``immunelm.attacks``. It receives an :class:`AttackRun` (a
private copy of the model, its tokenizer, the task's attacker pools, the budget points at which
to score the attacked model and the scoring callback) and returns an :class:`AttackResult`: the
curve of scored points, its cost and whatever it measured on the way (a fraction of weights
removed, the layer of a direction). Fine-tuning attacks score at optimiser steps; an
inference-time or weight-edit attack scores at points of its own budget (a strength, a
fraction) and says so with ``budget_unit``.

Suites name attacks by ``kind``; everything else in a suite entry is that attack's config, so
the evaluator never knows attack kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import Field, SerializeAsAny

from immunelm.config import Config, load_config
from immunelm.data import Example
from immunelm.registry import unknown_name

#: How an attack gets its way; the report groups attacks by it and takes the worst case over all.
AttackFamily = Literal["fine-tuning", "rl", "inference-time", "weight-edit", "prompt"]
FAMILIES: tuple[str, ...] = ("fine-tuning", "rl", "inference-time", "weight-edit", "prompt")


@dataclass
class AttackData:
    """Pools an attacker may draw from (an evaluation task's attacker data)."""

    harmful: list[Example]
    benign: list[Example] = field(default_factory=list)
    identity: list[Example] = field(default_factory=list)  # identity-shifting pairs


#: Rewrites a harmful prompt (prompt-only attacks: role-play or hypothetical framing).
PromptWrap = Callable[[str], str]
#: Score the attacked model at a budget point: (model, point[, wrap]) -> a curve point as a dict.
#: Point 0 without a wrap is the unattacked model (scored once per model by the evaluator).
ScoreFn = Callable[..., dict]


@dataclass
class AttackRun:
    """Everything an attack is given. ``model`` is the attack's own copy: change it freely."""

    model: Any
    tokenizer: Any
    data: AttackData
    eval_at: list[int]
    score: ScoreFn
    description: str = "attack"
    judge: Any = None  # the evaluation's judge (``judge.judge([JudgeSample])``): rewards for RL attacks


@dataclass
class AttackResult:
    evaluations: list[dict]  # scored points, in budget order; each has "step" (the budget point)
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    # The attacked model at the last point, for attacks that change weights (fine-tuning, RL,
    # a persistent edit); None for hooks and prompts, which leave no model to keep.
    model: Any = None


@dataclass
class AttackSpec:
    name: str
    config_cls: type[Config]
    run: Callable[[AttackRun, Config], AttackResult]
    paper: str = ""
    family: str = "fine-tuning"
    budget_unit: str = "steps"

    @property
    def trains(self) -> bool:
        """Whether the config has an engine ``train`` section (suite budgets and defaults apply)."""
        return "train" in self.config_cls.model_fields

    def budget(self, config: Config, suite_budget: int) -> int:
        """The last budget point: a training attack's max_steps (the suite's budget when unset);
        an attack with its own grid (``config.points()``, point 0 = no attack) its last index."""
        if hasattr(config, "points"):
            return len(config.points()) - 1
        return (config.train.max_steps or suite_budget) if self.trains else suite_budget

    def eval_points(self, config: Config, suite_eval_at: list[int], suite_budget: int) -> list[int]:
        """Budget points to score: a training attack's suite ``eval_at`` up to its budget; an
        attack with its own grid scores every point of it."""
        budget = self.budget(config, suite_budget)
        if hasattr(config, "points"):
            return list(range(budget + 1))
        return sorted({s for s in suite_eval_at if s <= budget} | {0, budget})


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, config_cls: type[Config], paper: str = "", family: str = "fine-tuning",
                    budget_unit: str = "steps"):
    if family not in FAMILIES:
        raise ValueError(f"attack '{name}': family must be one of {FAMILIES}")

    def wrap(fn):
        _ATTACKS[name] = AttackSpec(name, config_cls, fn, paper, family, budget_unit)
        return fn
    return wrap


def attack_names() -> list[str]:
    return sorted(_ATTACKS)


def build_attack(name: str) -> AttackSpec:
    if name not in _ATTACKS:
        raise unknown_name("attack kind", name, _ATTACKS)
    return _ATTACKS[name]


class Adversary(Config):
    """One suite entry: a unique name, a registered attack (``kind``) and its validated config."""

    name: str = Field(description="Unique name within its suite, e.g. 'sft-adamw-1e-4'.")
    kind: str = Field(description="A registered attack (``immunelm attacks`` lists them).")
    config: SerializeAsAny[Config] = Field(description="The attack's own settings (its config class).")

    @property
    def spec(self) -> AttackSpec:
        return build_attack(self.kind)

    @property
    def family(self) -> str:
        return self.spec.family


def make_adversary(name: str, kind: str = "harmful_sft", label: str = "adversary", **fields: Any) -> Adversary:
    """Build an adversary from plain settings; errors are one line starting with ``label``."""
    spec = build_attack(kind)
    return Adversary(name=name, kind=kind, config=load_config(spec.config_cls, base=fields, label=label))
