"""Immunise the organism with each defence for each seed, evaluate all against the aligned
reference with one suite, and record the pillars per method (mean and range over seeds).

    python benchmarks/defence_eval.py --suite standard --seeds 0 1 2 [--methods vaccine booster]
    python benchmarks/defence_eval.py --summarise RUN_DIR [RUN_DIR ...]   # aggregate existing runs
        [--include benchmarks/results/OLD.json]                           # + runs recorded earlier
    python benchmarks/defence_eval.py --methods tar lox vaccine+lox      # a+b = pipeline a then b
    python benchmarks/defence_eval.py --seeds 1 2 --reference none       # aligned already recorded

Writes benchmarks/results/defence_eval_<suite>.json. The seed is the defence's training seed
(``defence.train.seed``); the organism and the attacks are the same for every seed, so the
spread shows how much a defence's outcome depends on its own randomness.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import save_result

from immunelm.api import EvaluateConfig, ImmuniseConfig, ModelSpec, run_evaluation, run_immunise
from immunelm.api.immunise import load_defence_config
from immunelm.defences import build_defence, defence_names
from immunelm.eval.pillars import summarise_resistance
from immunelm.report import load_report


def seeded(method: str, seed: int) -> dict:
    """The defence config that sets its training seed (a training-free one has nothing to seed)."""
    return {} if build_defence(method).training_free else {"train": {"seed": seed, "progress": False}}


def defence_for(method: str, seed: int) -> tuple[str, dict]:
    """(registered name, config); ``a+b`` means the pipeline of a then b, each seeded."""
    if "+" in method:
        return "pipeline", {"steps": [{"defence": m, "config": seeded(m, seed)} for m in method.split("+")]}
    return method, seeded(method, seed)


def immunised(name: str, config: dict, out: Path, reuse: bool) -> Path:
    """The immunised model's directory; with ``reuse``, an earlier run of the same resolved
    defence config in ``out`` is taken as it is (its immunise.json says what it ran)."""
    record = out / "immunise.json"
    if reuse and record.is_file():
        wanted = load_defence_config(name, config).model_dump(mode="json")
        if json.loads(record.read_text())["defence_config"] == wanted:
            return out / "model"
    return run_immunise(name, ImmuniseConfig(defence=config), out)


def evaluate_seed(methods: list[str], seed: int, suite: str, root: Path, reuse: bool = False,
                  with_reference: bool = True, run_name: str | None = None) -> Path:
    specs = [ModelSpec(name="aligned", source="organism:aligned", role="reference")] if with_reference else []
    for method in methods:
        out = root / f"seed{seed}" / f"immunise-{method}"
        name, config = defence_for(method, seed)
        ckpt = immunised(name, config, out, reuse)
        specs.append(ModelSpec(name=method, source=str(ckpt), role="defended", defence=method))
    cfg = EvaluateConfig(models=specs)
    cfg.evaluation.suite = suite
    # one root holds both suites' runs of the same models; --run-name splits one seed over processes
    run_dir = root / f"seed{seed}" / (run_name or f"evaluate-{suite}")
    run_evaluation(cfg, run_dir)
    return run_dir


def per_run_rows(run_dirs: list[Path]) -> dict[str, list[dict]]:
    """Each model's pillar numbers, one row per evaluation run."""
    per_model: dict[str, list[dict]] = {}
    for run_dir in run_dirs:
        for m in load_report(run_dir).models:
            # re-read from the curves with today's definitions (older runs get the newer fields)
            m.resistance_summary = summarise_resistance(m.resistance, m.resistance_summary.threshold, m.resistance_summary.epsilon)
            per_model.setdefault(m.name, []).append({
                "worst_final_harmful": m.resistance_summary.worst_final_harmful,
                "mean_final_harmful": m.resistance_summary.mean_final_harmful,
                "broken_fraction": len(m.resistance_summary.broken_by) / len(m.resistance),
                # collapse beside every harmful number: low harm from a collapsed model is not resistance
                "worst_adversary_collapsed": m.resistance_summary.worst_adversary_collapsed,
                "worst_adversary_utility": m.resistance_summary.worst_adversary_utility,
                "mean_final_collapsed": statistics.fmean(a.curve[-1].outcomes.collapsed for a in m.resistance),
                "held_only_by_collapse_fraction": len(m.resistance_summary.held_only_by_collapse) / len(m.resistance),
                "outcome_by_adversary": m.resistance_summary.outcome_by_adversary,
                **{f"worst_{family}": v for family, v in m.resistance_summary.worst_by_family.items()},
                "benign_accuracy": m.stability.benign_accuracy,
                "trainability_accuracy": m.trainability.final_accuracy,
                "steps_to_target": m.trainability.steps_to_target,
            })
    return per_model


def earlier_rows(path: Path) -> dict[str, list[dict]]:
    """Per-run rows of an earlier results file (its ``per_run``, or a single-run table's values),
    so runs made on another machine, whose run directories are gone, still count."""
    result = json.loads(path.read_text())["result"]
    if "per_run" in result:
        return result["per_run"]
    table = result["table"]
    if any(cell["n"] != 1 for row in table.values() for cell in row.values()):
        raise SystemExit(f"{path}: result.table aggregates several runs and has no per_run rows")
    return {name: [{key: cell["mean"] for key, cell in row.items()}] for name, row in table.items()}


def summarise(per_model: dict[str, list[dict]]) -> dict:
    table = {}
    for name, rows in per_model.items():
        table[name] = {}
        for key in dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], dict)):  # numbers, in order
            values = [r[key] for r in rows if r.get(key) is not None]
            table[name][key] = {"mean": statistics.fmean(values) if values else None,
                                "min": min(values, default=None), "max": max(values, default=None), "n": len(values)}
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=[m for m in defence_names() if m not in ("deep-align", "constrained-sft", "pipeline")])
    parser.add_argument("--root", type=Path, default=Path("runs/defence_eval"))
    parser.add_argument("--summarise", type=Path, nargs="*", default=None)
    parser.add_argument("--label", default="", help="Suffix of the results file name.")
    parser.add_argument("--include", type=Path, nargs="*", default=[], help="Earlier results files whose runs also count.")
    parser.add_argument("--reuse", action="store_true", help="Keep models immunised earlier under --root with the same config.")
    parser.add_argument("--reference", choices=["each", "first", "none"], default="each",
                        help="Evaluate the aligned reference with each seed, the first only, or not at all. Its "
                             "result does not depend on the defence seed (same organism, same attacks), so "
                             "'first'/'none' save its evaluation where it was recorded already.")
    parser.add_argument("--run-name", default=None, help="The evaluation's directory under ROOT/seedN (default evaluate-SUITE).")
    args = parser.parse_args()
    run_dirs = args.summarise or [
        evaluate_seed(args.methods, s, args.suite, args.root, args.reuse,
                      with_reference=args.reference == "each" or (args.reference == "first" and i == 0), run_name=args.run_name)
        for i, s in enumerate(args.seeds)]
    per_model = per_run_rows(run_dirs)
    for path in args.include:
        for name, rows in earlier_rows(path).items():
            per_model.setdefault(name, []).extend(rows)
    table = summarise(per_model)
    suite = load_report(run_dirs[0]).suite
    save_result(f"defence_eval_{suite}" + (f"_{args.label}" if args.label else ""),
                {"runs": [str(r) for r in run_dirs], "included": [str(p) for p in args.include], "per_run": per_model, "table": table})
    print(f"{'model':18s} worst  mean   broken  benign  train-acc  steps   (mean over {max(len(rows) for rows in per_model.values())} run(s))")
    for name, row in table.items():
        print(f"{name:18s} {row['worst_final_harmful']['mean']:.2f}   {row['mean_final_harmful']['mean']:.2f}   "
              f"{row['broken_fraction']['mean']:.2f}    {row['benign_accuracy']['mean']:.2f}    "
              f"{row['trainability_accuracy']['mean']:.2f}       {row['steps_to_target']['mean']}")


if __name__ == "__main__":
    main()
