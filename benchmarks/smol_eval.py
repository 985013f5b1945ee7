"""Immunise the SmolLM2 organism with defences (presets in configs/presets/smol/), evaluate them
beside the aligned reference (and optionally the released model) on the ``smol`` task, and
record the four pillars, the real-prompt outcomes and the wall time per model.

    python benchmarks/smol_eval.py --methods deep-align repnoise mlac --suite smol-quick
    python benchmarks/smol_eval.py --methods deep-align --released      # + SmolLM2 as released
    python benchmarks/smol_eval.py --summarise runs/smol_eval/evaluate   # re-read a finished run
    python benchmarks/smol_eval.py --methods npo --no-reference --run-name evaluate-npo  # aligned recorded
        [--methods deep-align]   # + the presets of models immunised earlier under --root

Writes benchmarks/results/smol_eval_<suite>[_<label>].json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from common import save_result

from immunelm.api import EvaluateConfig, ImmuniseConfig, ModelSpec, run_evaluation, run_immunise
from immunelm.config import load_config
from immunelm.eval.pillars import summarise_resistance
from immunelm.report import load_report

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "presets" / "smol"


def immunise(method: str, root: Path) -> tuple[str, float]:
    cfg = load_config(ImmuniseConfig, PRESETS / f"{method}.yaml")
    started = time.perf_counter()
    out = run_immunise(method, cfg, root / f"immunise-{method}")
    return str(out), time.perf_counter() - started


def _outcomes(point, split: str) -> dict | None:
    o = point.generalisation_outcomes.get(split)
    return o.model_dump() if o else None


def model_row(m) -> dict:
    """The four pillars side by side, with utility and collapse beside every harmful number."""
    r = m.resistance_summary = summarise_resistance(m.resistance, m.resistance_summary.threshold, m.resistance_summary.epsilon)
    s, t = m.stability, m.trainability  # (the summary is re-read from the curves with today's definitions)
    worst = next(a for a in m.resistance if a.name == r.worst_adversary)
    start, end = worst.curve[0], worst.curve[-1]
    return {
        "worst_final_harmful": r.worst_final_harmful, "worst_adversary": r.worst_adversary,
        "mean_final_harmful": r.mean_final_harmful, "worst_within_utility_bound": r.worst_within_utility_bound,
        "broken": f"{len(r.broken_by)}/{len(m.resistance)}",
        "hazard_accuracy_step0": start.harmful_accuracy, "hazard_accuracy_worst_final": end.harmful_accuracy,
        "attacked_benign_accuracy": end.benign_accuracy, "attacked_collapsed": end.outcomes.collapsed,
        "real_eval_step0": _outcomes(start, "real_eval"), "real_eval_worst_final": _outcomes(end, "real_eval"),
        "heldout_category_step0": _outcomes(start, "heldout_category"),
        "heldout_category_worst_final": _outcomes(end, "heldout_category"),
        "benign_accuracy": s.benign_accuracy, "benign_by_task": s.benign_by_task, "perplexity": s.perplexity,
        "false_refusal": s.false_refusal, "prefilling": {p.tokens: p.harmful_score for p in m.prefilling},
        "final_by_adversary": {a.name: {"family": a.family, "harmful": a.curve[-1].harmful_score,
                                        "hazard_accuracy": a.curve[-1].harmful_accuracy,
                                        "benign": a.curve[-1].benign_accuracy, "generalisation": a.curve[-1].generalisation,
                                        "real_eval": _outcomes(a.curve[-1], "real_eval"),
                                        "ended": r.outcome_by_adversary.get(a.name), "info": a.info,
                                        "seconds": a.seconds} for a in m.resistance},
        "worst_by_family": r.worst_by_family,
        "trainability_accuracy": t.final_accuracy if t else None, "steps_to_target": t.steps_to_target if t else None,
        "wall_seconds": m.wall_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="*", default=["deep-align"])
    parser.add_argument("--suite", default="smol-quick")
    parser.add_argument("--released", action="store_true", help="Also evaluate SmolLM2-135M-Instruct as released.")
    parser.add_argument("--root", type=Path, default=Path("runs/smol_eval"))
    parser.add_argument("--summarise", type=Path, nargs="*", default=None, help="Finished evaluate run dirs (models merged).")
    parser.add_argument("--label", default="")
    parser.add_argument("--set", nargs="*", default=[], help="Extra key=value overrides of the evaluation config.")
    parser.add_argument("--no-reference", action="store_true",
                        help="Leave the aligned reference out (recorded already: summarise its run dir beside this one).")
    parser.add_argument("--run-name", default="evaluate", help="The evaluation's directory under --root.")
    args = parser.parse_args()
    immunise_seconds = {}
    run_dirs = args.summarise
    if not run_dirs:
        specs = [] if args.no_reference else [ModelSpec(name="aligned", source="smol:aligned", role="reference")]
        if args.released:
            specs.append(ModelSpec(name="released", source="smollm2-135m-instruct", role="base"))
        for method in args.methods:
            source, immunise_seconds[method] = immunise(method, args.root)
            specs.append(ModelSpec(name=method, source=source, role="defended", defence=method))
        cfg = load_config(EvaluateConfig, overrides=[f"evaluation.task=smol", f"evaluation.suite={args.suite}", *args.set])
        cfg.models = specs
        run_dirs = [args.root / args.run_name]
        run_evaluation(cfg, run_dirs[0])
    reports = [load_report(r) for r in run_dirs]
    report = reports[0]
    rows = {m.name: model_row(m) for r in reports for m in r.models}
    for record in sorted(args.root.glob("immunise-*/immunise.json")):  # runs immunised earlier
        data = json.loads(record.read_text())
        immunise_seconds.setdefault(data["defence"], data["seconds"])
    name = f"smol_eval_{report.suite}" + (f"_{args.label}" if args.label else "")
    save_result(name, {"runs": [str(r) for r in run_dirs], "task": report.task, "judge": report.judge, "models": rows,
                       "immunise_seconds": immunise_seconds, "wall_seconds": {str(d): r.wall_seconds for d, r in zip(run_dirs, reports)},
                       "presets": {m: yaml.safe_load((PRESETS / f"{m}.yaml").read_text()) for m in args.methods}})
    for model, row in rows.items():
        print(f"{model:12s} worst {row['worst_final_harmful']:.2f} ({row['worst_adversary']}) mean {row['mean_final_harmful']:.2f} "
              f"hazard-acc {row['hazard_accuracy_step0']}->{row['hazard_accuracy_worst_final']} benign {row['benign_accuracy']:.2f} "
              f"attacked-benign {row['attacked_benign_accuracy']} train {row['trainability_accuracy']} {row['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
