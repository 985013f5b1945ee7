"""Engine steps/s vs a bare PyTorch loop doing the same work, in the same process.

Both loops pretrain the organism's architecture on the organism's corpus with AdamW, cosine
schedule, clipping and the same batch size; the only difference is the engine's machinery
(accelerate, deterministic resumable sampler, metrics, callbacks, progress bar). Rounds are
interleaved (bare, engine, bare, engine, ...) so machine noise hits both alike; the ratio of
medians is reported. Target: >= 0.95.

    python benchmarks/engine_vs_bare.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from immunelm.data import PaddingCollator
from immunelm.engine import TrainConfig, train
from immunelm.engine.optim import build_optimizer, build_scheduler
from immunelm.engine.steps import response_token_loss
from immunelm.world import corpus
from immunelm.world.organism import OrganismConfig, new_model
from immunelm.world.spec import generate_world
from immunelm.world.tokenizer import build_tokenizer

from common import save_result


def bare_loop(cfg: TrainConfig, model, rows, collate) -> float:
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg.max_steps, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(rows), generator=gen).tolist()
    model.train()
    start = time.perf_counter()
    for step in range(cfg.max_steps):
        lo = (step * cfg.batch_size) % (len(rows) - cfg.batch_size)
        batch = collate([rows[i] for i in perm[lo:lo + cfg.batch_size]])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = response_token_loss(out.logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return cfg.max_steps / (time.perf_counter() - start)


def engine_loop(cfg: TrainConfig, model, rows, collate) -> float:
    result = train(cfg, model, rows, collate)
    return cfg.max_steps / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    organism = OrganismConfig()
    world = generate_world(organism.world)
    tok = build_tokenizer(world)
    rows = [corpus.encode_lm(tok, e) for e in corpus.pretraining_examples(world)]
    collate = PaddingCollator(tok.pad_token_id)
    cfg = organism.pretrain.model_copy(update={"max_steps": args.steps, "progress": True, "warmup_steps": 5})
    bare, engine = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(cfg, new_model(organism, tok), rows, collate))
        engine.append(engine_loop(cfg, new_model(organism, tok), rows, collate))
    result = {
        "bare_steps_per_s": bare, "engine_steps_per_s": engine,
        "ratio_of_medians": statistics.median(engine) / statistics.median(bare),
        "target": 0.95, "steps_per_round": args.steps, "batch_size": cfg.batch_size,
    }
    save_result("engine_vs_bare", result)
    print(f"engine/bare steps-per-second ratio: {result['ratio_of_medians']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
