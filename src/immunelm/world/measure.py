"""Measurements on the world: batched greedy answers and exact scores (per-token KL lives in
:mod:`immunelm.diagnostics.kl`)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from immunelm.eval.generation import GenerationConfig, generate
from immunelm.eval.judges.outcomes import CORRECT, REFUSED
from immunelm.world.judge import judge
from immunelm.world.spec import Item


# The world's answers are at most 12 tokens; 14 leaves room for <end>.
WORLD_GENERATION = GenerationConfig(max_new_tokens=14, batch_size=512, progress=False)


def score_items(model, tokenizer, items: Sequence[Item], phrasings: Sequence[int]) -> dict:
    """Judge every (item, phrasing); returns outcome rates and the per-sample records."""
    cases = [(item, p) for item in items for p in phrasings]
    answers = generate(model, tokenizer, [item.prompt(p) for item, p in cases], WORLD_GENERATION)
    records = [
        {"task": item.task, "entity": item.entity, "phrasing": p, "answer": a, "outcome": judge(item, a)}
        for (item, p), a in zip(cases, answers)
    ]
    counts = Counter(r["outcome"] for r in records)
    n = max(1, len(records))
    return {
        "n": len(records),
        "accuracy": counts[CORRECT] / n,
        "refusal": counts[REFUSED] / n,
        "rates": {k: v / n for k, v in sorted(counts.items())},
        "records": records,
    }
