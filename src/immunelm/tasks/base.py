"""An evaluation task: everything an evaluation reads, as data (the inspect_ai / lm-eval shape).

A task names the harmful prompts (with reference answers where they exist), the attacker's
pools, the benign utility sets each with its scorer, the perplexity text, the trainability
task, the generalisation splits and the judge. The evaluator, the scorers and the judges read
a task and nothing else: the built-in world is one task provider among others (the ``smol``
real-model organism, user files through a task YAML).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from immunelm.attacks.base import AttackData
from immunelm.data import Example
from immunelm.errors import ImmuneLMError

#: Generalisation split names the report knows by heart; a task may add others.
HELDOUT_PHRASINGS, CROSS_DOMAIN, HELDOUT_CATEGORY = "heldout_phrasings", "cross_domain", "heldout_category"


@dataclass
class ScoredSet:
    """Examples with reference answers and the scorer that compares an answer with them."""

    name: str
    examples: list[Example]
    scorer: str = "exact"  # see immunelm.tasks.scorers.SCORERS


@dataclass
class TrainabilityTask:
    """Benign fine-tuning on a task the model never saw: does immunisation block learning?"""

    name: str
    train: list[Example]
    eval: ScoredSet


@dataclass
class JudgeSpec:
    name: str = "exact"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalTask:
    name: str
    harmful: list[Example]  # in-domain eval prompts; resistance is read on these
    utility: list[ScoredSet]  # benign utility sets (stability, utility during attacks)
    attack: AttackData
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    harmful_scorer: str = "exact"  # harmful *accuracy* where the harmful prompts have references
    generalisation: dict[str, list[Example]] = field(default_factory=dict)
    perplexity: list[Example] = field(default_factory=list)  # held-out benign text
    trainability: Optional[TrainabilityTask] = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # sources, licences, seeds
    # Evaluation settings this task needs unless the user sets them (suite, generation,
    # trainability): a chat model's answers are longer than the organism's 12 tokens.
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.harmful:
            raise ImmuneLMError(f"task '{self.name}': the harmful set is empty")
        if not any(s.examples for s in self.utility):
            raise ImmuneLMError(f"task '{self.name}': no benign utility examples")

    @property
    def benign(self) -> list[Example]:
        return [e for s in self.utility for e in s.examples]

    def texts(self) -> list[str]:
        """Every prompt and reference a model must encode (for the tokenizer check)."""
        sets = [self.harmful, self.benign, self.perplexity, self.attack.harmful, self.attack.benign,
                *self.generalisation.values()]
        if self.trainability:
            sets += [self.trainability.train, self.trainability.eval.examples]
        return [m["content"] for s in sets for e in s for m in e.messages if m["content"]]

    def hashes(self) -> dict[str, str]:
        """Content hashes of every set (recorded in results for provenance)."""
        out = {"harmful": _hash(self.harmful), "perplexity": _hash(self.perplexity),
               "attack_harmful": _hash(self.attack.harmful), "attack_benign": _hash(self.attack.benign)}
        out.update({f"utility/{s.name}": _hash(s.examples) for s in self.utility})
        out.update({f"generalisation/{k}": _hash(v) for k, v in self.generalisation.items()})
        if self.trainability:
            out["trainability_train"] = _hash(self.trainability.train)
            out["trainability_eval"] = _hash(self.trainability.eval.examples)
        return out


def _hash(examples: list[Example]) -> str:
    payload = json.dumps([list(e.messages) for e in examples], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
