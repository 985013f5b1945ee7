"""``immunelm diagnose``: argument parsing and a summary; the work is :mod:`immunelm.api.diagnose`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from immunelm.api.diagnose import DiagnoseConfig, DiagnosedModel, run_diagnose, validate_diagnose
from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, check_run_dir, console, out, resolve_config, start_run
from immunelm.diagnostics.schema import DiagnosticsReport
from immunelm.errors import ImmuneLMError


def parse_models(flags: list[str]) -> list[DiagnosedModel]:
    models = []
    for flag in flags:
        name, sep, source = flag.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ImmuneLMError(f"--model '{flag}': expected NAME=SOURCE with NAME base, aligned, immunised[-X] or attacked[-X]")
        models.append(DiagnosedModel(name=name.strip(), source=source.strip()))
    return models


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_summary(report: DiagnosticsReport) -> None:
    """One line per pair and per model: the numbers the seeds' insights are read from."""
    for p in report.pairs:
        parts = [f"{p.child} vs {p.parent} ({p.kind}):"]
        if p.kl:
            parts.append(f"KL harmful first-{p.kl.first_k} {_f(p.kl.harmful.first_mean)} later {_f(p.kl.harmful.later_mean)}"
                         + (f" | benign {_f(p.kl.benign.first_mean)} / {_f(p.kl.benign.later_mean)}" if p.kl.benign else ""))
        if p.spectra:
            parts.append(f"delta eff-rank {p.spectra.median_effective_rank:.1f} rank90 {p.spectra.median_rank90:.0f} "
                         f"({p.spectra.median_rank90_fraction:.0%} of full) |delta|/|W| {p.spectra.relative_norm:.3f}")
        if p.alignment_overlap:
            parts.append(f"overlap with alignment {p.alignment_overlap.mean_overlap:.3f} (chance {p.alignment_overlap.mean_chance:.3f})")
        if p.alignment_angle:
            parts.append(f"cos with alignment {p.alignment_angle.cosine:+.3f}")
        if p.parent_angle:
            parts.append(f"cos with {p.parent}'s own change {p.parent_angle.cosine:+.3f}")
        out.print("  " + "; ".join(parts), highlight=False)
    for m in report.models:
        bits = []
        if m.gradients:
            bits.append(f"cos(g_harm, g_benign) {m.gradients.cosine:+.3f}")
        if m.entropy:
            bits.append(f"harmful response entropy {m.entropy.mean:.3f}")
        if m.conditioning:
            bits.append(f"RIR vs aligned {_f(m.conditioning.get('rir_theta0'))}")
        if bits:
            out.print(f"  {m.name}: " + "; ".join(bits), highlight=False)
    out.print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()), highlight=False)


def diagnose(
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="NAME=SOURCE, NAME = base | aligned | immunised[-X] | attacked[-X] (repeatable)."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Mechanistic diagnostics (per-token KL, delta spectra, subspace overlap, task vectors, drift,
    gradient geometry, conditioning; landscape and t-SNE on request) for the models named."""
    check_run_dir(run_dir, overwrite=overwrite)
    cfg = resolve_config(DiagnoseConfig, config, overrides)
    if model:
        cfg.models = parse_models(model)
    task = validate_diagnose(cfg)
    path = start_run("diagnose", run_dir, cfg, cfg.diagnose.seed, overwrite=overwrite)
    report = run_diagnose(cfg, path, task)
    print_summary(report)
    console.print(f"report: {path / 'report.html'}")
