"""Batched generation (``generate``, batch 64) vs one prompt at a time, on the organism.

Both paths answer the aligned organism's world prompts (harmful and benign tasks alike,
greedy, default GenerationConfig). One-by-one decoding is slow, so it runs on an evenly spaced
subset of the same prompts and the two are compared per prompt. Rounds are interleaved
(single, batched, single, batched, ...) so machine noise hits both alike; the ratio of median
prompts/s is reported. The benchmark also checks that greedy answers are identical on the
shared prompts (batching must not change what the model says).

    python benchmarks/generation_throughput.py [--prompts 512] [--single 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from immunelm.eval.generation import GenerationConfig, generate, generate_one_by_one
from immunelm.world.organism import Organism

from common import save_result


def world_prompts(organism: Organism, n: int) -> list[str]:
    """``n`` training-phrasing prompts spread evenly over every task (harmful and benign)."""
    world = organism.world
    every = [item.prompt(p) for item in world.items for p in world.train_phrasings]
    stride = max(1, len(every) // n)
    return every[::stride][:n]


def timed(fn, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=512, help="Prompts for the batched path.")
    parser.add_argument("--single", type=int, default=128, help="Prompts (an even subset) for the one-by-one path.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    organism = Organism()
    organism.build()
    model, tok = organism.load("aligned")
    prompts = world_prompts(organism, args.prompts)
    step = max(1, len(prompts) // args.single)
    subset = list(range(0, len(prompts), step))[: args.single]
    cfg = GenerationConfig(batch_size=args.batch_size, progress=False)

    batched_rates, single_rates, identical = [], [], []
    for _ in range(args.rounds):
        single, seconds = timed(generate_one_by_one, model, tok, [prompts[i] for i in subset], cfg)
        single_rates.append(len(subset) / seconds)
        batched, seconds = timed(generate, model, tok, prompts, cfg)
        batched_rates.append(len(prompts) / seconds)
        identical.append(sum(batched[i] == s for i, s in zip(subset, single)) / len(subset))

    result = {
        "batched_prompts_per_s": batched_rates, "one_by_one_prompts_per_s": single_rates,
        "ratio_of_medians": statistics.median(batched_rates) / statistics.median(single_rates),
        "greedy_identical_fraction": min(identical),
        "n_prompts_batched": len(prompts), "n_prompts_one_by_one": len(subset), "batch_size": args.batch_size,
        "max_new_tokens": cfg.max_new_tokens, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device), "example_answers": batched[:: max(1, len(batched) // 4)][:4],
    }
    save_result("generation_throughput", result)
    print(f"batched/one-by-one prompts-per-second ratio: {result['ratio_of_medians']:.1f}x; "
          f"greedy answers identical: {result['greedy_identical_fraction']:.3f}")


if __name__ == "__main__":
    main()
