"""The HTML report: content, escaping, missing fields, results.json errors, and a real browser."""

import shutil
import subprocess

import pytest
import typer
from typer.testing import CliRunner

from immunelm.cli.report import report as report_command
from immunelm.errors import ImmuneLMError
from immunelm.io import write_json_atomic
from immunelm.report import load_report, regenerate, render_report
from immunelm.report.plots import FIGURES
from report_fixtures import make_report


def write_results(run_dir, report):
    write_json_atomic(run_dir / "results.json", report.model_dump(mode="json"))
    return run_dir / "results.json"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One rendered report shared by the content tests (rendering is the slow part)."""
    report = make_report(n_models=3, n_adversaries=4)
    out = tmp_path_factory.mktemp("report")
    return report, render_report(report, out)


def test_render_writes_page_and_plots(rendered):
    report, path = rendered
    assert path.name == "report.html" and path.is_file()
    pngs = sorted(p.name for p in (path.parent / "plots").glob("*.png"))
    assert pngs == sorted(f"{name}.png" for name in FIGURES) and len(pngs) == 4
    assert all((path.parent / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    html = path.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 4
    assert not list(path.parent.glob(".*.tmp")), "atomic writes left temporaries behind"


def test_page_names_every_model_adversary_and_pillar(rendered):
    report, path = rendered
    html = path.read_text(encoding="utf-8")
    for model in report.models:
        assert model.name in html
        for adv in model.resistance:
            assert adv.name in html
    for group in ("Resistance", "Stability", "Generalisation", "Trainability"):
        assert f">{group}</th>" in html
    for outcome in ("refused", "collapsed", "complied"):
        assert outcome in html
    assert report.provenance["git_revision"] in html and "1h 02m 05s" in html


def test_summary_values_come_from_the_report(rendered):
    report, path = rendered
    html = path.read_text(encoding="utf-8")
    for model in report.models:
        assert f"{model.resistance_summary.worst_final_harmful:.3f}" in html
        assert f"{model.stability.benign_accuracy:.3f}" in html
        assert f"{model.trainability.final_accuracy:.3f}" in html


def test_names_are_html_escaped(tmp_path):
    report = make_report(n_models=2, n_adversaries=2)
    report.models[1].name = "<script>x</script>"
    report.models[1].defence = "a&b"
    report.models[1].resistance[0].name = 'adv"<b>$x_1$'
    html = render_report(report, tmp_path).read_text(encoding="utf-8")
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "a&amp;b" in html and "&lt;b&gt;$x_1$" in html


def test_missing_optional_pillars_show_na(tmp_path):
    report = make_report(n_models=3, n_adversaries=2)
    bare = report.models[2]
    bare.trainability = bare.generalisation = bare.stability = bare.resistance_summary = None
    bare.resistance = []
    report.provenance = {}
    html = render_report(report, tmp_path).read_text(encoding="utf-8")
    row = html.split(f'<td class="name">{bare.name}</td>', 1)[1].split("</tr>", 1)[0]
    assert row.count("n/a") >= 10
    assert "No resistance results for this model." in html
    assert "git revision" not in html


def test_report_without_models_still_renders(tmp_path):
    report = make_report(n_models=1, n_adversaries=1)
    report.models = []
    path = render_report(report, tmp_path)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4 and "Summary" in path.read_text(encoding="utf-8")


def test_regenerate_round_trip(tmp_path):
    report = make_report(n_models=2, n_adversaries=3)
    direct = render_report(report, tmp_path / "direct").read_text(encoding="utf-8")
    run_dir = tmp_path / "run"
    write_results(run_dir, report)
    path = regenerate(run_dir)
    assert path == run_dir / "report.html"
    assert load_report(run_dir) == report
    assert path.read_text(encoding="utf-8") == direct  # rendering is deterministic
    assert len(list((run_dir / "plots").glob("*.png"))) == 4


def _load_error(run_dir) -> str:
    with pytest.raises(ImmuneLMError) as info:
        load_report(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert str(run_dir / "results.json") in message
    return message


def test_load_errors_name_file_and_field(tmp_path):
    assert "not found" in _load_error(tmp_path)
    (tmp_path / "results.json").write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in _load_error(tmp_path) and "line 1" in _load_error(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]", encoding="utf-8")
    assert "JSON object" in _load_error(tmp_path)

    data = make_report().model_dump(mode="json")
    data["models"][1]["role"] = "attacker"
    write_json_atomic(tmp_path / "results.json", data)
    assert "models[1].role" in _load_error(tmp_path)

    data = make_report().model_dump(mode="json")
    del data["models"][0]["resistance"][1]["curve"][2]["outcomes"]
    write_json_atomic(tmp_path / "results.json", data)
    message = _load_error(tmp_path)
    assert "missing field 'models[0].resistance[1].curve[2].outcomes'" in message

    data = make_report().model_dump(mode="json")
    data["suite_name"] = "x"
    write_json_atomic(tmp_path / "results.json", data)
    assert "unknown field 'suite_name'" in _load_error(tmp_path)

    data["schema_version"] = "9.0"
    write_json_atomic(tmp_path / "results.json", data)
    assert "schema_version '9.0' is not supported" in _load_error(tmp_path)


def test_cli_command_prints_report_path(tmp_path):
    app = typer.Typer()
    app.command()(report_command)
    write_results(tmp_path, make_report(n_models=2, n_adversaries=2))
    result = CliRunner().invoke(app, [str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "report.html")
    failed = CliRunner().invoke(app, [str(tmp_path / "missing")])
    assert isinstance(failed.exception, ImmuneLMError)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium not installed: run apt-get install -y chromium")


def test_report_renders_in_headless_chromium(rendered, tmp_path):
    """The page must open in a real browser: catches broken markup a string check would miss."""
    browser = _chromium()
    _, path = rendered
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000
    dom = subprocess.run(base + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="summary"' in dom and "Trainability" in dom
    assert dom.count("<img") == 4


def test_generalisation_splits_show_outcomes_and_utility(tmp_path):
    """Named splits (e.g. the smol task's real prompts) appear with refused / collapsed shares and
    the attacked model's utility beside the harmful score."""
    from immunelm.eval.schema import Outcomes
    from immunelm.report.html import generalisation_table

    report = make_report(n_models=1, n_adversaries=2)
    model = report.models[0]
    worst = next(a for a in model.resistance if a.name == model.resistance_summary.worst_adversary)
    for point in worst.curve:
        point.generalisation["real_eval"] = 0.25
        point.generalisation_outcomes["real_eval"] = Outcomes(n=4, refused=0.5, complied=0.25, collapsed=0.25)
    table = generalisation_table(report)
    row = next(r for r in table["rows"] if r["split"] == "real_eval")
    assert row["adversary"] == worst.name and row["cells"] == ["0.250", "0.500", "0.250"] * 2
    assert row["utility"] != "n/a"
    path = render_report(report, tmp_path)
    assert 'id="generalisation"' in path.read_text() and "real_eval" in path.read_text()


# --------------------------------------------------------------------------- utility bound
def _break_utility(model, utility=0.1, collapsed=0.6):
    """Every attack of ``model`` ends with utility far below its start (beyond any epsilon)."""
    from immunelm.eval.pillars import summarise_resistance

    for adv in model.resistance:
        end = adv.curve[-1]
        end.benign_accuracy = utility
        end.outcomes.collapsed = collapsed
    old = model.resistance_summary
    model.resistance_summary = summarise_resistance(model.resistance, old.threshold, old.epsilon)
    return model


def test_no_attack_within_bound_is_explicit_in_results_and_report(tmp_path, capsys):
    from immunelm.cli.evaluate import print_summary

    report = make_report(n_models=2, n_adversaries=3)
    broken = _break_utility(report.models[1])
    rs = broken.resistance_summary
    assert rs.no_attack_within_utility_bound is True and rs.within_utility_bound == []
    assert rs.worst_within_utility_bound is None and rs.worst_within_utility_bound_adversary is None
    assert rs.worst_adversary_utility == 0.1 and rs.worst_adversary_collapsed == 0.6
    assert report.models[0].resistance_summary.no_attack_within_utility_bound is not True

    path = write_results(tmp_path, report)
    saved = load_report(path).model(broken.name).resistance_summary
    assert saved.no_attack_within_utility_bound is True and saved.worst_adversary_utility == 0.1
    html = regenerate(tmp_path).read_text(encoding="utf-8")
    assert f"{broken.name}: no attack stayed within the utility bound." in html
    row = html.split(f'<td class="name">{broken.name}</td>', 1)[1].split("</tr>", 1)[0]
    assert ">none<small class=\"wrap\">no attack stayed within ε</small>" in row
    assert "0.100" in row and "0.600" in row  # utility and collapse beside the harmful score
    assert f"{rs.worst_final_harmful:.3f}" in row

    print_summary(report)
    printed = capsys.readouterr().out
    assert f"! {broken.name}: no attack stayed within the utility bound" in printed
    assert "utility was 0.10" in printed and "0.60 of harmful answers collapsed" in printed
    table_row = next(line for line in printed.splitlines() if line.strip("│ ").startswith(broken.name))
    assert "none" in table_row and "0.10" in table_row


def test_attacks_held_only_by_collapse_are_named_in_results_report_and_console(tmp_path, capsys):
    from immunelm.cli.evaluate import print_summary
    from immunelm.eval.pillars import summarise_resistance

    report = make_report(n_models=2, n_adversaries=3)
    trapped = report.models[1]
    for adv in trapped.resistance:  # a collapse trap springs: harmless-looking, but degenerate answers
        end = adv.curve[-1]
        end.harmful_score, end.outcomes.complied, end.outcomes.refused, end.outcomes.collapsed = 0.05, 0.05, 0.15, 0.8
        end.benign_accuracy = adv.curve[0].benign_accuracy
    old = trapped.resistance_summary
    trapped.resistance_summary = summarise_resistance(trapped.resistance, old.threshold, old.epsilon)
    names = sorted(a.name for a in trapped.resistance)
    assert trapped.resistance_summary.held_only_by_collapse == names
    path = write_results(tmp_path, report)
    assert load_report(path).model(trapped.name).resistance_summary.outcome_by_adversary == {n: "collapsed" for n in names}
    html = regenerate(tmp_path).read_text(encoding="utf-8")
    assert f"{trapped.name}: 3 of 3 attacks\nended with a low harmful score only because the attacked model collapsed" in html
    assert '<td class="na">collapsed</td>' in html  # the per-attack "ended" column
    print_summary(report)
    assert f"! {trapped.name}: 3/3 attacks ended with low harm only because the model collapsed" in capsys.readouterr().out


def test_weak_resistance_of_a_broken_model_is_not_shown_as_a_win(tmp_path):
    report = make_report(n_models=2, n_adversaries=2)
    model = report.models[1]
    for adv in model.resistance:
        for point in adv.curve:
            point.harmful_score = 0.0  # "resisted" every attack ...
    _break_utility(model, utility=0.0, collapsed=1.0)  # ... by collapsing
    assert model.resistance_summary.weak_resistance is True
    html = render_report(report, tmp_path).read_text(encoding="utf-8")
    row = html.split(f'<td class="name">{model.name}</td>', 1)[1].split("</tr>", 1)[0]
    assert '<td class="na">yes<small class="wrap">utility broken by every attack</small>' in row
    assert '<td class="yes">' not in row


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_older_results_files_still_load_and_say_none_within_bound(tmp_path, version):
    """Files written before the summary recorded the bound: the report derives it from the curves."""
    report = make_report(n_models=2, n_adversaries=2)
    _break_utility(report.models[1])
    data = report.model_dump(mode="json")
    data["schema_version"] = version
    for model in data["models"]:
        for key in ("worst_within_utility_bound_adversary", "within_utility_bound", "no_attack_within_utility_bound",
                    "worst_adversary_utility", "worst_adversary_collapsed"):
            model["resistance_summary"].pop(key)
    write_json_atomic(tmp_path / "results.json", data)
    loaded = load_report(tmp_path)
    assert loaded.models[1].resistance_summary.no_attack_within_utility_bound is None
    html = regenerate(tmp_path).read_text(encoding="utf-8")
    assert f"{report.models[1].name}: no attack stayed within the utility bound." in html
    assert "0.100" in html.split(f'<td class="name">{report.models[1].name}</td>', 1)[1].split("</tr>", 1)[0]


def test_unmeasured_utility_is_not_called_broken(tmp_path):
    report = make_report(n_models=1, n_adversaries=2)
    model = report.models[0]
    for adv in model.resistance:
        for point in adv.curve:
            point.benign_accuracy = None
    from immunelm.eval.pillars import summarise_resistance

    rs = summarise_resistance(model.resistance, 0.3, 0.1)
    assert rs.within_utility_bound is None and rs.no_attack_within_utility_bound is None
    model.resistance_summary = rs
    html = render_report(report, tmp_path).read_text(encoding="utf-8")
    assert "no attack stayed within the utility bound" not in html


def test_huge_or_deeply_nested_results_are_one_line(tmp_path):
    from immunelm import report as report_module

    (tmp_path / "results.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert "nested too deeply" in _load_error(tmp_path)
    data = make_report().model_dump(mode="json")
    nested: dict = {}
    node = nested
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    data["config"] = nested  # parses, but no results file nests like this
    (tmp_path / "results.json").write_text(__import__("json").dumps(data), encoding="utf-8")
    assert "nested too deeply" in _load_error(tmp_path)
    with open(tmp_path / "results.json", "wb") as fh:  # sparse: no disk is used
        fh.truncate(report_module.MAX_RESULTS_BYTES + 1)
    assert "too large for a results file" in _load_error(tmp_path)


def test_broken_warning_calls_only_a_low_harmful_score_not_resistance(capsys):
    """A model that no attack left within the bound is flagged; 'not resistance' is said only when
    its harmful score is low (a fully harmful model was never mistaken for a resisting one)."""
    from immunelm.cli.evaluate import broken_lines

    report = make_report(n_models=2, n_adversaries=3)
    broken = _break_utility(report.models[1])
    low = broken.resistance_summary.worst_final_harmful <= broken.resistance_summary.threshold
    line = next(line for line in broken_lines(report) if broken.name in line)
    assert ("not resistance" in line) is low
    broken.resistance_summary.worst_final_harmful = 1.0
    assert "not resistance" not in next(line for line in broken_lines(report) if broken.name in line)
    broken.resistance_summary.worst_final_harmful = 0.0
    assert "not resistance" in next(line for line in broken_lines(report) if broken.name in line)


def test_curves_read_grid_attacks_by_their_own_budget_and_show_utility():
    from immunelm.report.plots import resistance_curves

    report = make_report(n_models=2, n_adversaries=2)
    for model in report.models:
        model.resistance[1].budget_unit, model.resistance[1].family = "strength", "inference-time"
    fig = resistance_curves(report)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes[0].get_xlabel() == "attack step" and "fine-tuning" in axes[0].get_title()
    assert axes[1].get_xlabel().startswith("strength point") and "inference-time" in axes[1].get_title()
    dotted = [line for line in axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) >= len(report.models)  # one utility line per model (+ the threshold line)


def test_pruning_curves_are_drawn_against_the_fraction_removed():
    from immunelm.report.plots import resistance_curves

    report = make_report(n_models=1, n_adversaries=1)
    adv = report.models[0].resistance[0]
    adv.budget_unit, adv.family = "(q, p)", "weight-edit"
    fractions = [0.0, 0.02, 0.05, 0.2, 0.3, 0.4][:len(adv.curve)]
    for i, point in enumerate(adv.curve):
        point.step = i
    adv.info = {"points": [{"removed_fraction": f} for f in fractions]}
    ax = next(a for a in resistance_curves(report).axes if a.get_visible())
    assert ax.get_xlabel() == "fraction of weights removed"
    assert list(ax.get_lines()[0].get_xdata()) == fractions
