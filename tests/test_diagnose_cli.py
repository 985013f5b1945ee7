"""``immunelm diagnose`` end to end on a shrunken organism, with known answers where they exist."""

import json

import pytest
import torch
from typer.testing import CliRunner

from immunelm.api.diagnose import DiagnoseConfig
from immunelm.cli.common import resolve_config
from immunelm.cli.main import app
from immunelm.models import save_model
from immunelm.sources import load_model_source

TINY = ["organism.world.entities_per_harm_domain=6", "organism.world.n_countries=4", "organism.world.n_animals=4",
        "organism.world.n_words=4", "organism.pretrain.max_steps=8", "organism.pretrain.warmup_steps=2",
        "organism.pretrain.batch_size=16", "organism.pretrain.progress=false", "organism.align.max_steps=3",
        "organism.align.progress=false", "diagnose.examples=16", "diagnose.conditioning_draws=2"]


@pytest.fixture
def tiny(tmp_path):
    """(common CLI arguments, a perturbed copy of the tiny organism's aligned model as 'attacked')."""
    cache = tmp_path / "cache"
    overrides = [f"cache_dir={cache}", *TINY]
    config = resolve_config(DiagnoseConfig, None, overrides)  # the organism the command will load
    model, tok = load_model_source("organism:aligned", str(cache), organism_config=config.organism)
    with torch.no_grad():
        weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    attacked = save_model(model, tok, tmp_path / "attacked")
    return overrides, attacked


def test_diagnose_writes_results_and_report(tmp_path, tiny):
    overrides, attacked = tiny
    run_dir = tmp_path / "diag"
    result = CliRunner().invoke(app, ["diagnose", "--run-dir", str(run_dir), "-m", "base=organism:base", "-m", "aligned=organism:aligned",
                                      "-m", f"attacked={attacked}", *overrides,
                                      "diagnose.diagnostics=[kl,spectra,overlap,task_vectors,drift,gradients,entropy,conditioning,landscape,map]",
                                      "diagnose.landscape_points=5", "diagnose.landscape_metric=harmful_rate"])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "results.json").read_text())
    assert report["schema_version"] == "diagnostics-1.0"
    pairs = {(p["child"], p["parent"]): p for p in report["pairs"]}
    assert set(pairs) == {("aligned", "base"), ("attacked", "aligned")}
    attack = pairs[("attacked", "aligned")]
    # only one matrix changed: every other matrix's delta is empty
    changed = [m for m in attack["spectra"]["matrices"] if m["rank90"] > 0]
    assert [m["name"] for m in changed] == ["model.layers.0.mlp.down_proj.weight"]
    assert [m["name"] for m in attack["alignment_overlap"]["matrices"]] == ["model.layers.0.mlp.down_proj.weight"]
    assert -1 <= attack["alignment_angle"]["cosine"] <= 1
    assert attack["parent_angle"] is None  # the attacked model's parent is the aligned one: that is alignment_angle
    # the change is in block 0's MLP: drift is zero at the embeddings and after it, not before
    distance = attack["drift"]["embedding"]["distance"]
    assert distance[0] == pytest.approx(0.0, abs=1e-9) and distance[1] > 0
    assert len(distance) == report["config"]["organism"]["architecture"]["num_layers"] + 1
    # the path landscape starts at the parent (a = 0) and reaches the child (a = 1)
    path = attack["landscape"]
    assert 0.0 in path["alphas"] and 1.0 in path["alphas"]
    models = {m["name"]: m for m in report["models"]}
    assert models["aligned"]["conditioning"]["rir_theta0"] in (None, pytest.approx(1.0))  # RIR of the reference vs itself
    centre = models["attacked"]["landscape"]["centre"]
    assert centre["harmful_loss"] > 0 and set(centre) == {"harmful_rate", "harmful_score", "complied", "collapsed", "harmful_loss"}
    assert all(0 <= r <= 1 for r in models["aligned"]["landscape"]["values"]["harmful_rate"])
    points = report["representation_map"]["points"]
    per_model = {name: [(p["set"], p["example"]) for p in points if p["model"] == name] for name in ("base", "aligned", "attacked")}
    assert per_model["base"] == per_model["aligned"] == per_model["attacked"] and len(points) == 3 * len(per_model["base"])
    assert {s for s, _ in per_model["base"]} == {"harmful", "benign"}
    assert set(report["seconds"]) >= {"kl", "spectra", "drift", "landscape", "map"}
    page = (run_dir / "report.html").read_text()
    assert "kl_profiles" in page and "landscapes" in page and page.count("data:image/png;base64") >= 6
    assert (run_dir / "provenance.json").is_file() and (run_dir / "plots" / "kl_profiles.png").is_file()


def test_a_model_against_itself_has_zero_kl_and_no_delta(tmp_path, tiny):
    overrides, _ = tiny
    run_dir = tmp_path / "same"
    result = CliRunner().invoke(app, ["diagnose", "--run-dir", str(run_dir), "-m", "base=organism:base", "-m", "aligned=organism:aligned",
                                      "-m", "attacked=organism:aligned", *overrides, "diagnose.diagnostics=[kl,spectra,task_vectors,drift]"])
    assert result.exit_code == 0, result.output
    attack = next(p for p in json.loads((run_dir / "results.json").read_text())["pairs"] if p["child"] == "attacked")
    assert max(attack["kl"]["harmful"]["per_position"]) == pytest.approx(0.0, abs=1e-6)
    assert all(m["rank90"] == 0 for m in attack["spectra"]["matrices"]) and attack["alignment_angle"] is None
    assert max(attack["drift"]["embedding"]["distance"]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["-m", "reference=organism:aligned"], "expected base, aligned, immunised"),
    (["-m", "aligned=organism:aligned", "diagnose.diagnostics=[kl,kappa]"], "unknown diagnostic 'kappa'"),
    (["-m", "aligned=organism:aligned", "-m", "aligned=organism:base"], "duplicate name 'aligned'"),
    (["-m", "attacked=organism:aligned", "-m", "immunised=organism:aligned"], "no model's parent is given"),
    (["-m", "aligned=organism:aligned", "-m", "attacked=/no/such/dir"], "model 'attacked'"),
])
def test_bad_input_is_one_line_and_no_run_dir(tmp_path, args, message):
    run_dir = tmp_path / "bad"
    result = CliRunner().invoke(app, ["diagnose", "--run-dir", str(run_dir), *args, f"cache_dir={tmp_path / 'c'}"])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output
    assert not run_dir.exists()


def test_evaluate_computes_the_expensive_diagnostics_when_asked(tmp_path):
    """evaluation.diagnostics=[...]: gradients, entropy, landscape and map land in results.json;
    a prompt-only suite leaves no attacked model, and the drift says so instead of a number."""
    from attack_e2e import run_evaluate
    from immunelm.report import load_report

    suite = ("name: t\nbudget: 2\neval_at: [0, 2]\ndefaults: {train: {progress: false, batch_size: 4}}\n"
             "adversaries:\n  - {name: sft, examples: 4}\n")
    result, out = run_evaluate(tmp_path, suite, "evaluation.diagnostics=[kl,spectra,drift,gradients,entropy,landscape,map]")
    assert result.exit_code == 0, result.output
    diag = load_report(out).models[0].diagnostics
    assert -1 <= diag.gradient_cosine <= 1 and diag.response_entropy >= 0
    assert len(diag.landscape["alphas"]) == 21 and diag.landscape["alphas"][10] == 0
    labels = {(p["model"], p["set"]) for p in diag.representation_map["points"]}
    assert labels == {("aligned", "harmful"), ("aligned", "benign"), ("aligned after sft", "harmful"), ("aligned after sft", "benign")}
    assert set(diag.seconds) >= {"drift", "gradients", "entropy", "landscape", "map"}

    prompt_only = "name: p\nbudget: 1\neval_at: [0, 1]\nadversaries:\n  - {name: misdirection, kind: misdirection}\n"
    result, out = run_evaluate(tmp_path, prompt_only, "evaluation.diagnostics=[drift]", run_dir="prompt")
    assert result.exit_code == 0, result.output
    report = load_report(out)
    assert report.models[0].resistance[0].kind == "misdirection" and report.models[0].resistance[0].drift is None
    assert "drift" in report.models[0].diagnostics.skipped


def test_unknown_evaluation_diagnostic_is_refused(tmp_path):
    from attack_e2e import run_evaluate

    result, out = run_evaluate(tmp_path, "name: t\nadversaries:\n  - {name: sft}\n", "evaluation.diagnostics=[kll]")
    assert result.exit_code != 0 and "unknown diagnostic 'kll'" in str(result.exception) + result.output
    assert not out.exists()
