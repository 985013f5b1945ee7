"""What the SmolLM2-135M organism costs on this machine: seconds per full and LoRA training step
at batch 4 x 128 tokens (the engine, AdamW), generation tokens/s (batch 64, 40 new tokens, the
smol task's eval prompts), and the organism's stage build times (from the cached build.json).

    python benchmarks/smol_costs.py [--steps 6] [--prompts 128]

Run alone: two processes sharing 2 cores each with 2 OpenMP threads run ~10x slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from common import save_result

from immunelm.data import PaddingCollator
from immunelm.engine import LoraSettings, TrainConfig, train
from immunelm.eval.generation import GenerationConfig, generate
from immunelm.smol import data as smol_data
from immunelm.smol.organism import SmolOrganism


def rows_of_length(tokenizer, world, length: int, n: int) -> list[dict]:
    """``n`` rows of exactly ``length`` tokens of the world's own text (documents joined)."""
    ids = tokenizer(" ".join(world.documents() * 4), add_special_tokens=False)["input_ids"]
    return [{"input_ids": ids[i * length:(i + 1) * length], "labels": ids[i * length:(i + 1) * length]} for i in range(n)]


def step_seconds(model, tokenizer, rows, lora: bool, steps: int) -> float:
    """Median seconds per engine step; a timestamp callback runs before every step, the first
    step (allocation, LoRA wrapping) is dropped."""
    stamps: list[float] = []
    cfg = TrainConfig(lr=1e-5, batch_size=4, max_steps=steps + 2, progress=False, log_every=100,
                      eval_at=list(range(steps + 2)), lora=LoraSettings(r=8, alpha=16) if lora else None)
    train(cfg, copy.deepcopy(model), rows, PaddingCollator.for_tokenizer(tokenizer),
          evaluate=lambda m, s: stamps.append(time.perf_counter()) or {}, description="cost")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps[1:])


def generation_rate(model, tokenizer, prompts: list, new_tokens: int) -> dict:
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=64, progress=False)
    started = time.perf_counter()
    answers = generate(model, tokenizer, prompts, cfg)
    seconds = time.perf_counter() - started
    produced = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"prompts": len(prompts), "seconds": seconds, "generated_tokens": produced,
            "tokens_per_second": produced / seconds, "prompts_per_second": len(prompts) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=128)
    args = parser.parse_args()
    organism = SmolOrganism()
    model, tokenizer = organism.load("aligned", build=True)
    rows = rows_of_length(tokenizer, organism.world, 128, 4 * (args.steps + 2))
    full = step_seconds(model, tokenizer, rows, False, args.steps)
    lora = step_seconds(model, tokenizer, rows, True, args.steps)
    w = organism.world
    prompts = [e.prompt_messages for e in w.chat_examples(w.by_task("compound", "eval"), w.train_phrasings)]
    prompts += [[{"role": "user", "content": p.text}] for p in smol_data.real_splits()["eval"]]
    gen = generation_rate(model, tokenizer, prompts[: args.prompts], 40)
    builds = {s: json.loads((organism.stage_dir(s) / "build.json").read_text())["seconds"] for s in ("base", "aligned")}
    result = {"threads": torch.get_num_threads(), "full_step_seconds_b4x128": full, "lora_r8_step_seconds_b4x128": lora,
              "lora_over_full": lora / full, "generation": gen, "build_seconds": builds,
              "steps": {"base": organism.config.knowledge.max_steps, "aligned": organism.config.align.max_steps}}
    save_result("smol_costs", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
