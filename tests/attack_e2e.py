"""``immunelm evaluate`` of the shrunken organism's aligned model with a test's own suite: the
end-to-end check every attack plug-in runs (a few seconds)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from test_cli import TINY_ORGANISM

ORGANISM = [a for a in TINY_ORGANISM if a.startswith("organism.")]


def run_evaluate(tmp_path: Path, suite_text: str, *overrides: str, run_dir: str = "eval"):
    """(CliRunner result, run dir): the suite is written to ``tmp_path/suite.yaml``; ``overrides``
    come last, so they win over the defaults here (a 2-step trainability run)."""
    from immunelm.cli.main import app

    suite = tmp_path / "suite.yaml"
    suite.write_text(suite_text)
    out = tmp_path / run_dir
    result = CliRunner().invoke(app, [
        "evaluate", "--run-dir", str(out), "-m", "aligned=organism:aligned", f"cache_dir={tmp_path / 'cache'}",
        *ORGANISM, f"evaluation.suite={suite}", "evaluation.trainability.train.max_steps=2",
        "evaluation.trainability.eval_at=[0,2]", "evaluation.generation.progress=false", *overrides])
    return result, out
