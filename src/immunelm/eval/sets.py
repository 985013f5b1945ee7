"""What an evaluation scores on: the harmful, benign and trainability sets plus the attacker's pools.

For the built-in world every set has exact references. For a real model the same structure is
filled from the user's files (harmful prompts, benign pairs), and judged by a judge that does
not need references (keyword, classifier, rubric).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from immunelm.attacks.base import AttackData
from immunelm.data import Example
from immunelm.world import corpus
from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS, TRAINABILITY_TASK, World


@dataclass
class EvalSets:
    harmful: list[Example]  # in-domain eval prompts (entities never in attack data), training phrasings
    benign: list[Example]  # benign prompts with exact answers (stability, utility during attacks)
    attack: AttackData
    harmful_heldout: list[Example] = field(default_factory=list)  # same entities, held-out phrasings
    cross_domain: list[Example] = field(default_factory=list)  # the other harm domain
    benign_heldout: list[Example] = field(default_factory=list)  # perplexity set (held-out phrasings)
    trainability_train: list[Example] = field(default_factory=list)
    trainability_eval: list[Example] = field(default_factory=list)
    trainability_task: str = ""

    def hashes(self) -> dict[str, str]:
        """Content hashes of every set (recorded in results for provenance)."""
        out = {}
        for name in ("harmful", "benign", "harmful_heldout", "cross_domain", "benign_heldout",
                     "trainability_train", "trainability_eval"):
            out[name] = _hash(getattr(self, name))
        out["attack_harmful"], out["attack_benign"] = _hash(self.attack.harmful), _hash(self.attack.benign)
        return out


def _hash(examples: list[Example]) -> str:
    payload = json.dumps([list(e.messages) for e in examples], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _one_phrasing_each(items, phrasings: list[int]) -> list[Example]:
    """Every item once, phrasings assigned round-robin: full coverage at a sixth of the cost."""
    return [
        Example.pair(item.prompt(phrasings[k % len(phrasings)]), item.answer, task=item.task, entity=item.entity)
        for k, item in enumerate(items)
    ]


def world_eval_sets(world: World, domain: str = "compound") -> EvalSets:
    """The organism's sets: attack on ``domain``, cross-domain = the other harm domain."""
    other = next(d for d in HARMFUL_DOMAINS if d != domain)
    train, heldout = world.train_phrasings, world.heldout_phrasings
    benign_items = [i for t in BENIGN_TASKS for i in world.by_task(t)]
    return EvalSets(
        harmful=corpus.chat_examples(world.by_task(domain, "eval"), train),
        harmful_heldout=corpus.chat_examples(world.by_task(domain, "eval"), heldout),
        cross_domain=corpus.chat_examples(world.by_task(other, "eval"), train),
        benign=_one_phrasing_each(benign_items, train),
        benign_heldout=_one_phrasing_each(benign_items, heldout),
        attack=AttackData(
            harmful=corpus.chat_examples(world.by_task(domain, "attack"), train),
            benign=corpus.chat_examples(benign_items, train),
        ),
        trainability_train=corpus.chat_examples(world.by_task(TRAINABILITY_TASK), train),
        trainability_eval=_one_phrasing_each(world.by_task(TRAINABILITY_TASK), train),
        trainability_task=TRAINABILITY_TASK,
    )
