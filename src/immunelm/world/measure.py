"""Measurements on the world: batched greedy answers, exact scores, per-token KL."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from immunelm.data import Example, PaddingCollator, encode_example
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


@torch.no_grad()
def per_token_kl(model_p, model_q, tokenizer, examples: Sequence[Example], batch_size: int = 256) -> torch.Tensor:
    """Mean over examples of KL(p(.|x, y<t) || q(.|x, y<t)) at each response position t.

    Qi et al. (2024), "Safety Alignment Should Be Made More Than Just a Few Tokens Deep",
    https://arxiv.org/abs/2406.05946 (their Fig. 1 uses p = aligned, q = base). Position 0 is
    the first response token. Examples may differ in length; positions are averaged over the
    examples long enough to have them.
    """
    model_p.eval(), model_q.eval()
    device = next(model_p.parameters()).device
    collate = PaddingCollator(tokenizer.pad_token_id)
    sums, counts = torch.zeros(0), torch.zeros(0)
    for lo in range(0, len(examples), batch_size):
        batch = collate([encode_example(tokenizer, e) for e in examples[lo:lo + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        logp = F.log_softmax(model_p(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
        logq = F.log_softmax(model_q(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)[:, :-1]  # predicts token t+1
        target = batch["labels"][:, 1:] != -100
        for row_kl, row_mask in zip(kl.cpu(), target.cpu()):
            values = row_kl[row_mask]
            if len(values) > len(sums):
                pad = len(values) - len(sums)
                sums, counts = torch.cat([sums, torch.zeros(pad)]), torch.cat([counts, torch.zeros(pad)])
            sums[: len(values)] += values
            counts[: len(values)] += 1
    return sums / counts.clamp(min=1)
