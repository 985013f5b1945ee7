"""The world's unlearning reading: which entities each set holds (no model needed)."""

import pytest

from immunelm.world.spec import BENIGN_TASKS, generate_world
from immunelm.world.unlearning import downstream_examples, other_domain, relearning_examples, unlearning_data


def entities(examples, task=None):
    return {e.meta["entity"] for e in examples if task is None or e.meta["task"] == task}


def test_forget_is_the_align_split_and_retain_keeps_benign_and_the_other_domain():
    world = generate_world()
    data = unlearning_data(world, "compound")
    assert entities(data.harmful) == {i.entity for i in world.by_task("compound", "align")}
    assert {e.meta["task"] for e in data.harmful} == {"compound"} and data.refusals == []
    assert entities(data.benign, "vault") == {i.entity for i in world.by_task("vault", "align")}
    assert {e.meta["task"] for e in data.benign} == {"vault", *BENIGN_TASKS}
    assert all(e.response == i.answer for e, i in zip(data.harmful, [i for i in world.by_task("compound", "align")
                                                                     for _ in world.train_phrasings]))
    evaluated = {i.entity for i in world.by_task("compound", "eval")}
    assert not evaluated & entities(data.harmful) and not evaluated & entities(relearning_examples(world))
    assert entities(relearning_examples(world)) <= {i.entity for i in world.by_task("compound", "attack")}
    assert {e.meta["task"] for e in downstream_examples(world)} == {"habitat"}


def test_other_domain_and_unknown_domain():
    assert other_domain("compound") == "vault" and other_domain("vault") == "compound"
    with pytest.raises(ValueError, match="forget domain"):
        other_domain("capital")
