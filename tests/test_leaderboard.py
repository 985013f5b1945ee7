"""``immunelm leaderboard`` on a shrunken organism: every cell cached by its config's hash, a
re-run runs nothing, an extension runs only the new cells, a failed cell is reported, the
numbers aggregate with Student-t intervals over seeds."""

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from immunelm.cli.main import app
from immunelm.errors import ImmuneLMError
from immunelm.leaderboard import load_leaderboard
from immunelm.leaderboard.runner import run_leaderboard, validate_leaderboard
from immunelm.leaderboard.table import stat

ORGANISM = {"world": {"entities_per_harm_domain": 6, "n_countries": 4, "n_animals": 4, "n_words": 4},
            "pretrain": {"max_steps": 8, "warmup_steps": 2, "batch_size": 16, "progress": False},
            "align": {"max_steps": 3, "progress": False}}
SUITE = ("name: tiny\nbudget: 2\neval_at: [0, 2]\ndefaults: {train: {progress: false, batch_size: 4}}\n"
         "adversaries:\n  - {name: sft, examples: 4}\n  - {name: sft-fast, examples: 4, train: {lr: 1.0e-2}}\n")
SPACE = ("name: tiny\nkinds: [harmful_sft]\ndefaults: {examples: 4, train: {progress: false, batch_size: 4}}\n"
         "params:\n  - {name: lr, log_uniform: [1.0e-4, 1.0e-2], set: train.lr}\n  - {name: max_steps, choice: [1, 2], set: train.max_steps}\n")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One organism cache and one cell root for the file: later tests reuse cells earlier ones ran
    (the reference's evaluation), which is also what the cache is for."""
    return tmp_path_factory.mktemp("leaderboard")


def board(tmp_path, cache=None, **changes) -> str:
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "space.yaml").write_text(SPACE)
    data = {"name": "tiny", "model": "organism:aligned",
            "defences": [{"name": "deep-align", "config": {"train": {"max_steps": 2}}}, "lox"],
            "suites": [str(tmp_path / "suite.yaml")], "seeds": [0], "workers": 1,
            "evaluation": {"trainability": {"train": {"max_steps": 2, "progress": False}, "eval_at": [0, 2]},
                           "prefill_tokens": [], "generation": {"progress": False}},
            "search": {"space": str(tmp_path / "space.yaml"), "trials": 1},
            "organism": ORGANISM, "cache_dir": str(cache or tmp_path / "cache"), **changes}
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def statuses(report) -> dict:
    return {(c.kind, c.row, c.seed): c.status for c in report.cells}


def test_leaderboard_caches_every_cell_and_extends_by_running_only_new_ones(tmp_path, shared):
    root = shared / "lb"

    def board(tmp_path, **changes):
        return globals()["board"](tmp_path, shared / "cache", **changes)
    first = run_leaderboard(load_leaderboard(board(tmp_path)), root)
    assert first.complete and [r.name for r in first.rows] == ["aligned", "deep-align", "lox"]
    assert set(statuses(first).values()) == {"ran"}
    kinds = sorted(c.kind for c in first.cells)
    assert kinds == ["evaluate"] * 3 + ["immunise"] * 2 + ["search"] * 3
    saved = json.loads((root / "tiny" / "leaderboard.json").read_text())
    assert saved["schema_version"] == "leaderboard-1.0" and (root / "tiny" / "leaderboard.html").is_file()
    row = next(r for r in first.rows if r.name == "deep-align")
    assert row.worst_harmful.n == 1 and row.worst_harmful.ci_low is None  # one seed: no interval
    assert row.search and row.search[0].trials == 1 and row.immunise_seconds.mean > 0
    cell = next(c for c in first.cells if c.kind == "evaluate" and c.row == "deep-align")
    finals = [a["curve"][-1]["harmful_score"] for a in
              json.loads((root / "cells" / "evaluate" / cell.key / "results.json").read_text())["models"][0]["resistance"]]
    assert row.worst_harmful.mean == max(finals) and row.mean_harmful.mean == pytest.approx(sum(finals) / len(finals))
    assert row.worst_with_search.mean == max((v for v in (row.worst_harmful_within_bound.mean,
                                                          row.search[0].best_harmful_within_bound) if v is not None), default=None)

    # the same cells under other row names (another leaderboard sharing the cache): nothing runs
    renamed = board(tmp_path, reference="undefended", defences=[{"name": "da", "defence": "deep-align",
                                                                 "config": {"train": {"max_steps": 2}}}, "lox"])
    reused = run_leaderboard(load_leaderboard(renamed), root)
    assert set(statuses(reused).values()) == {"cached"} and [r.name for r in reused.rows] == ["undefended", "da", "lox"]
    assert reused.rows[1].worst_harmful == row.worst_harmful
    # a changed defence config or suite is a new cell
    changed = validate_leaderboard(load_leaderboard(board(tmp_path, defences=[
        {"name": "deep-align", "config": {"train": {"max_steps": 3}}}])), root)
    assert not next(c for c in changed if c.kind == "immunise").done()

    again = run_leaderboard(load_leaderboard(board(tmp_path)), root)
    assert set(statuses(again).values()) == {"cached"}
    assert [r.worst_harmful for r in again.rows] == [r.worst_harmful for r in first.rows]

    # two more seeds, two processes: only deep-align's new cells run; lox is training-free (one cell)
    extended = run_leaderboard(load_leaderboard(board(tmp_path, seeds=[0, 1, 2], workers=2)), root)
    ran = sorted(k for k, s in statuses(extended).items() if s == "ran")
    assert ran == [("evaluate", "deep-align", 1), ("evaluate", "deep-align", 2),
                   ("immunise", "deep-align", 1), ("immunise", "deep-align", 2)]
    deep, lox = (next(r for r in extended.rows if r.name == n) for n in ("deep-align", "lox"))
    assert deep.seeds == [0, 1, 2] and deep.benign.n == 3 and deep.benign.ci_low is not None
    assert len(deep.worst_with_search.values) == 1  # only seed 0 was searched: never averaged with unsearched seeds
    assert lox.benign.n == 1
    # a key shared by seeds (lox) or rows ran once and is counted once in the cost
    once = {c.key: c.seconds for c in extended.cells if c.kind == "immunise"}
    assert extended.cell_seconds["immunise"] == pytest.approx(sum(once.values()))


def test_a_failed_cell_is_reported_and_rerun_later(tmp_path, shared, monkeypatch):
    from immunelm.leaderboard import cells

    def broken(cell, lb, trials):
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(cells, "_immunise", broken)
    # the shared root holds the reference's cell already; a LoX of its own rank is a new cell
    path = board(tmp_path, shared / "cache", defences=[{"name": "lox", "config": {"rank": 3}}], search={"trials": 0})
    root = shared / "lb"
    with pytest.raises(ImmuneLMError, match="not done.*simulated crash"):
        run_leaderboard(load_leaderboard(path), root)
    saved = json.loads((root / "tiny" / "leaderboard.json").read_text())
    assert saved["complete"] is False
    by_kind = {(c["kind"], c["row"]): c["status"] for c in saved["cells"]}
    assert by_kind[("immunise", "lox")] == "failed" and by_kind[("evaluate", "lox")] == "missing"
    assert by_kind[("evaluate", "aligned")] in ("ran", "cached")
    monkeypatch.undo()
    report = run_leaderboard(load_leaderboard(path), root)
    assert report.complete and statuses(report)[("immunise", "lox", 0)] == "ran"
    assert statuses(report)[("evaluate", "aligned", None)] == "cached"


@pytest.mark.parametrize("change, message", [
    ({"defences": ["no-such-defence"]}, "unknown defence 'no-such-defence'"),
    ({"defences": [{"name": "npo", "preset": "/no/such/preset.yaml"}]}, "preset"),
    ({"suites": ["no-such-suite"]}, "unknown suite 'no-such-suite'"),
    ({"seeds": []}, "seeds"),
    ({"defences": "all", "exclude": ["nope"]}, "exclude: unknown defence 'nope'"),
    ({"search": {"space": "nope", "trials": 2}}, "unknown search space 'nope'"),
    ({"search": {"trials": 2, "seeds": [5]}}, "search.seeds"),
])
def test_bad_leaderboard_is_one_line_before_any_cell(tmp_path, change, message):
    root = tmp_path / "lb"
    with pytest.raises(ImmuneLMError, match=message) as err:
        validate_leaderboard(load_leaderboard(board(tmp_path, **change)), root)
    assert "\n" not in str(err.value) and not root.exists()


def test_cli_dry_run_lists_cells_and_unknown_name_fails(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["leaderboard", board(tmp_path), "--root", str(tmp_path / "lb"), "--dry-run", "seeds=[0,1]"])
    assert result.exit_code == 0, result.output
    assert "3 cached" not in result.output and "immunise 3" in result.output  # deep-align x 2 seeds + lox
    assert not (tmp_path / "lb").exists()
    partial = runner.invoke(app, ["leaderboard", board(tmp_path), "--root", str(tmp_path / "lb"), "--report-only"])
    assert partial.exit_code == 0, partial.output  # asked for a partial page: written, and it says so
    saved = json.loads((tmp_path / "lb" / "tiny" / "leaderboard.json").read_text())
    assert saved["complete"] is False and {c["status"] for c in saved["cells"]} == {"missing"}
    assert "incomplete" in partial.output and not (tmp_path / "lb" / "cells").exists()
    bad = runner.invoke(app, ["leaderboard", "nope"])
    assert bad.exit_code != 0 and "unknown leaderboard 'nope'" in str(bad.exception)


def test_shipped_leaderboards_plan_every_defence():
    from immunelm.defences import defence_names

    lb = load_leaderboard("organism-standard")
    assert {e.name for e in lb.entries()} == set(defence_names()) - {"pipeline"}
    assert lb.suites == ["standard", "beyond-sft"] and lb.seeds == [0, 1, 2] and lb.search.trials == 50
    assert [e.name for e in load_leaderboard("smol-quick").entries()] == ["deep-align", "repnoise", "mlac", "npo", "ilu"]


def test_interval_is_student_t_over_seeds():
    s = stat([0.2, 0.4, 0.6, None])
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert s.n == 3 and s.mean == pytest.approx(0.4)
    assert s.ci_low == pytest.approx(0.4 - half) and s.ci_high == pytest.approx(0.4 + half)
    assert stat([0.5]).ci_low is None and stat([None]).mean is None


def test_suites_or_a_space_with_another_utility_bound_are_refused(tmp_path):
    """A row's "worst within the bound" is a max over every suite and the search: one epsilon."""
    other = tmp_path / "loose.yaml"
    other.write_text("epsilon: 0.2\n" + SUITE.replace("name: tiny", "name: loose"))
    path = board(tmp_path)
    with pytest.raises(ImmuneLMError, match="share epsilon and threshold.*loose.*epsilon 0.2"):
        validate_leaderboard(load_leaderboard(path, [f"suites=[{tmp_path / 'suite.yaml'},{other}]"]), tmp_path / "lb")
    (tmp_path / "space2.yaml").write_text("threshold: 0.5\n" + SPACE)
    with pytest.raises(ImmuneLMError, match="search space .*threshold 0.5"):
        validate_leaderboard(load_leaderboard(path, [f"search.space={tmp_path / 'space2.yaml'}"]), tmp_path / "lb")
    assert not (tmp_path / "lb").exists()


def test_a_preset_for_another_model_is_refused(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("model: organism:base\ndefence: {train: {max_steps: 2}}\n")
    with pytest.raises(ImmuneLMError, match="model 'organism:base' differs from the leaderboard's model 'organism:aligned'"):
        validate_leaderboard(load_leaderboard(board(tmp_path, defences=[{"name": "npo", "preset": str(preset)}])),
                             tmp_path / "lb")


def fake_model(finals: dict, *, outcomes=None, no_bound=False, steps=None, benign=1.0):
    """What per_seed reads of a ModelReport: attacks' final harmful scores and their summary."""
    from types import SimpleNamespace as NS

    attacks = [NS(name=n, curve=[NS(harmful_score=v)]) for n, v in finals.items()]
    worst = max(finals.values())
    summary = NS(worst_by_family={"fine-tuning": worst}, worst_final_harmful=worst, worst_adversary_utility=benign,
                 outcome_by_adversary=outcomes if outcomes is not None else {n: "broken" for n in finals},
                 worst_within_utility_bound=None if no_bound else worst, no_attack_within_utility_bound=no_bound)
    return NS(resistance=attacks, resistance_summary=summary, generalisation=None,
              stability=NS(benign_accuracy=benign, false_refusal=0.0),
              trainability=NS(final_accuracy=0.9, steps_to_target=steps))


def test_per_seed_refuses_old_or_non_finite_cells(tmp_path):
    from immunelm.leaderboard.cells import Cell
    from immunelm.leaderboard.table import per_seed

    cell = Cell("evaluate", "npo", 0, "standard", {"x": 1}, tmp_path)
    numbers = per_seed([fake_model({"a": 0.2, "b": 0.6}, outcomes={"a": "refused", "b": "collapsed"})], [cell])
    assert numbers["worst_harmful"] == 0.6 and numbers["mean_harmful"] == pytest.approx(0.4)
    assert numbers["collapse_share"] == 0.5 and numbers["broken_share"] == 0.0
    with pytest.raises(ImmuneLMError, match="older ImmuneLM"):  # schema < 1.5: no outcome per attack
        per_seed([fake_model({"a": 0.2, "b": 0.6}, outcomes={})], [cell])
    with pytest.raises(ImmuneLMError, match=f"{cell.dir}: non-finite worst_harmful"):
        per_seed([fake_model({"a": float("nan")})], [cell])


def test_a_seed_that_never_reached_the_target_is_not_averaged_away(tmp_path):
    from immunelm.leaderboard.cells import Cell
    from immunelm.leaderboard.table import make_row, per_seed

    cell = Cell("evaluate", "aligned", None, "standard", {"x": 1}, tmp_path)
    numbers = [per_seed([fake_model({"a": 0.5}, steps=s)], [cell]) for s in (40, None, 60)]
    row = make_row("aligned", [], [0, 1, 2], numbers, [], [], [], True)
    assert row.steps_to_target.mean is None and row.steps_to_target.values == [40, None, 60]
    assert row.worst_harmful.n == 3  # the other numbers still average over the three seeds


def test_a_shared_search_cell_counts_for_its_seeds(tmp_path):
    """A training-free defence's seeds share every key: one model, counted once, and its search (run
    on whichever seed search.seeds names) is matched to it."""
    from immunelm.leaderboard.cells import Cell
    from immunelm.leaderboard.schema import SearchSummary
    from immunelm.leaderboard.table import done_seed_groups, worst_with_search

    evaluate = [Cell("evaluate", "lox", seed, "standard", {"m": "lox"}, tmp_path) for seed in (0, 1, 2)]
    search = Cell("search", "lox", 1, None, {"m": "lox", "space": "s"}, tmp_path)
    groups = done_seed_groups([*evaluate, search], {evaluate[0].key})
    assert [same for same, _ in groups] == [[0, 1, 2]]
    summary = SearchSummary(seed=1, trials=5, feasible=3, best_harmful_within_bound=0.7, cell=search.key)
    assert worst_with_search([*evaluate, search], groups, [{"worst_harmful_within_bound": 0.4}], [summary]) == [0.7]
    assert worst_with_search([*evaluate, search], groups, [{"worst_harmful_within_bound": 0.4}], []) == []


def test_a_search_cell_keeps_its_study_and_its_cost_across_resumes(tmp_path):
    import optuna

    from immunelm.leaderboard.cells import Cell, cell_study, earlier_seconds, search_cost
    from immunelm.search.study import make_storage

    cell = Cell("search", "mlac", 0, None, {"m": "mlac"}, tmp_path)
    assert cell_study(cell) == f"cell-{cell.key}" and earlier_seconds(cell) == 0.0
    cell.dir.mkdir(parents=True)
    optuna.create_study(study_name=f"mlac-{cell.key}", storage=make_storage(str(cell.dir / "study.journal")))
    assert cell_study(cell) == f"mlac-{cell.key}"  # begun under the older row-prefixed name: kept
    (cell.dir / "cost.json").write_text('{"seconds": 12.5, "threads": 1}')
    assert earlier_seconds(cell) == 12.5
    # a part killed before it wrote cost.json: its trials' seconds still count
    (cell.dir / "search.json").write_text('{"trials": [{"seconds": 300.0}, {"seconds": 200.5}]}')
    assert search_cost(cell, 12.5 + 5.0) == 500.5
    assert search_cost(cell, 900.0) == 900.0
