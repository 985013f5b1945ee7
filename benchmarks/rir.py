"""Relative Immunisation Ratio (Zheng et al. 2025, eq. 17 and eqs. 5'-6') of defended models.

For every ``immunise-*/model`` under the given run roots (the output of ``defence_eval.py``),
RIR relative to theta_0 = the aligned organism the defences started from, and relative to the
identity (token embeddings), on the attacker's data pools: harmful = the attack split's
(prompt, harmful answer) pairs, benign = the benign tasks. 20 draws of 100 examples (paper).

    python benchmarks/rir.py runs/defence_eval/seed0 runs/defence_eval/seed1 [--label family1]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import save_result

from immunelm.diagnostics.conditioning import relative_immunisation_ratio
from immunelm.tasks.world import world_task
from immunelm.models import load_model_and_tokenizer
from immunelm.world.organism import Organism


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    organism = Organism()
    organism.build()
    reference, tokenizer = organism.load("aligned")
    pools = world_task(organism.world).attack
    per_method: dict[str, list[dict]] = {}
    for root in args.roots:
        for model_dir in sorted(root.glob("immunise-*/model")):
            method = model_dir.parent.name.removeprefix("immunise-")
            model, _ = load_model_and_tokenizer(str(model_dir))
            out = relative_immunisation_ratio(model.eval(), reference.eval(), tokenizer, pools.harmful, pools.benign,
                                              draws=args.draws, size=args.size)
            per_method.setdefault(method, []).append({"run": str(root), **out})
            print(f"{method:18s} {root}  RIR_theta0 {out['rir_theta0']}  RIR_identity {out['rir_identity']}", flush=True)
    table = {}
    for method, rows in per_method.items():
        values = [r["rir_theta0"] for r in rows if r["rir_theta0"] is not None]
        table[method] = {"rir_theta0_mean": statistics.fmean(values) if values else None,
                         "rir_theta0_min": min(values, default=None), "rir_theta0_max": max(values, default=None),
                         "n": len(values), "runs": rows}
    save_result("rir" + (f"_{args.label}" if args.label else ""), {"draws": args.draws, "size": args.size, "table": table})


if __name__ == "__main__":
    main()
