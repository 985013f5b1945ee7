"""Do the seeds' mechanistic insights hold? ``immunelm diagnose`` on a base, an aligned model,
fine-tunes of it (harmful SFT, each benign task, identity shifting where the task has it) and
immunised models with their attacked copies, per organism seed or on SmolLM2; one table per
insight (issue 13).

    python benchmarks/insights.py --organism-seeds 0 1 2 --defences deep-align repnoise npo
    python benchmarks/insights.py --smol --immunised runs/smol_eval      # the smol presets' models

Writes benchmarks/results/insights_<label>.json (per run and aggregated over seeds); the
diagnose runs (results.json + report.html each) stay under --root.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections import defaultdict
from pathlib import Path

from common import save_result

from immunelm.api import ImmuniseConfig, run_immunise
from immunelm.api.diagnose import DiagnoseConfig, DiagnosedModel, run_diagnose
from immunelm.data import PaddingCollator, encode_example
from immunelm.engine import TrainConfig, train
from immunelm.models import save_model
from immunelm.models.adapters import merged_full
from immunelm.sources import load_model_source
from immunelm.tasks import TaskContext, load_task
from immunelm.world.organism import OrganismConfig

DIAGNOSTICS = ["kl", "spectra", "overlap", "task_vectors", "drift", "gradients", "entropy", "conditioning", "landscape"]


def fine_tunes(task, mixed_benign: bool = False) -> dict[str, list]:
    """Downstream data sets: harmful SFT, each benign task (or all mixed), the trainability task,
    identity shift."""
    sets = {"harmful": task.attack.harmful[:100]}
    by_task = defaultdict(list)
    for e in task.attack.benign:
        by_task["mixed" if mixed_benign else e.meta.get("task", "benign")].append(e)
    sets.update({f"benign-{name}": rows[::max(1, len(rows) // 100)][:100] for name, rows in sorted(by_task.items())})
    if task.trainability:
        sets[f"new-{task.trainability.name}"] = task.trainability.train[:100]
    if task.attack.identity:
        sets["identity"] = task.attack.identity[:100]
    return sets


def fine_tune(source: str, examples: list, out: Path, train_cfg: TrainConfig, load) -> Path:
    if (out / "model.safetensors").is_file():
        return out
    model, tok = load(source)
    rows = [encode_example(tok, e) for e in examples]
    result = train(train_cfg, model, rows, PaddingCollator.for_tokenizer(tok))
    return save_model(result.model, tok, out)


def models_for(root: Path, task, prefix: str, defences: list[str], immunised_root: Path | None, train_cfg, load, immunise_cfg,
               mixed_benign: bool = False) -> list:
    models = [DiagnosedModel(name="base", source=f"{prefix}:base"), DiagnosedModel(name="aligned", source=f"{prefix}:aligned")]
    for name, examples in fine_tunes(task, mixed_benign).items():
        out = fine_tune(f"{prefix}:aligned", examples, root / f"ft-{name}", train_cfg, load)
        models.append(DiagnosedModel(name=f"attacked-{name}", source=str(out)))
    for defence in defences:
        # a model immunised earlier for this run (or given with --immunised) is reused
        found = [d / f"immunise-{defence}" / "model" for d in (immunised_root, root) if d is not None]
        found = next((f for f in found if f.exists()), None)
        model_dir = found or run_immunise(defence, immunise_cfg(defence), root / f"immunise-{defence}")
        attacked = fine_tune(str(model_dir), fine_tunes(task)["harmful"], root / f"ft-{defence}-harmful", train_cfg, load)
        models += [DiagnosedModel(name=f"immunised-{defence}", source=str(model_dir)),
                   DiagnosedModel(name=f"attacked-{defence}", source=str(attacked))]
    return models


def insight_rows(report) -> dict:
    """The numbers each insight is read from, by model / pair."""
    pairs = {p.child: p for p in report.pairs}
    models = {m.name: m for m in report.models}
    align = pairs.get("aligned")
    out = {"shallow_alignment": None, "alignment_delta": None, "attacks": {}, "models": {}}
    if align and align.kl:
        kl = align.kl
        out["shallow_alignment"] = {"harmful_first": kl.harmful.first_mean, "harmful_later": kl.harmful.later_mean,
                                    "harmful_ratio": kl.harmful.ratio, "benign_first": kl.benign.first_mean if kl.benign else None,
                                    "benign_later": kl.benign.later_mean if kl.benign else None}
    if align and align.spectra:
        full = statistics.median(min(m.shape) for m in align.spectra.matrices)
        out["alignment_delta"] = {"median_effective_rank": align.spectra.median_effective_rank, "median_full_rank": full,
                                  "median_rank90": align.spectra.median_rank90, "median_rank90_fraction": align.spectra.median_rank90_fraction,
                                  "relative_norm": align.spectra.relative_norm}
    for p in report.pairs:
        if p.kind != "attack":
            continue
        out["attacks"][p.child] = {
            "parent": p.parent,
            "overlap": p.alignment_overlap.mean_overlap if p.alignment_overlap else None,
            "overlap_chance": p.alignment_overlap.mean_chance if p.alignment_overlap else None,
            "cos_with_alignment": p.alignment_angle.cosine if p.alignment_angle else None,
            "cos_with_parent_change": p.parent_angle.cosine if p.parent_angle else None,
            "delta_effective_rank": p.spectra.median_effective_rank if p.spectra else None,
            "drift_last_layer": p.drift.embedding.relative_distance[-1] if p.drift else None,
            "harmful_kl_first": p.kl.harmful.first_mean if p.kl else None,
            # along parent -> child: where the path leaves the parent's basin (a = 1 is the child)
            "path_basin_hi": p.landscape.basin.hi if p.landscape and p.landscape.basin else None}
    for name, m in models.items():
        land = m.landscape
        out["models"][name] = {"grad_cosine": m.gradients.cosine if m.gradients else None,
                               "entropy": m.entropy.mean if m.entropy else None,
                               "basin_width": land.basin.width if land and land.basin else None,
                               "visage": land.visage if land else None,
                               "centre_harmful_rate": land.centre.get("harmful_rate") if land else None,
                               "basin_lo": land.basin.lo if land and land.basin else None,
                               "basin_hi": land.basin.hi if land and land.basin else None,
                               "rir_vs_aligned": (m.conditioning or {}).get("rir_theta0")}
    out["seconds"] = report.seconds
    return out


def aggregate(runs: list[dict]) -> dict:
    """Mean / min / max over runs of every number, keyed by its path."""
    flat: dict[str, list[float]] = defaultdict(list)

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else k, v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix].append(float(value))
    for run in runs:
        walk("", run)
    return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in flat.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--organism-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--smol", action="store_true", help="SmolLM2 organism instead of the built-in one.")
    parser.add_argument("--defences", nargs="*", default=["deep-align", "repnoise", "npo"])
    parser.add_argument("--immunised", type=Path, default=None, help="Take immunise-<defence>/model from here when present.")
    parser.add_argument("--landscape-metric", default="harmful_rate", choices=["harmful_rate", "harmful_loss"])
    parser.add_argument("--examples", type=int, default=128, help="Harmful and benign examples per measurement.")
    parser.add_argument("--landscape-points", type=int, default=21, help="1-D grid points (paper 21; the path grid has ~2x).")
    parser.add_argument("--mixed-benign", action="store_true", help="One benign fine-tune on all benign tasks (cheaper).")
    parser.add_argument("--root", type=Path, default=Path("runs/insights"))
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    runs = {}
    for seed in ([None] if args.smol else args.organism_seeds):
        organism = OrganismConfig(seed=seed or 0)
        root = args.root / ("smol" if args.smol else f"organism-seed{seed}")
        task = load_task("smol" if args.smol else "world", TaskContext(organism, None, None))
        prefix = "smol" if args.smol else "organism"
        train_cfg = (TrainConfig(lr=5e-5, batch_size=8, max_steps=30, progress=False) if args.smol
                     else TrainConfig(lr=1e-4, batch_size=16, max_steps=100, progress=False))

        def load(source, organism=organism):
            model, tok = load_model_source(source, organism_config=organism)
            return merged_full(copy.deepcopy(model)).train(), tok

        def immunise_cfg(defence, organism=organism, seed=seed):
            return ImmuniseConfig(model=f"{prefix}:aligned", organism=organism, defence={"train": {"seed": seed or 0, "progress": False}})
        models = models_for(root, task, prefix, args.defences, args.immunised, train_cfg, load, immunise_cfg, args.mixed_benign)
        cfg = DiagnoseConfig(models=models, task="smol" if args.smol else "world", organism=organism)
        cfg.diagnose.diagnostics = DIAGNOSTICS
        cfg.diagnose.landscape_metric = args.landscape_metric
        cfg.diagnose.examples, cfg.diagnose.landscape_points = args.examples, args.landscape_points
        report = run_diagnose(cfg, root / "diagnose")
        runs["smol" if args.smol else f"seed{seed}"] = insight_rows(report)
        print(json.dumps(runs[list(runs)[-1]], indent=1, default=str)[:3000], flush=True)
    label = args.label or ("smol" if args.smol else "organism")
    save_result(f"insights_{label}", {"runs": runs, "aggregate": aggregate(list(runs.values())), "defences": args.defences,
                                      "diagnostics": DIAGNOSTICS, "landscape_metric": args.landscape_metric})


if __name__ == "__main__":
    main()
