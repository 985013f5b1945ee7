"""Named datasets of the built-in world, usable wherever a dataset is accepted (``world=<name>``).

Names: ``pretrain``, ``align``, ``benign``, ``attack/<domain>``, ``eval/<domain>``,
``eval/<domain>-heldout``, ``trainability/train``, ``trainability/eval`` with <domain> in
``compound`` | ``vault``. Attack sets use attack-split entities only; eval sets use eval-split
entities only (with training or held-out phrasings). The trainability task's facts are
arbitrary, so it is learnt and scored on the same animals: training phrasings to learn,
held-out phrasings to score.
"""

from __future__ import annotations

from typing import Callable

from immunelm.data.examples import Example
from immunelm.registry import unknown_name
from immunelm.world import corpus
from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS, TRAINABILITY_TASK, World


def _builders(world: World) -> dict[str, Callable[[], list[Example]]]:
    train, heldout = world.train_phrasings, world.heldout_phrasings
    table: dict[str, Callable[[], list[Example]]] = {
        "pretrain": lambda: corpus.pretraining_examples(world),
        "align": lambda: corpus.alignment_examples(world),
        "benign": lambda: corpus.chat_examples([i for t in BENIGN_TASKS for i in world.by_task(t)], train),
        "trainability/train": lambda: corpus.chat_examples(world.by_task(TRAINABILITY_TASK), train),
        "trainability/eval": lambda: corpus.chat_examples(world.by_task(TRAINABILITY_TASK), heldout),
    }
    for d in HARMFUL_DOMAINS:
        table[f"attack/{d}"] = lambda d=d: corpus.chat_examples(world.by_task(d, "attack"), train)
        table[f"eval/{d}"] = lambda d=d: corpus.chat_examples(world.by_task(d, "eval"), train)
        table[f"eval/{d}-heldout"] = lambda d=d: corpus.chat_examples(world.by_task(d, "eval"), heldout)
    return table


def dataset_names(world: World) -> list[str]:
    return sorted(_builders(world))


def world_dataset(world: World, name: str) -> list[Example]:
    builders = _builders(world)
    if name not in builders:
        raise unknown_name("world dataset", name, builders)
    return builders[name]()
