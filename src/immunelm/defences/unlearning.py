"""Parts shared by the unlearning defences (NPO, RMU and ILU on top of either).

Unlearning reads the defender's data as a *forget* set and a *retain* set:

* forget = ``data.harmful``, the defender's (harmful prompt, harmful answer) pairs: the knowledge
  to remove (on the organism, the align split of the harm domains; never attack or eval entities);
* retain = D_align (refusals + benign pairs): the model must keep answering benign requests and
  keep refusing. The papers retain on general text (WikiText, Wikipedia); on a chat model the
  alignment data is what must survive, so it is the retain set here (decision, issue 12).
"""

from __future__ import annotations

import torch

from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, alignment_rows
from immunelm.engine import label_logprobs


def forget_stream(tokenizer, data: DefenceData, batch_size: int, seed: int) -> BatchStream:
    """Batches of the forget set (the defender's harmful pairs), seeded apart from the engine's order."""
    rows = [encode_example(tokenizer, e) for e in data.harmful]
    return BatchStream(rows, PaddingCollator.for_tokenizer(tokenizer), batch_size, seed + 1)


def retain_rows(tokenizer, data: DefenceData) -> list[dict[str, list[int]]]:
    """The retain set the engine iterates over: refusals plus benign pairs."""
    return alignment_rows(tokenizer, data)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) per row: the sum of the labelled tokens' next-token log-probabilities."""
    return label_logprobs(logits, labels)[0].sum(dim=1)
