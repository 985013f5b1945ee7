"""Per-token KL between two models along the response: how deep does a difference go?

Qi et al. 2024, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep"
(https://arxiv.org/abs/2406.05946), Fig. 1: on (harmful prompt, harmful answer) pairs,

    KL_t = E_(x, y) [ KL( p_1(. | x, y_<t) || p_2(. | x, y_<t) ) ],   t = 0, 1, ... (response positions)

with p_1 = aligned and p_2 = base. Shallow alignment concentrates KL_t in the first few tokens.
The same profile on benign pairs is the control: a difference that is as large on benign
answers is not about safety. Decisions: the split "first k vs later" uses k = 5 (the paper's
figure shows the first ~5 tokens carrying most of the KL); positions are averaged over the
examples long enough to have them; both models must share a tokenizer (a KL over two
vocabularies is undefined), which the caller checks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.diagnostics.base import DiagnosticResult, finite, finite_list
from immunelm.errors import ImmuneLMError


@torch.no_grad()
def per_token_kl(model_p, model_q, tokenizer, examples: Sequence[Example], batch_size: int = 256) -> torch.Tensor:
    """Mean over examples of KL(p(.|x, y<t) || q(.|x, y<t)) at each response position t
    (position 0 predicts the first response token)."""
    model_p.eval(), model_q.eval()
    device = next(model_p.parameters()).device
    collate = PaddingCollator(tokenizer.pad_token_id)
    sums, counts = torch.zeros(0), torch.zeros(0)
    for lo in range(0, len(examples), batch_size):
        batch = collate([encode_example(tokenizer, e) for e in examples[lo:lo + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        logp = F.log_softmax(model_p(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
        logq = F.log_softmax(model_q(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
        if logp.shape != logq.shape:
            raise ImmuneLMError(f"per-token KL: the models' vocabularies differ ({logp.shape[-1]} vs {logq.shape[-1]}); "
                                "expected two models with one tokenizer")
        kl = (logp.exp() * (logp - logq)).sum(-1)[:, :-1]  # position i predicts token i+1
        target = batch["labels"][:, 1:] != -100
        for row_kl, row_mask in zip(kl.cpu(), target.cpu()):
            values = row_kl[row_mask]
            if len(values) > len(sums):
                pad = len(values) - len(sums)
                sums, counts = torch.cat([sums, torch.zeros(pad)]), torch.cat([counts, torch.zeros(pad)])
            sums[: len(values)] += values
            counts[: len(values)] += 1
    return sums / counts.clamp(min=1)


class KLSplit(DiagnosticResult):
    """One example set's profile: per position, and the first-k vs later means."""

    per_position: list[float]
    first_mean: float
    later_mean: Optional[float]  # None when no answer is longer than k tokens
    ratio: Optional[float]  # first_mean / later_mean


class KLProfile(DiagnosticResult):
    first_k: int
    harmful: KLSplit
    benign: Optional[KLSplit] = None  # the control


def split_profile(kl: torch.Tensor, first_k: int, what: str = "KL") -> KLSplit:
    values = finite_list(kl, what)
    head = finite(kl[:first_k].mean(), f"{what} first {first_k}")
    tail = finite(kl[first_k:].mean(), f"{what} after {first_k}") if len(values) > first_k else None
    return KLSplit(per_position=values, first_mean=head, later_mean=tail,
                   ratio=head / max(tail, 1e-12) if tail is not None else None)


def kl_profile(model_p, model_q, tokenizer, harmful: Sequence[Example], benign: Sequence[Example] = (),
               first_k: int = 5, batch_size: int = 64) -> KLProfile:
    """KL(model_p || model_q) by response position on harmful pairs, with the benign control."""
    if not harmful:
        raise ImmuneLMError("per-token KL: no harmful examples (expected (prompt, harmful answer) pairs)")
    return KLProfile(
        first_k=first_k,
        harmful=split_profile(per_token_kl(model_p, model_q, tokenizer, harmful, batch_size), first_k, "harmful KL"),
        benign=split_profile(per_token_kl(model_p, model_q, tokenizer, benign, batch_size), first_k, "benign KL") if benign else None,
    )
