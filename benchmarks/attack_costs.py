"""What each attack of a suite costs on the aligned organism, beside harmful SFT: seconds of the
attack's own work (scoring stubbed out) and the extra peak memory it needs over the loaded model.

    python benchmarks/attack_costs.py [--suite beyond-sft]

Each attack runs in its own process (a fresh peak-RSS counter: ``ru_maxrss`` after the attack
minus after loading the model). The score callback returns at once, so the time is the attack's
compute only (training, direction finding, template selection, scoring-free sweeps). Writes
benchmarks/results/attack_costs.json. Run alone: timings taken beside other jobs mean nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import save_result


def measure(suite: str, adversary: str) -> dict:
    """In this process: load the organism and the task, run one adversary with scoring stubbed."""
    import copy

    import torch

    from immunelm.api import EvaluateConfig
    from immunelm.api.evaluation import task_for
    from immunelm.attacks import AttackRun, load_suite
    from immunelm.eval.judges import build_judge
    from immunelm.sources import load_model_source

    torch.set_num_threads(2)
    cfg = EvaluateConfig()
    task = task_for(cfg)
    model, tokenizer = load_model_source("organism:aligned")
    suite_cfg = load_suite(suite)
    adv = next(a for a in suite_cfg.adversaries if a.name == adversary)
    loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = AttackRun(copy.deepcopy(model), tokenizer, task.attack, suite_cfg.eval_steps(adv),
                    score=lambda m, step, wrap=None: {"step": step}, description=adversary, judge=build_judge("exact"))
    started = time.perf_counter()
    run_result = adv.spec.run(run, adv.config)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": adv.kind, "family": adv.family, "seconds": seconds, "extra_peak_mib": (peak_kb - loaded_kb) / 1024,
            "points": len(run_result.evaluations)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="beyond-sft")
    parser.add_argument("--one", nargs=2, metavar=("SUITE", "ADVERSARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    from immunelm.attacks import load_suite

    rows = {}
    for adv in load_suite(args.suite).adversaries:
        proc = subprocess.run([sys.executable, __file__, "--one", args.suite, adv.name], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{adv.name}: {proc.stderr.strip().splitlines()[-1]}")
        rows[adv.name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(adv.name, rows[adv.name], flush=True)
    sft = next(r for r in rows.values() if r["kind"] == "harmful_sft")
    for row in rows.values():
        row["time_vs_sft"] = row["seconds"] / sft["seconds"]
    save_result(f"attack_costs_{args.suite}", {"suite": args.suite, "model": "organism:aligned", "threads": 2,
                                              "reference": "harmful_sft", "attacks": rows})


if __name__ == "__main__":
    main()
