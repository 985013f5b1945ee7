"""Fine-tuning attacks (the adversary family every paper uses) and adversary suites as data."""

from immunelm.attacks.base import AdversaryConfig, AttackData, build_attack_examples, attack_kinds
from immunelm.attacks.suites import SuiteConfig, load_suite, suite_names

__all__ = ["AdversaryConfig", "AttackData", "build_attack_examples", "attack_kinds", "SuiteConfig", "load_suite", "suite_names"]
