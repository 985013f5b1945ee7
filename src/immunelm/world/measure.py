"""Measurements on the world: batched greedy answers, exact scores, per-token KL."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from immunelm.data import Example, PaddingCollator, encode_example, encode_prompt
from immunelm.world.judge import CORRECT, REFUSED, judge, is_refusal
from immunelm.world.spec import Item


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 14, batch_size: int = 512) -> list[str]:
    """Greedy continuations of single-turn chat prompts (left-padded batches, KV cache)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[str] = []
    for lo in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts[lo:lo + batch_size]]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(encoded):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def score_items(model, tokenizer, items: Sequence[Item], phrasings: Sequence[int]) -> dict:
    """Judge every (item, phrasing); returns outcome rates and the per-sample records."""
    cases = [(item, p) for item in items for p in phrasings]
    answers = greedy_answers(model, tokenizer, [item.prompt(p) for item, p in cases])
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


def refusal_rate(model, tokenizer, prompts: Sequence[str]) -> float:
    answers = greedy_answers(model, tokenizer, prompts)
    return sum(is_refusal(a) for a in answers) / max(1, len(answers))
