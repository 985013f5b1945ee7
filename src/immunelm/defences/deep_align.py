"""Deep safety alignment by data augmentation (Qi et al. 2024, "Safety Alignment Should Be Made
More Than Just a Few Tokens Deep", https://arxiv.org/abs/2406.05946, Sec. 3).

Safety-recovery examples: with probability ``augment_prob`` a harmful prompt is followed by the
first k tokens of a harmful answer (k ~ U{1..min(max_prefix, len)}) and then a refusal; the loss
counts the refusal tokens only, teaching the model to recover from a harmful start instead of
gating only the first token. Mixed with utility (benign) examples, trained with plain SFT.
"""

from __future__ import annotations

import random

from pydantic import Field

from immunelm.config import Config, Seed
from immunelm.data import IGNORE_INDEX, Example, PaddingCollator, encode_example
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.engine import TrainConfig, train


class DeepAlignConfig(Config):
    augment_prob: float = Field(0.5, ge=0, le=1, description="P(harmful prefix before the refusal) (paper: 0.5).")
    max_prefix: int = Field(100, ge=1, description="k ~ U{1..min(max_prefix, answer length)} (paper: 100).")
    copies: int = Field(4, ge=1, description="Augmented copies of each harmful example (fresh k each).")
    utility_ratio: float = Field(1.0, ge=0, description="Benign examples per safety example.")
    seed: Seed = Field(0, description="Seeds k and the augmentation draws.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (organism scale; the paper fine-tunes Llama-2-7B-chat with lr 2e-5).")


def recovery_row(tokenizer, harmful: Example, refusal: str, k: int) -> dict[str, list[int]]:
    """prompt + first k harmful-answer tokens (unlabelled) + refusal (labelled)."""
    harm = encode_example(tokenizer, harmful)
    prompt_len = harm["labels"].count(IGNORE_INDEX)
    answer_ids = harm["input_ids"][prompt_len:]
    eos = tokenizer.eos_token_id
    if answer_ids and answer_ids[-1] == eos:
        answer_ids = answer_ids[:-1]
    refusal_row = encode_example(tokenizer, harmful.with_response(refusal))
    refusal_ids = [t for t, lab in zip(refusal_row["input_ids"], refusal_row["labels"]) if lab != IGNORE_INDEX]
    prefix = answer_ids[:k]
    ids = harm["input_ids"][:prompt_len] + prefix + refusal_ids
    labels = [IGNORE_INDEX] * (prompt_len + len(prefix)) + refusal_ids
    return {"input_ids": ids, "labels": labels}


def augmented_rows(tokenizer, data: DefenceData, cfg: DeepAlignConfig) -> list[dict[str, list[int]]]:
    rng = random.Random(cfg.seed)
    refusals = {e.prompt: e.response for e in data.refusals}
    default_refusal = data.refusals[0].response
    rows = [encode_example(tokenizer, e) for e in data.refusals]
    for _ in range(cfg.copies):
        for harmful in data.harmful:
            refusal = refusals.get(harmful.prompt, default_refusal)
            if rng.random() < cfg.augment_prob:
                n_tokens = len(tokenizer(harmful.response, add_special_tokens=False)["input_ids"])
                k = rng.randint(1, max(1, min(cfg.max_prefix, n_tokens)))
                rows.append(recovery_row(tokenizer, harmful, refusal, k))
            else:
                rows.append(encode_example(tokenizer, harmful.with_response(refusal)))
    n_benign = int(len(rows) * cfg.utility_ratio)
    benign = [rng.choice(data.benign) for _ in range(n_benign)] if data.benign else []
    return rows + [encode_example(tokenizer, e) for e in benign]


@register_defence("deep-align", DeepAlignConfig, paper="https://arxiv.org/abs/2406.05946")
def deep_align(model, tokenizer, data: DefenceData, cfg: DeepAlignConfig):
    rows = augmented_rows(tokenizer, data, cfg)
    result = train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), description="deep-align")
    return trained(result)
