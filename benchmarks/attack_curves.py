"""Harmful score along each adversary's budget, per model, averaged over evaluation runs: the
plateau check for the bi-level defences (TAR, MLAC), whose simulated inner adversary is weaker
than most of the suite's (K = 16 steps at one of three AdamW learning rates, vs 200 steps,
other optimisers, LoRA, data mixes). A defence that only holds inside its training distribution
shows low scores at steps <= K for AdamW and a climb afterwards or under other optimisers.

    python benchmarks/attack_curves.py RUN_DIR [RUN_DIR ...] [--models aligned tar mlac] [--label family2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import save_result

from immunelm.report import load_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    scores: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in args.runs:
        for model in load_report(run).models:
            if args.models and model.name not in args.models:
                continue
            for adversary in model.resistance:
                curve = scores.setdefault(model.name, {}).setdefault(adversary.name, {})
                for point in adversary.curve:
                    curve.setdefault(point.step, []).append(point.harmful_score)
    table = {m: {a: {step: statistics.fmean(v) for step, v in sorted(c.items())} for a, c in advs.items()} for m, advs in scores.items()}
    save_result("attack_curves" + (f"_{args.label}" if args.label else ""), {"runs": [str(r) for r in args.runs], "table": table})
    for model, adversaries in table.items():
        for adversary, curve in adversaries.items():
            print(f"{model:14s} {adversary:24s} " + "  ".join(f"{s}:{v:.2f}" for s, v in curve.items()))


if __name__ == "__main__":
    main()
