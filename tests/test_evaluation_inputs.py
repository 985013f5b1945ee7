"""Evaluation inputs are refused before the first model is evaluated (issue 10): model lists,
model sources (cheaply, without weights), Hub names while offline, and adversary suites."""

import json
import time

import pytest
import torch

from immunelm.api.evaluation import EvaluateConfig, ModelSpec, validate_evaluation
from immunelm.attacks import Adversary, load_suite, make_adversary, suite_names
from immunelm.attacks.suites.checks import check_distinct, effective_attack
from immunelm.config import load_config
from immunelm.errors import ImmuneLMError
from immunelm.models import loading
from immunelm.sources import check_model_source

TINY = [
    "organism.world.entities_per_harm_domain=6", "organism.world.n_countries=4", "organism.world.n_animals=4",
    "organism.world.n_words=4", "organism.pretrain.max_steps=8", "organism.pretrain.warmup_steps=2",
    "organism.align.max_steps=3",
]


def config(tmp_path, models: list[dict], *overrides: str) -> EvaluateConfig:
    cfg = load_config(EvaluateConfig, overrides=[*TINY, f"cache_dir={tmp_path / 'cache'}", *overrides])
    cfg.models = [ModelSpec(**m) for m in models]
    return cfg


def refused(cfg) -> str:
    with pytest.raises(ImmuneLMError) as info:
        validate_evaluation(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


REF = {"name": "ref", "source": "organism:aligned", "role": "reference"}


# --------------------------------------------------------------------------- the model list
def test_valid_models_pass_without_building_anything(tmp_path):
    task = validate_evaluation(config(tmp_path, [REF, {"name": "base", "source": "organism:base"}]))
    assert task.name == "world"
    assert not (tmp_path / "cache").exists()  # no organism was built to validate it


def test_last_model_is_checked_before_the_first_is_evaluated(tmp_path):
    message = refused(config(tmp_path, [REF, {"name": "mine", "source": str(tmp_path / "gone" / "model")}]))
    assert message.startswith("model 'mine': ") and "no such model directory" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("models, expect", [
    ([], "the list is empty"),
    ([{**REF, "name": ""}], "models[0].name: empty"),
    ([REF, {"name": " \t", "source": "organism:base"}], "models[1].name: empty"),
    ([REF, {"name": "ref ", "source": "organism:base"}], "duplicate name(s) ref"),
    ([REF, {**REF, "name": "other"}], "2 models have role 'reference' (ref, other)"),
    ([{**REF, "source": "  "}], "models[0].source: empty"),
])
def test_bad_model_lists(tmp_path, models, expect):
    assert expect in refused(config(tmp_path, models))


def test_role_must_be_known():
    with pytest.raises(ImmuneLMError, match=r"models.0.role.*'reference', 'defended' or 'base'"):
        load_config(EvaluateConfig, base={"models": [{"name": "a", "source": "organism:aligned", "role": "attacker"}]})


def test_no_reference_is_allowed(tmp_path):
    validate_evaluation(config(tmp_path, [{"name": "a", "source": "organism:aligned", "role": "defended"}]))


# --------------------------------------------------------------------------- sources, cheaply
def _model_dir(path, weights: dict[str, bytes] | None = None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name, data in (weights or {}).items():
        (path / name).write_bytes(data)
    return path


@pytest.mark.parametrize("source, expect", [
    ("organism:algned", "unknown organism stage 'algned'"),
    ("organism:", "unknown organism stage ''"),
    ("smol:tuned", "unknown smol stage 'tuned'"),
    ("./does/not/exist", "no such model directory"),
])
def test_bad_source_names(source, expect):
    with pytest.raises(ImmuneLMError, match=expect):
        check_model_source(source)


def test_source_files_are_checked_without_loading(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImmuneLMError, match="expected a model directory or a .gguf file"):
        check_model_source(str(tmp_path / "notes.txt"))
    (tmp_path / "fake.gguf").write_text("not a gguf")
    with pytest.raises(ImmuneLMError, match="not a GGUF file"):
        check_model_source(str(tmp_path / "fake.gguf"))
    (tmp_path / "real.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    check_model_source(str(tmp_path / "real.gguf"))  # the magic is enough; conversion happens at load


def test_weights_are_checked_by_their_header(tmp_path):
    from safetensors.torch import save_file

    good = _model_dir(tmp_path / "good")
    save_file({"w": torch.zeros(4, 4)}, str(good / "model.safetensors"))
    check_model_source(str(good))
    data = (good / "model.safetensors").read_bytes()
    truncated = _model_dir(tmp_path / "truncated", {"model.safetensors": data[:-16]})
    with pytest.raises(ImmuneLMError, match="model.safetensors: not a readable safetensors file"):
        check_model_source(str(truncated))
    pickles = _model_dir(tmp_path / "pickles", {"pytorch_model.bin": b"\x80\x04"})
    with pytest.raises(ImmuneLMError, match="only pickle weights.*never unpickles"):
        check_model_source(str(pickles))


def test_adapter_sources_check_their_base(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ImmuneLMError, match="immunelm_adapter.json"):
        check_model_source(str(adapter))
    (adapter / "immunelm_adapter.json").write_text(json.dumps({"base": "organism:nope"}))
    with pytest.raises(ImmuneLMError, match="unknown organism stage 'nope'"):
        check_model_source(str(adapter))
    (adapter / "immunelm_adapter.json").write_text(json.dumps({"base": str(adapter)}))
    with pytest.raises(ImmuneLMError, match="nest more than"):
        check_model_source(str(adapter))
    (adapter / "immunelm_adapter.json").write_text(json.dumps({"base": "organism:aligned"}))
    check_model_source(str(adapter))


def test_unreadable_tokenizer_is_one_line_naming_the_model(tmp_path):
    from safetensors.torch import save_file

    folder = _model_dir(tmp_path / "m")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    message = refused(config(tmp_path, [REF, {"name": "mine", "source": str(folder)}]))
    assert message.startswith("model 'mine': ") and "cannot load its tokenizer" in message


# --------------------------------------------------------------------------- Hub names offline
def test_hub_name_offline_fails_fast_with_a_local_path_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    message = refused(config(tmp_path, [REF, {"name": "mine", "source": "some-org/some-model"}]))
    assert time.perf_counter() - started < 5
    assert message.startswith("model 'mine': 'some-org/some-model'")
    assert "HF_HUB_OFFLINE=1" in message and "pass a local model directory" in message
    with pytest.raises(ImmuneLMError, match="HF_HUB_OFFLINE"):  # every loader, not only evaluate
        loading.load_model_and_tokenizer("some-org/some-model")


def test_hub_name_in_the_cache_or_reachable_passes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_in_hub_cache", lambda repo: True)
    loading.check_hub_source("some-org/some-model")
    monkeypatch.setattr(loading, "_in_hub_cache", lambda repo: False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for var in loading._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: False)
    with pytest.raises(ImmuneLMError, match="cannot be reached.*pass a local model directory"):
        loading.check_hub_source("some-org/some-model")
    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: True)
    loading.check_hub_source("some-org/some-model")


def test_unreachable_endpoint_probe_is_short():
    started = time.perf_counter()
    assert loading._hub_reachable("https://127.0.0.1:9", timeout=0.5) is False  # port 9: nothing listens
    assert time.perf_counter() - started < 2


# --------------------------------------------------------------------------- suites
@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_passes_every_rule(name):
    suite = load_suite(name)
    check_distinct(suite.expanded(), name)  # sampled search adversaries too
    assert all(0 <= s <= suite.budget for s in suite.eval_at)


def test_standard_adam_and_adamw_differ_as_in_tars_red_team():
    by_name = {a.name: a for a in load_suite("standard").adversaries}
    assert by_name["sft-adamw-1e-4"].config.train.weight_decay == 0.01  # torch's AdamW default, TAR's red team
    assert by_name["sft-adam-1e-4"].config.train.weight_decay == 0.0


def adversary(name="a", **train) -> Adversary:
    return make_adversary(name, train={"max_steps": 10, **train})


def changed(adv: Adversary, **fields) -> Adversary:
    return adv.model_copy(update={"config": adv.config.model_copy(update=fields)})


@pytest.mark.parametrize("a, b, same", [
    ({"optimizer": "adam"}, {"optimizer": "adamw", "weight_decay": 0.0}, True),
    ({"optimizer": "adam"}, {"optimizer": "adamw", "weight_decay": 0.01}, False),
    ({"optimizer": "adam", "weight_decay": 0.01}, {"optimizer": "adamw", "weight_decay": 0.01}, False),  # L2 vs decoupled
    ({"log_every": 5, "progress": False}, {"log_every": 50}, True),
    ({"optimizer": "adamw", "momentum": 0.9}, {"optimizer": "adamw"}, True),  # momentum is SGD's
    ({"optimizer": "sgd", "betas": [0.5, 0.5]}, {"optimizer": "sgd"}, True),  # betas are Adam's
    ({"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "sgd"}, False),
    ({"lr": 1e-4}, {"lr": 1e-3}, False),
    ({"lora": {"r": 8}}, {}, False),
])
def test_effectively_identical_adversaries(a, b, same):
    first, second = adversary("x", **a), adversary("y", **b)
    assert (effective_attack(first) == effective_attack(second)) is same
    if same:
        with pytest.raises(ImmuneLMError, match="'x' and 'y' are the same attack"):
            check_distinct([first, second], "s.yaml")
    else:
        check_distinct([first, second], "s.yaml")


def test_data_recipe_makes_adversaries_distinct():
    sft = make_adversary("a", harmful_fraction=0.5, train={"max_steps": 10})
    assert effective_attack(sft) == effective_attack(changed(sft, harmful_fraction=0.2))  # unused by sft
    mix = make_adversary("m", "harmful_mix", train={"max_steps": 10})
    assert effective_attack(mix) != effective_attack(changed(mix, harmful_fraction=0.2))
    assert effective_attack(sft) != effective_attack(changed(sft, seed=1))
    assert effective_attack(sft) != effective_attack(changed(sft, examples=10))


def test_default_eval_grid_is_cut_to_a_small_budget(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbudget: 30\nadversaries:\n  - {name: a}\n")
    assert load_suite(str(path)).eval_at == [0, 10, 25]


def test_adversary_budget_above_the_suite_budget_allows_later_eval_steps(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbudget: 10\neval_at: [0, 10, 40]\nadversaries:\n  - {name: a}\n"
                    "  - {name: long, train: {max_steps: 40}}\n")
    suite = load_suite(str(path))
    assert suite.eval_steps(suite.adversaries[1]) == [0, 10, 40] and suite.eval_steps(suite.adversaries[0]) == [0, 10]


def test_unknown_kind_is_refused_where_the_adversary_is_written():
    with pytest.raises(ImmuneLMError, match="unknown attack kind 'jailbreak'"):
        make_adversary("a", "jailbreak")


def test_results_record_the_seed_answers_were_sampled_with(tmp_path):
    from immunelm.api.evaluation import task_for
    from immunelm.eval.runner import Evaluator, resolve_settings

    cfg = config(tmp_path, [REF], "evaluation.generation={seed: 13, progress: false}")
    task = task_for(cfg)
    evaluator = Evaluator(cfg.evaluation, task, resolve_settings(cfg.evaluation, task))
    assert evaluator._report([], time.perf_counter(), None).provenance["seed"] == 13
