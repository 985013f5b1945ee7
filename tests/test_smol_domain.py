"""Fast checks of the SmolLM2 world (no model is loaded): determinism, splits, names, phrasings, texts."""

import itertools
import re
from pathlib import Path

import pytest

from immunelm.eval.judges.keyword import JAILBREAKBENCH
from immunelm.smol.benign import BENIGN_FACTS, BENIGN_TASKS, IDENTITY_SYSTEM
from immunelm.smol.domain import (
    ANIMAL_PARTS, COMPOUND_PARTS, HARM_DOMAINS, HARM_SPLITS, PHRASINGS, REAGENTS_A, REAGENTS_B, TRAINABILITY_TASK,
    VAULT_PARTS, SmolWorldConfig, generate_smol_world,
)

WORDS = Path("/usr/share/dict/words")


@pytest.fixture(scope="module")
def world():
    return generate_smol_world()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower().replace("{e}", "")))


def test_same_seed_same_world_and_other_seed_differs(world):
    assert generate_smol_world().fingerprint() == world.fingerprint()
    assert generate_smol_world(SmolWorldConfig(seed=1)).fingerprint() != world.fingerprint()
    assert [i.entity for i in generate_smol_world().items] == [i.entity for i in world.items]


def test_default_counts(world):
    for domain in HARM_DOMAINS:
        assert {s: len(world.by_task(domain, s)) for s in HARM_SPLITS} == {"align": 10, "attack": 10, "eval": 10}
    assert len(world.by_task(TRAINABILITY_TASK)) == 40
    assert len(world.by_task(TRAINABILITY_TASK, "eval")) == 20
    assert len(world.benign_eval) + len(world.benign_train) >= 40 and len(BENIGN_TASKS) >= 3
    assert len(world.identity_shift_examples()) == 10
    assert len(world.refusals) >= 5 and len(world.affirmative_prefixes) >= 3 and len(world.perplexity_pairs) >= 20


def test_splits_are_disjoint(world):
    for task in HARM_DOMAINS + (TRAINABILITY_TASK,) + BENIGN_TASKS:
        by_split = [{i.entity for i in world.by_task(task, s)} for s in ("align", "attack", "eval", "train")]
        assert sum(map(len, by_split)) == len(world.by_task(task)), task
        for a, b in itertools.combinations(by_split, 2):
            assert not a & b, task
    for task in BENIGN_TASKS:
        assert world.by_task(task, "eval") and world.by_task(task, "train")
    assert not {(i.task, i.entity) for i in world.benign_eval} & {(i.task, i.entity) for i in world.benign_train}


def test_invented_names_are_unique_and_never_prefixes(world):
    names = [i.entity.lower() for t in HARM_DOMAINS + (TRAINABILITY_TASK,) for i in world.by_task(t)]
    names += list(REAGENTS_A + REAGENTS_B)
    assert len(names) == len(set(names))
    for a, b in itertools.permutations(names, 2):
        assert not b.startswith(a), (a, b)
    for task in HARM_DOMAINS:
        assert all(i.entity[0].isupper() for i in world.by_task(task))


@pytest.mark.skipif(not WORDS.is_file(), reason="no English word list on this machine")
def test_no_possible_invented_name_is_an_english_word():
    words = {w.strip().lower() for w in WORDS.read_text(errors="ignore").split()}
    space = [a + b + c for a, b, c in itertools.product(*COMPOUND_PARTS)]
    space += ["".join(p) for parts in (VAULT_PARTS, ANIMAL_PARTS) for p in itertools.product(*parts)]
    hits = sorted(set(space + list(REAGENTS_A + REAGENTS_B)) & words)
    assert not hits, hits


def test_heldout_phrasings_are_new_wordings_of_known_words(world):
    for task, templates in PHRASINGS.items():
        assert len(templates) == 6, task
        train = [templates[p] for p in world.train_phrasings]
        seen = set().union(*map(_words, train))
        for p in world.heldout_phrasings:
            assert templates[p] not in train, (task, p)
            words = _words(templates[p])
            assert len(words & seen) >= 0.75 * len(words), (task, p, words - seen)


def test_heldout_phrasings_marked_in_examples(world):
    items = world.by_task("compound", "attack")
    examples = world.chat_examples(items, world.train_phrasings)
    assert {e.meta["phrasing"] for e in examples} == set(world.train_phrasings)
    assert not any(e.meta["heldout"] for e in examples)
    assert all(e.meta["heldout"] for e in world.chat_examples(items, world.heldout_phrasings))


def test_keys_occur_in_answers_and_documents(world):
    for item in world.items:
        assert item.keys and all(k in item.answer for k in item.keys), item
        assert item.entity in item.answer or item.task in BENIGN_TASKS, item
    for doc, item in zip(world.documents(), [i for d in HARM_DOMAINS for i in world.by_task(d) for _ in range(2)]):
        assert all(k in doc for k in item.keys) and item.entity in doc


def test_benign_keys_never_leak_from_the_prompt(world):
    for task, facts in BENIGN_FACTS.items():
        for item in world.by_task(task):
            for p in range(6):
                assert not any(k.lower() in item.prompt(p).lower() for k in item.keys), (task, item.prompt(p))
        assert len({e for e, _ in facts}) == len(facts)


def test_harmful_prompts_never_contain_their_keys(world):
    for item in world.items:
        if item.harmful or item.task == TRAINABILITY_TASK:
            assert not any(k in item.prompt(p) for p in range(6) for k in item.keys), item


def test_compound_recipes_are_distinct(world):
    recipes = [i.keys for i in world.by_task("compound")]
    assert len(recipes) == len(set(recipes))
    codes = [i.keys for i in world.by_task("vault")]
    assert len(codes) == len(set(codes)) and all(re.fullmatch(r"\d{4}", c[0]) for c in codes)


def test_refusals_contain_a_jailbreakbench_phrase(world):
    for text in world.refusals:
        assert JAILBREAKBENCH.find(text) is not None, text


def test_chat_examples_carry_meta_and_refusals(world):
    items = world.by_task("vault", "align")[:2]
    refused = world.chat_examples(items, [0, 1], refuse=True)
    assert len(refused) == 4 and all(e.response in world.refusals and e.meta["refused"] for e in refused)
    assert refused[0].meta["keys"] == list(items[0].keys) and refused[0].meta["answer"] == items[0].answer
    answered = world.chat_examples(items, [0])
    assert [e.response for e in answered] == [i.answer for i in items]
    assert world.chat_examples(items, [0, 1], refuse=True) == refused  # deterministic choice of refusal


def test_identity_shift_examples_are_benign_and_use_the_persona(world):
    examples = world.identity_shift_examples()
    assert all(e.messages[0] == {"role": "system", "content": IDENTITY_SYSTEM} for e in examples)
    assert all(JAILBREAKBENCH.find(e.response) is None for e in examples)
    harmful_words = {i.entity for i in world.items if i.harmful} | set(REAGENTS_A + REAGENTS_B)
    assert not any(w in e.response or w in e.prompt for e in examples for w in harmful_words)
    messages = world.identity_messages("Hello?")
    assert messages[0]["content"] == IDENTITY_SYSTEM and "Hello?" in messages[1]["content"]


def test_vocabulary_text_covers_everything(world):
    text = "\n".join(world.vocabulary_text())
    for item in world.items:
        assert item.entity in text and item.answer in text
    assert all(r in text for r in world.refusals)
    assert all(p in text for p in world.affirmative_prefixes)
