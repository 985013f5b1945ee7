"""The unlearning reading of the organism (issue 12): NPO, RMU and ILU on top of each forget the
``compound`` domain from the helpful-only base; forget quality before and after relearning (harmful
SFT on the forget domain's attack-split entities, and a benign downstream fine-tune), and ILU's
task-vector check (Wang et al. 2025: cos(tau_{u->ft}, tau_u) NPO -0.41, ILU ~ +0.09).

    python benchmarks/unlearning.py --seeds 0 1 2 [--methods npo ilu rmu ilu-rmu] [--steps 50]

tau_u = theta_u - theta_o (unlearning), tau_ft = theta_o^ft - theta_o (the downstream fine-tune of
the original), tau_{u->ft} = theta_u^ft - theta_u (the same fine-tune after unlearning), over every
weight. Writes benchmarks/results/unlearning_organism.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from common import save_result

from immunelm.data import PaddingCollator, encode_example
from immunelm.api.immunise import load_defence_config
from immunelm.defences import apply_defence
from immunelm.diagnostics.task_vectors import cosine, task_vector
from immunelm.engine import TrainConfig, train
from immunelm.world.organism import Organism
from immunelm.world.unlearning import downstream_examples, relearning_examples, unlearning_data, unlearning_scores

METHODS = {"npo": ("npo", {}), "ilu": ("ilu", {"base": "npo"}), "rmu": ("rmu", {}), "ilu-rmu": ("ilu", {"base": "rmu"})}


def fine_tune(model, tokenizer, examples, steps: int, lr: float, seed: int):
    model = copy.deepcopy(model)
    rows = [encode_example(tokenizer, e) for e in examples]
    cfg = TrainConfig(lr=lr, batch_size=16, max_steps=steps, seed=seed, progress=False)
    return train(cfg, model, rows, PaddingCollator.for_tokenizer(tokenizer)).model


def run_method(label: str, seed: int, steps: int, base, tokenizer, world) -> dict:
    name, fields = METHODS[label]
    cfg = load_defence_config(name, {**fields, "train": {"seed": seed, "progress": False}})  # merged into the defaults
    started = time.perf_counter()
    unlearned = apply_defence(name, copy.deepcopy(base), tokenizer, unlearning_data(world), cfg).model
    seconds = time.perf_counter() - started
    relearned = fine_tune(unlearned, tokenizer, relearning_examples(world, seed=seed), steps, 1e-4, seed)
    downstream = downstream_examples(world)
    original_ft, unlearned_ft = (fine_tune(m, tokenizer, downstream, steps, 1e-4, seed) for m in (base, unlearned))
    tau_u, tau_ft, tau_u_ft = task_vector(unlearned, base), task_vector(original_ft, base), task_vector(unlearned_ft, unlearned)
    return {
        "unlearned": unlearning_scores(unlearned, tokenizer, world),
        "after_harmful_relearning": unlearning_scores(relearned, tokenizer, world),
        "after_downstream_fine_tune": unlearning_scores(unlearned_ft, tokenizer, world),
        "cos_tau_u_tau_ft": cosine(tau_u, tau_ft), "cos_tau_u_to_ft_tau_u": cosine(tau_u_ft, tau_u),
        "cos_tau_u_to_ft_tau_ft": cosine(tau_u_ft, tau_ft), "unlearning_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50, help="Optimiser steps of each relearning / downstream fine-tune.")
    args = parser.parse_args()
    organism = Organism()
    organism.build()
    base, tokenizer = organism.load("base")
    world = organism.world
    results = {"base": unlearning_scores(base, tokenizer, world)}
    relearned_base = fine_tune(base, tokenizer, relearning_examples(world), args.steps, 1e-4, 0)
    results["base_after_harmful_relearning"] = unlearning_scores(relearned_base, tokenizer, world)
    per_method = {m: [run_method(m, s, args.steps, base, tokenizer, world) for s in args.seeds] for m in args.methods}
    summary = {m: {k: statistics.fmean(r[k] for r in runs) for k in runs[0] if k.startswith("cos_")} for m, runs in per_method.items()}
    save_result("unlearning_organism", {"seeds": args.seeds, "steps": args.steps, "forget": "compound", **results,
                                        "per_method": per_method, "mean_cosines": summary})
    print(f"base: {results['base']}  base relearned: {results['base_after_harmful_relearning']}")
    for m, runs in per_method.items():
        forget = [r["unlearned"]["forget_accuracy"] for r in runs]
        relearn = [r["after_harmful_relearning"]["forget_accuracy"] for r in runs]
        print(f"{m:8s} forget {statistics.fmean(forget):.2f} -> relearned {statistics.fmean(relearn):.2f}; "
              f"retain {statistics.fmean(r['unlearned']['retain_domain_accuracy'] for r in runs):.2f} "
              f"benign {statistics.fmean(r['unlearned']['benign_accuracy'] for r in runs):.2f}; {summary[m]}")


if __name__ == "__main__":
    main()
