"""Per-step time and peak memory of every defence vs plain SFT alignment, same model and batch.

Each method runs in its own subprocess (so peak memory is its own): the organism's aligned
model, batch 32, ``--steps`` steps after 3 warm-up steps. Time: seconds per step. Memory: on
GPU, torch's peak allocated bytes; on CPU, the growth of the process's peak RSS from just before
training to the end (what training added on top of the loaded model). Ratios are vs ``sft``.
A bi-level method's step is one *outer* step (K inner steps inside), so it also gets a total
ratio: its default run (outer steps x seconds) vs a 300-step SFT alignment. A training-free
method (LoX) is timed as one whole run. E.T. runs several engine runs (an attacker fit and a
block's training per layer): every optimiser step of all of them is clocked, so its "step" is
the mean over both kinds and its total ratio counts the steps of one layer only (read it as
a lower bound).

    python benchmarks/defence_overhead.py [--steps 30] [--methods vaccine booster] [--label family2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import save_result

METHODS = ["sft", "deep-align", "constrained-sft", "vaccine", "t-vaccine", "booster", "repnoise", "circuit-breakers", "lapt",
           "mlac", "tar", "sophon", "condition-number", "lox",
           "sdd", "ctrap", "seam", "tokenbuncher", "npo", "rmu", "ilu", "antidote", "et"]
SFT_ALIGNMENT_STEPS = 300  # the defences' organism budget; total-cost ratios compare against it


def child(method: str, steps: int) -> None:
    import torch

    torch.set_num_threads(2)
    from immunelm.api.immunise import world_defence_data
    from immunelm.data import PaddingCollator, encode_example
    from immunelm.defences import build_defence
    from immunelm.engine import TrainConfig, train
    from immunelm.world.organism import Organism, OrganismConfig

    organism = Organism()
    organism.build()
    model, tok = organism.load("aligned")
    model.train()
    data = world_defence_data(OrganismConfig())
    data.load_base = lambda: organism.load("base")[0]
    train_cfg = TrainConfig(lr=1.5e-4, batch_size=32, max_steps=steps + 3, progress=False, log_every=1)
    times: list[float] = []

    def clock(step, metrics):
        times.append(time.perf_counter())

    spec = build_defence(method) if method != "sft" else None
    training_free = spec is not None and spec.training_free
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if spec is None:
        rows = [encode_example(tok, e) for e in data.refusals + data.benign]
        train(train_cfg, model, rows, PaddingCollator(tok.pad_token_id), callbacks=[clock])
    elif training_free:  # LoX: its whole run is its one "step"
        times.extend([time.perf_counter()] * 3)
        spec.run(model, tok, data, spec.config_cls())
        clock(1, {})
    else:
        import immunelm.engine.engine as engine_module

        original = engine_module.Engine.__init__

        def with_clock(self, *args, **kwargs):
            kwargs["callbacks"] = list(kwargs.get("callbacks", ())) + [clock]
            original(self, *args, **kwargs)

        engine_module.Engine.__init__ = with_clock  # measure inside the defence's own engine run
        spec.run(model, tok, data, spec.config_cls(train=train_cfg))
    peak = torch.cuda.max_memory_allocated() if on_gpu else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    per_step = (times[-1] - times[2]) / (len(times) - 3)
    steps_of_run = 1 if training_free else (spec.config_cls().train.max_steps if spec else SFT_ALIGNMENT_STEPS)
    print(json.dumps({"method": method, "seconds_per_step": per_step, "peak_bytes": peak, "steps_of_default_run": steps_of_run,
                      "training_free": training_free, "device": "cuda" if on_gpu else "cpu"}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--child", default=None)
    parser.add_argument("--label", default="", help="Suffix of the results file name.")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    rows = {}
    for method in ["sft"] + [m for m in args.methods if m != "sft"]:
        out = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(rows[method], flush=True)
    base = rows["sft"]
    sft_total = base["seconds_per_step"] * SFT_ALIGNMENT_STEPS
    for row in rows.values():
        # per step: one (outer) step vs one SFT step; total: the method's default run vs a
        # 300-step SFT alignment (a training-free method's "step" is its whole run)
        row["time_ratio"] = row["seconds_per_step"] / base["seconds_per_step"]
        row["total_time_ratio"] = row["seconds_per_step"] * row["steps_of_default_run"] / sft_total
        row["memory_ratio"] = row["peak_bytes"] / max(1, base["peak_bytes"])
    save_result("defence_overhead" + (f"_{args.label}" if args.label else ""), {"steps": args.steps, "batch_size": 32, "sft_alignment_steps": SFT_ALIGNMENT_STEPS, "rows": rows})
    for name, row in rows.items():
        print(f"{name:18s} {row['seconds_per_step'] * 1000:8.1f} ms/step  x{row['time_ratio']:6.2f}  total x{row['total_time_ratio']:6.2f}   "
              f"peak {row['peak_bytes'] / 2**20:7.1f} MiB  x{row['memory_ratio']:.2f}")


if __name__ == "__main__":
    main()
