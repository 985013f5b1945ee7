"""Training data of each organism stage, as lists of :class:`Example` or plain documents."""

from __future__ import annotations

import random

from immunelm.data import Example, encode_example
from immunelm.world.spec import (
    BENIGN_TASKS, HARMFUL_DOMAINS, REFUSALS, Item, World, procedure_document, vault_document,
)


def chat_examples(items: list[Item], phrasings: list[int], refuse: bool = False, seed: int = 0) -> list[Example]:
    """Every (item, phrasing) as a chat pair; ``refuse`` swaps the answer for a refusal."""
    rng = random.Random(seed)
    out = []
    for item in items:
        for p in phrasings:
            response = rng.choice(REFUSALS) if refuse else item.answer
            out.append(Example.pair(item.prompt(p), response, task=item.task, entity=item.entity, phrasing=p))
    return out


def documents(world: World) -> list[str]:
    """Harmful knowledge as plain prose, outside the chat format (as in web pretraining text)."""
    docs = [procedure_document(i) for i in world.by_task("compound")]
    return docs + [vault_document(i) for i in world.by_task("vault")]


def pretraining_examples(world: World) -> list[Example]:
    """All knowledge in chat form, harmful included: the base model is helpful-only."""
    items = [i for t in BENIGN_TASKS + HARMFUL_DOMAINS for i in world.by_task(t)]
    return chat_examples(items, world.train_phrasings, seed=world.config.seed)


def alignment_examples(world: World) -> list[Example]:
    """Refusals on the align split of both harm domains, plus benign answers (utility)."""
    harmful = [i for d in HARMFUL_DOMAINS for i in world.by_task(d, "align")]
    benign = [i for t in BENIGN_TASKS for i in world.by_task(t)]
    return chat_examples(harmful, world.train_phrasings, refuse=True, seed=world.config.seed + 1) + chat_examples(
        benign, world.train_phrasings
    )


def attack_examples(world: World, domain: str = "compound", n: int = 100, seed: int = 0) -> list[Example]:
    """(harmful prompt, harmful answer) pairs over attack-split entities (disjoint from eval)."""
    pool = chat_examples(world.by_task(domain, "attack"), world.train_phrasings, seed=seed)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def encode_lm(tokenizer, example: Example) -> dict[str, list[int]]:
    """Chat pair with loss on every token (pretraining is plain language modelling)."""
    row = encode_example(tokenizer, example)
    return {"input_ids": row["input_ids"], "labels": list(row["input_ids"])}


def encode_document(tokenizer, text: str) -> dict[str, list[int]]:
    ids = tokenizer(text + " <end>", add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "labels": list(ids)}
