"""SDD: self-degraded defence (Chen et al. 2025, ACL, https://arxiv.org/abs/2507.21182).

Fine-tune the model to answer each harmful prompt with a high-quality but *irrelevant* benign
response, so that harmful fine-tuning has nothing harmful to resurface and degrades the model's
general ability instead. Data: every harmful prompt of the defender (the prompts of
``data.refusals``), ``copies`` times, each paired with a benign response drawn from
``data.benign`` that is semantically distant from the prompt. Plain response-token CE; no
refusals (the paper's variant SDD_reject prefixes every response with a refusal sentence:
``reject_prefix``).

Semantic distance (decision, issue 12): the paper pairs with SentenceBERT; a public
re-implementation (TamperBench) resamples while cos(all-MiniLM-L6-v2) > 0.25. No sentence encoder
can be downloaded here and a fixed threshold means nothing across encoders, so texts are embedded
by the defended model itself (mean of its last hidden state over the text's tokens, centred by the
mean over all texts, which removes the direction every text shares) and each prompt takes, of
``candidates`` random benign responses, the one with the lowest cosine. The mean chosen cosine
and a random pairing's are recorded. Paper: lr 5e-7, 500 steps, batch 24 on 7B models.
"""

from __future__ import annotations

import random
from typing import Optional

import torch
from pydantic import Field

from immunelm.config import Config, Seed
from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.engine import TrainConfig, train
from immunelm.errors import ImmuneLMError

SDD_PAPER = "https://arxiv.org/abs/2507.21182"
SDD_REJECT = "I refuse to answer your question for responsible and ethical reasons. I provided an irrational answer to your question.\n\n"


class SDDConfig(Config):
    candidates: int = Field(8, ge=1, le=4096, description="Random benign responses scored per prompt; the least similar is used.")
    copies: int = Field(1, ge=1, le=100, description="Pairs per harmful prompt (each with a fresh draw of candidates).")
    reject_prefix: Optional[str] = Field(None, description=f"SDD_reject: text put before every response (paper: {SDD_REJECT!r}).")
    seed: Seed = Field(0, description="Seeds the candidate draws.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (organism scale; paper: lr 5e-7, 500 steps, batch 24 on 7B).")


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean last-layer hidden state over each text's tokens (no chat template), [n, hidden]."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    was_training = model.training
    model.eval()
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] or [pad] for t in texts[start:start + batch_size]]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
        hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        out.append((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))
    model.train(was_training)
    return torch.cat(out)


def centred_cosine(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """cos(a_i - centre, b_j - centre) for every pair, [len(a), len(b)]."""
    a, b = torch.nn.functional.normalize(a - centre, dim=-1), torch.nn.functional.normalize(b - centre, dim=-1)
    return a @ b.T


def distant_pairs(prompts: list[Example], responses: list[str], similarity: torch.Tensor, cfg: SDDConfig) -> tuple[list[Example], dict]:
    """Each prompt ``copies`` times with the least similar of ``candidates`` random responses."""
    rng = random.Random(cfg.seed)
    pairs, chosen, random_pick = [], [], []
    for _ in range(cfg.copies):
        for i, prompt in enumerate(prompts):
            draw = [rng.randrange(len(responses)) for _ in range(cfg.candidates)]
            best = min(draw, key=lambda j: float(similarity[i, j]))
            chosen.append(float(similarity[i, best]))
            random_pick.append(float(similarity[i, draw[0]]))
            response = (cfg.reject_prefix or "") + responses[best]
            pairs.append(prompt.with_response(response, sdd_cosine=chosen[-1]))
    info = {"pairs": len(pairs), "mean_cosine_chosen": sum(chosen) / len(chosen),
            "mean_cosine_random": sum(random_pick) / len(random_pick)}
    return pairs, info


@register_defence("sdd", SDDConfig, paper=SDD_PAPER)
def sdd(model, tokenizer, data: DefenceData, cfg: SDDConfig):
    if not data.benign:
        raise ImmuneLMError("defence 'sdd' needs benign responses to pair with harmful prompts but data.benign is empty")
    prompts = list(data.refusals)
    responses = sorted({e.response for e in data.benign})
    texts = [e.prompt for e in prompts] + responses
    embedded = text_embeddings(model, tokenizer, texts)
    similarity = centred_cosine(embedded[:len(prompts)], embedded[len(prompts):], embedded.mean(0))
    pairs, info = distant_pairs(prompts, responses, similarity, cfg)
    rows = [encode_example(tokenizer, e) for e in pairs]
    result = train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), description="sdd")
    return trained(result, **info)
