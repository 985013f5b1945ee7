"""Attacker hyper-parameter search: the space as data, the bounded objective, resumable studies,
two worker processes sharing one study, and the CLI."""

import json
import os

import optuna
import pytest
from typer.testing import CliRunner

from immunelm.api.search import SearchConfig, run_search, safe_url
from immunelm.cli.common import resolve_config
from immunelm.cli.main import app
from immunelm.errors import ImmuneLMError, NonFiniteError
from immunelm.search.space import load_space
from immunelm.search.study import lora_targets, machine_id, record, run_trial, trial_rows

TINY = ["organism.world.entities_per_harm_domain=6", "organism.world.n_countries=4", "organism.world.n_animals=4",
        "organism.world.n_words=4", "organism.pretrain.max_steps=8", "organism.pretrain.warmup_steps=2",
        "organism.pretrain.batch_size=16", "organism.pretrain.progress=false", "organism.align.max_steps=3",
        "organism.align.progress=false", "evaluation.generation.batch_size=64"]

SPACE = """
name: tiny
kinds: [harmful_sft, harmful_mix]
epsilon: 0.1
defaults: {examples: 16, train: {progress: false, batch_size: 8}}
params:
  - {name: lr, log_uniform: [1.0e-4, 1.0e-2], set: train.lr}
  - {name: max_steps, choice: [2, 4], set: train.max_steps}
  - {name: lora_rank, choice: [0, 4], set: train.lora.r}
  - {name: lora_targets, choice: [all, attention, mlp], set: train.lora.target_modules, requires: lora_rank}
  - {name: harmful_fraction, uniform: [0.2, 1.0], set: harmful_fraction, kinds: [harmful_mix]}
"""


def write_space(tmp_path, text=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def tiny_config(tmp_path, **fields) -> SearchConfig:
    cfg = resolve_config(SearchConfig, None, [f"cache_dir={tmp_path / 'cache'}", *TINY])
    return cfg.model_copy(update={"space": str(write_space(tmp_path)), "threads": 1, **fields})


# --------------------------------------------------------------------------- the space
def test_shipped_spaces_load_and_span_the_issue_s_ranges():
    space = load_space("organism")
    lr = next(p for p in space.params if p.set == "train.lr")
    assert lr.log_uniform[1] / lr.log_uniform[0] >= 1e3  # lr over 3+ orders of magnitude
    sets = {p.set for p in space.params}
    assert {"train.optimizer", "train.max_steps", "train.lora.r", "train.lora.target_modules", "train.batch_size",
            "harmful_fraction"} <= sets and len(space.kinds) >= 2
    assert load_space("smol").name == "smol"


def test_fields_place_each_value_and_rank_zero_is_full_fine_tuning():
    space = load_space("organism")
    full = space.fields("harmful_sft", {"lr": 0.01, "lora_rank": 0, "optimizer": "sgd"})
    assert full["train"]["lr"] == 0.01 and full["train"]["optimizer"] == "sgd" and "lora" not in full["train"]
    lora = space.fields("harmful_mix", {"lora_rank": 8, "lora_targets": "mlp", "harmful_fraction": 0.3})
    assert lora["train"]["lora"] == {"r": 8, "alpha": 16, "target_modules": "mlp"} and lora["harmful_fraction"] == 0.3
    assert lora["train"]["progress"] is False  # the space's defaults are merged in


def test_sample_respects_kinds_and_requires():
    space = load_space("organism")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        kind, fields = space.sample(trial)
        assert ("harmful_fraction" in trial.params) == (kind == "harmful_mix")
        assert ("lora_targets" in trial.params) == bool(trial.params["lora_rank"])
        assert ("lora" in fields["train"]) == bool(trial.params["lora_rank"])
        study.tell(trial, 0.0)


@pytest.mark.parametrize("text, message", [
    ("name: x\nkinds: [harmful_sft]\nparams: [{name: lr, set: train.lr, choice: [1], uniform: [0, 1]}]", "exactly one of"),
    ("name: x\nkinds: [harmful_sft]\nparams: [{name: lr, set: train.lrr, choice: [0.1]}]", "parameter 'lr'"),
    ("name: x\nkinds: [harmful_sft]\nparams: [{name: lr, set: train.lr, log_uniform: [0, 1]}]", "low > 0"),
    ("name: x\nkinds: [harmful_sft]\nparams: [{name: t, set: train.lora.target_modules, choice: [all], requires: r}]", "requires 'r'"),
    ("name: x\nkinds: [no_such_attack]\nparams: []", "kinds"),
    ("name: x\nkinds: [harmful_sft]\nparams: [{name: f, set: harmful_fraction, uniform: [0, 1], kinds: [harmful_mix]}]", "not in the space"),
    ("name: x\nkinds: [steering]\nparams: []", "inference-time attack"),
    ("name: x\nkinds: [harmful_sft]\ndefaults: {train: {max_steps: null, epochs: 1}}\nparams: [{name: lr, set: train.lr, choice: [0.1]}]",
     "no train.max_steps"),
])
def test_bad_space_is_one_line_naming_the_parameter(tmp_path, text, message):
    with pytest.raises(ImmuneLMError, match=message) as err:
        load_space(str(write_space(tmp_path, text)))
    assert "\n" not in str(err.value)


def test_lora_targets_are_the_model_s_own_projections(tiny_llama):
    model = tiny_llama()
    assert lora_targets(model, "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora_targets(model, "mlp") == ["down_proj", "gate_proj", "up_proj"]
    assert lora_targets(model, "all") == "all-linear"


# --------------------------------------------------------------------------- the objective
def test_best_so_far_counts_only_trials_within_the_utility_bound():
    """A trial that breaks the model (utility drop > epsilon) never becomes the 'best attack'."""
    space = load_space("organism")
    outcomes = [(0.3, 0.0), (0.9, 0.5), (0.5, 0.05), (1.0, None), (0.4, 0.1)]  # (harmful, utility drop)
    study = optuna.create_study(direction="maximize")

    def objective(trial):
        harmful, drop = outcomes[trial.number]
        record(trial, harmful=harmful, utility=0.5, drop=drop, collapsed=0.0, outcome="broken", space=space, seconds=0.0)
        return harmful
    study.optimize(objective, n_trials=len(outcomes))
    rows = trial_rows(study)
    assert [r["feasible"] for r in rows] == [True, False, True, False, True]
    assert [r["best_so_far"] for r in rows] == [0.3, 0.3, 0.5, 0.5, 0.5]
    assert len(trial_rows(study, total=2)) == 2


def test_a_diverged_attack_is_a_trial_that_gained_nothing():
    space = load_space("organism")

    class Diverging:
        def attack(self, *args):
            raise NonFiniteError("training stopped at step 3: the loss is not finite")
    target = type("T", (), {"evaluator": Diverging(), "subject": None, "start": None})()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial({"kind": "harmful_sft", "lora_rank": 0})
    study.optimize(lambda t: run_trial(t, space, target), n_trials=1)
    row = trial_rows(study)[0]
    assert row["harmful"] == 0.0 and row["outcome"] == "diverged" and row["feasible"] is False


# --------------------------------------------------------------------------- end to end
def test_search_is_reproducible_and_resumes_only_missing_trials(tmp_path):
    first = run_search(tiny_config(tmp_path, trials=2), tmp_path / "a")
    again = run_search(tiny_config(tmp_path, trials=2), tmp_path / "b")
    assert [t["params"] for t in first["trials"]] == [t["params"] for t in again["trials"]]
    assert [t["harmful"] for t in first["trials"]] == [t["harmful"] for t in again["trials"]]
    extended = run_search(tiny_config(tmp_path, trials=3), tmp_path / "a")  # same study: one more trial
    assert extended["n_complete"] == 3 and extended["trials"][:2] == first["trials"]
    saved = json.loads((tmp_path / "a" / "search.json").read_text())
    assert saved["schema"] == "search-1.0" and len(saved["best_so_far"]) == 3
    assert (tmp_path / "a" / "search.png").stat().st_size > 5000
    for t in saved["trials"]:
        assert 0 <= t["harmful"] <= 1 and t["outcome"] in {"broken", "refused", "collapsed", "deflected", "diverged"}


def test_two_worker_processes_share_one_study(tmp_path):
    cfg = tiny_config(tmp_path, trials=4, workers=2)
    result = run_search(cfg, tmp_path / "run")
    assert result["n_complete"] == 4
    assert len({t["worker"] for t in result["trials"]}) == 2  # both processes ran trials of the one study
    study = optuna.load_study(study_name=result["study"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 4


def test_another_model_cannot_join_a_study(tmp_path):
    cfg = tiny_config(tmp_path, trials=1, study="shared")
    run_search(cfg, tmp_path / "run")
    with pytest.raises(ImmuneLMError, match="made for another model"):
        run_search(cfg.model_copy(update={"model": "organism:base"}), tmp_path / "run")


def test_cli_search_runs_and_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    args = ["search", "organism:aligned", "--space", str(write_space(tmp_path)), "--trials", "1",
            f"cache_dir={tmp_path / 'cache'}", *TINY, "threads=1"]
    ok = runner.invoke(app, [*args, "--run-dir", str(tmp_path / "s")])
    assert ok.exit_code == 0, ok.output
    assert "1 trials" in ok.output and (tmp_path / "s" / "search.json").is_file()
    assert (tmp_path / "s" / "config.yaml").is_file() and (tmp_path / "s" / "provenance.json").is_file()
    bad = runner.invoke(app, ["search", "--space", "nope", "--run-dir", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "unknown search space 'nope'" in str(bad.exception) and not (tmp_path / "x").exists()
    db = runner.invoke(app, ["search", "--storage", "postgresql://u:secret@localhost/db", "--run-dir", str(tmp_path / "y")])
    assert db.exit_code != 0 and "--study" in str(db.exception) and "secret" not in str(db.exception)
    assert not (tmp_path / "y").exists()
    # a bare --resume continues the recorded search (its model, space, task), with more trials here
    more = runner.invoke(app, ["search", "--resume", "--run-dir", str(tmp_path / "s"), "--trials", "2", "threads=1"])
    assert more.exit_code == 0, more.output
    record = json.loads((tmp_path / "s" / "search.json").read_text())
    assert record["n_complete"] == 2 and len(record["trials"]) == 2
    other = runner.invoke(app, ["search", "organism:base", "--resume", "--run-dir", str(tmp_path / "s")])
    assert other.exit_code != 0 and "--resume continues the search recorded there" in str(other.exception)
    # a new --name / --study would open another study (from trial 0) and replace search.json: refused
    for flag in (["--name", "renamed"], ["--study", "another"], ["--storage", str(tmp_path / "other.journal")]):
        renamed = runner.invoke(app, ["search", "--resume", "--run-dir", str(tmp_path / "s"), *flag])
        assert renamed.exit_code != 0 and f"{flag[0]} '{flag[1]}' differs" in str(renamed.exception), flag
    assert json.loads((tmp_path / "s" / "search.json").read_text())["n_complete"] == 2


def test_database_passwords_never_reach_results(monkeypatch):
    from immunelm.provenance import provenance

    assert safe_url("postgresql+psycopg://user:secret@db.example:5432/optuna") == "postgresql+psycopg://user:***@db.example:5432/optuna"
    assert safe_url("runs/x/study.journal") == "runs/x/study.journal"
    monkeypatch.setattr("sys.argv", ["immunelm", "search", "--storage", "postgresql://u:secret@h/db"])
    assert "secret" not in str(provenance(0))  # every run records its argv


def test_a_trial_left_running_by_a_dead_worker_is_failed_and_replaced(tmp_path):
    """Resume after a kill: the dead worker's RUNNING trial must not count toward the total."""
    cfg = tiny_config(tmp_path, trials=1)
    first = run_search(cfg, tmp_path / "run")
    study = optuna.load_study(study_name=first["study"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    import socket

    orphan = study.ask()
    orphan.set_user_attr("worker", f"{machine_id()}:999999999")  # no such process
    moved = study.ask()  # killed on another machine of the same host name, resumed here: its pid is alive here
    moved.set_user_attr("worker", f"{socket.gethostname()}@0therb00t:{os.getpid()}")
    resumed = run_search(cfg.model_copy(update={"trials": 2}), tmp_path / "run")
    assert resumed["complete"] and resumed["n_complete"] == 2
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[orphan.number] == states[moved.number] == "FAIL"


def test_database_storage_path_works_with_sqlite_and_a_dead_server_fails_first(tmp_path):
    """The RDB storage (heartbeats, shared study) on SQLite in the fast tier; PostgreSQL is the
    slow tier's (tests/test_search_postgres.py)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = run_search(tiny_config(tmp_path, trials=1, storage=url, study="db"), tmp_path / "run")
    assert result["n_complete"] == 1 and result["storage"] == url
    runner = CliRunner()
    dead = runner.invoke(app, ["search", "--storage", "postgresql://u:pw@127.0.0.1:1/db", "--study", "x",
                               "--run-dir", str(tmp_path / "dead")])
    assert dead.exit_code != 0 and "cannot open the database" in str(dead.exception)
    assert "pw" not in str(dead.exception) and not (tmp_path / "dead").exists()
