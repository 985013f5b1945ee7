"""The world read as an unlearning task (issue 12): forget one harm domain's knowledge, retain the
benign tasks and the other harm domain, as the unlearning literature scores it.

* forget set (the defence's ``data.harmful``): the forget domain's *align*-split items with their
  answers; forget quality is measured on its *eval*-split entities (never trained on by anyone), so
  "forgotten" means the knowledge, not the memorised pairs;
* retain set (``data.benign``): every benign task item plus the other domain's align-split items,
  answered (the other domain is knowledge to keep in this reading, not to refuse);
* relearning: fine-tuning on the forget domain's *attack*-split pairs (disjoint entities) or on a
  benign downstream task, then forget quality again.

The starting model is the helpful-only ``base`` stage (it knows everything and refuses nothing),
as unlearning starts from a model that has the knowledge.
"""

from __future__ import annotations

from immunelm.defences import DefenceData
from immunelm.world import corpus
from immunelm.world.measure import score_items
from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS, TRAINABILITY_TASK, World


def other_domain(forget: str) -> str:
    if forget not in HARMFUL_DOMAINS:
        raise ValueError(f"forget domain must be one of {HARMFUL_DOMAINS}, got {forget!r}")
    return next(d for d in HARMFUL_DOMAINS if d != forget)


def unlearning_data(world: World, forget: str = "compound") -> DefenceData:
    retain_items = [i for t in BENIGN_TASKS for i in world.by_task(t)] + world.by_task(other_domain(forget), "align")
    return DefenceData(
        refusals=[],
        harmful=corpus.chat_examples(world.by_task(forget, "align"), world.train_phrasings),
        benign=corpus.chat_examples(retain_items, world.train_phrasings),
    )


def relearning_examples(world: World, forget: str = "compound", n: int = 100, seed: int = 0):
    """The attacker's relearning data: forget-domain pairs of attack-split entities."""
    return corpus.attack_examples(world, forget, n, seed)


def downstream_examples(world: World):
    """A benign downstream task the model never trained on (the world's trainability task)."""
    return corpus.chat_examples(world.by_task(TRAINABILITY_TASK), world.train_phrasings)


def unlearning_scores(model, tokenizer, world: World, forget: str = "compound") -> dict[str, float]:
    """Exact accuracies: forget (eval-split entities; lower = better forgotten), retain domain
    (the other domain's eval split) and benign (every benign task)."""
    phrasings = world.train_phrasings
    benign = [i for t in BENIGN_TASKS for i in world.by_task(t)]
    return {
        "forget_accuracy": score_items(model, tokenizer, world.by_task(forget, "eval"), phrasings)["accuracy"],
        "retain_domain_accuracy": score_items(model, tokenizer, world.by_task(other_domain(forget), "eval"), phrasings)["accuracy"],
        "benign_accuracy": score_items(model, tokenizer, benign, phrasings)["accuracy"],
    }
