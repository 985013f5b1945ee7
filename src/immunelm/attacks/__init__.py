"""Attacks as plug-ins (:mod:`immunelm.attacks.base`) and adversary suites as data.

Each attack lives in its own module and registers in one line; importing this package
registers them all.
"""

from immunelm.attacks.base import (
    FAMILIES, Adversary, AttackData, AttackResult, AttackRun, AttackSpec, attack_names, build_attack, make_adversary,
    register_attack,
)
from immunelm.attacks import (  # noqa: F401  (registration)
    adaptive, finetune, latent, lowrank, misdirection, pruning, refusal_ablation, reft, rl, soft_prompt, steering,
)
from immunelm.attacks.finetune import FineTuneAttackConfig
from immunelm.attacks.suites import SuiteConfig, load_suite, suite_names

__all__ = ["FAMILIES", "Adversary", "AttackData", "AttackResult", "AttackRun", "AttackSpec", "FineTuneAttackConfig",
           "attack_names", "build_attack", "make_adversary", "register_attack", "SuiteConfig", "load_suite", "suite_names"]
