"""CTRAP: collapse trap (Yi et al. 2025, https://arxiv.org/abs/2505.16559).

Alignment plus a trap that springs only under harmful fine-tuning: after one simulated harmful
step the model should predict a fixed token e at every response position, i.e. collapse into
"error error error ...". Per step, three gradient evaluations (first-order, like Booster):

    g_h  = grad h(w)                          h = CE on (harmful prompt, harmful answer)
    w'   = w - alpha * g_h / ||g_h||          the simulated harmful step (normalised, as the code)
    g_c  = grad l_collapse(w')                l_collapse = -1/|y| sum_t log p(e | x, y_<t)
    g_a  = grad l_align(w)
    update direction = g_a + lambda * g_c

The collapse loss is evaluated on the alignment batch itself (the official code: refusals and
helpful chat with every response label replaced by e), not on harmful data. Defaults alpha 0.1,
lambda 0.1 (official script); e = the token of " error" (the code: the last id of "an error").
The organism's word-level vocabulary has no "error": ``collapse_token=None`` then falls back to
"the", and the token used is recorded.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from immunelm.config import Config
from immunelm.data import IGNORE_INDEX, PaddingCollator
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows, harmful_stream, register_defence, trained
from immunelm.defences.bilevel import add_to_grads, after_normalised_step, trainable
from immunelm.engine import StepContext, TrainConfig, causal_lm_loss, train
from immunelm.errors import ImmuneLMError

CTRAP_PAPER = "https://arxiv.org/abs/2505.16559"
FALLBACK_WORD = "the"


class CTRAPConfig(Config):
    lam: float = Field(0.1, ge=0, description="lambda, weight of the collapse loss at the shifted weights (official script 0.1).")
    alpha: float = Field(0.1, gt=0, description="Size of the normalised simulated harmful step (official script 0.1).")
    collapse_token: Optional[str] = Field(
        None, description="The word e the trap collapses into; None = 'error' (paper) if the tokenizer knows it, else 'the'.")
    harmful_batch_size: int = Field(16, ge=1, description="Harmful pairs per step for h (official script 10).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1.5e-4, batch_size=32, max_steps=300, log_every=25),
        description="Engine settings (official: LoRA r32, lr 5e-4, 20 epochs on 7B models).")


def word_token(tokenizer, word: str) -> int | None:
    """The id of ``word`` as it appears mid-sentence (the last id of 'an <word>'), None if unknown."""
    ids = tokenizer("an " + word, add_special_tokens=False)["input_ids"]
    unknown = getattr(tokenizer, "unk_token_id", None)
    return None if not ids or ids[-1] == unknown else ids[-1]


def collapse_token_id(tokenizer, word: Optional[str]) -> tuple[int, str]:
    if word is not None:
        token = word_token(tokenizer, word)
        if token is None:
            raise ImmuneLMError(f"defence.collapse_token: the tokenizer does not know {word!r}; give a word in its vocabulary")
        return token, word
    for candidate in ("error", FALLBACK_WORD):
        token = word_token(tokenizer, candidate)
        if token is not None:
            return token, candidate
    raise ImmuneLMError("defence.collapse_token: the tokenizer knows neither 'error' nor 'the'; set a word it knows")


def collapse_labels(labels: torch.Tensor, token: int) -> torch.Tensor:
    """Every response label replaced by the collapse token (prompt and padding stay ignored)."""
    return torch.where(labels != IGNORE_INDEX, torch.full_like(labels, token), labels)


class CTRAPStep:
    def __init__(self, cfg: CTRAPConfig, harmful: BatchStream, token: int) -> None:
        self.cfg, self.harmful, self.token = cfg, harmful, token

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = trainable(ctx.model)
        h = causal_lm_loss(ctx.model, self.harmful.next(batch["input_ids"].device))
        g_h = torch.autograd.grad(h, params)
        trap = {**batch, "labels": collapse_labels(batch["labels"], self.token)}
        with after_normalised_step(params, list(g_h), self.cfg.alpha):
            collapse = causal_lm_loss(ctx.model, trap)
            g_collapse = torch.autograd.grad(collapse, params)
        align = causal_lm_loss(ctx.model, batch)
        ctx.backward(align)
        add_to_grads(ctx, params, [self.cfg.lam * g for g in g_collapse])
        return {"loss": (align + self.cfg.lam * collapse).detach(), "align": align.detach(),
                "collapse_after_step": collapse.detach(), "harmful_loss": h.detach()}


@register_defence("ctrap", CTRAPConfig, paper=CTRAP_PAPER)
def ctrap(model, tokenizer, data: DefenceData, cfg: CTRAPConfig):
    token, word = collapse_token_id(tokenizer, cfg.collapse_token)
    step = CTRAPStep(cfg, harmful_stream(tokenizer, data, cfg.harmful_batch_size, cfg.train.seed), token)
    result = train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                   step_fn=step, description="ctrap")
    return trained(result, collapse_token=word, collapse_token_id=token)
