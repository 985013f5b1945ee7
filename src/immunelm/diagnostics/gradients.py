"""Gradient geometry of harmful vs benign fine-tuning, and the entropy of harmful answers.

1. Gradient cosine (SEAM's quantity: Wang et al. 2025, "Self-Destructive Language Model",
   https://arxiv.org/abs/2505.12186). With L_S(theta) the mean response-token cross-entropy
   over every answer token of the pairs in S,

       g_harm = grad L_harmful(theta),   g_benign = grad L_benign(theta),
       cos = <g_harm, g_benign> / (||g_harm|| ||g_benign||)

   over all trainable parameters flattened. SEAM drives it negative, so that fine-tuning on
   harmful data undoes benign ability. The same ratio restricted to each parameter group
   (a decoder block, the embeddings, the final norm, the head) comes for free once both
   gradients are held.

2. Response entropy (TokenBuncher's quantity: https://arxiv.org/abs/2508.20697): on harmful
   prompts x with answers y, the mean over response positions t of

       H_t = H(p(. | x, y_<t)) = - sum_v p(v | x, y_<t) log p(v | x, y_<t)

   TokenBuncher lowers it, so that RL attacks, which need varied samples, have little to
   explore. y is either the given harmful answer (teacher-forced: cheap and deterministic) or
   the model's own answer (greedy by default, through :func:`immunelm.eval.generation.generate`).

Decisions:
* The mean is token-weighted over the whole set (as one batch holding every pair), not a mean
  of batch means: each batch's loss is weighted by its share of the answer tokens, so
  ``batch_size`` does not change the result. Answer tokens are those ``encode_example`` labels,
  the template's end-of-turn token included, as training sees them.
* Gradients come from ``torch.autograd.grad``, so no ``.grad`` field of the model is touched;
  they are accumulated in float32 (two copies of the trainable parameters) and reduced in
  float64. Parameters the loss does not reach count as zero gradients.
* Both quantities are measured in eval mode (no dropout: deterministic, and the cosine of a set
  with itself is exactly 1); the caller's train/eval mode is restored.
* A NaN/inf gradient or entropy raises an ImmuneLMError naming it; a zero gradient makes the
  overall cosine undefined (an error), a group's cosine None.
* Generated answers are decoded text re-encoded with the example's prompt, so H_t is measured
  on the tokens training on those answers would see (a tokenisation round trip may differ from
  the sampled ids in rare cases). Per-position means average over answers long enough to have
  the position.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Optional, Sequence

import torch

from immunelm.data import IGNORE_INDEX, Example, PaddingCollator, encode_examples
from immunelm.diagnostics.base import DiagnosticResult, finite, finite_list
from immunelm.engine.steps import response_token_loss
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import GenerationConfig, eval_mode, generate


class GradientCosine(DiagnosticResult):
    cosine: float
    harmful_norm: float
    benign_norm: float
    harmful_loss: float
    benign_loss: float
    parameters: int  # trainable scalars the gradients span
    groups: dict[str, Optional[float]]  # cosine per parameter group (None: a zero gradient there)


class ResponseEntropy(DiagnosticResult):
    answers: Literal["given", "generated"]
    mean: float  # nats, over every answer token
    per_position: list[float]  # mean H_t for t = 0 .. (at most the first `positions`)
    per_position_count: list[int]  # answers long enough to have position t
    tokens: int
    examples: int
    max_entropy: float  # log(vocabulary size): the entropy of a uniform next token


# ----------------------------------------------------------------------------- shared
def _batches(tokenizer, examples: Sequence[Example], batch_size: int, max_length: Optional[int], what: str):
    """Collated batches of the encoded pairs and their total count of answer tokens."""
    if not examples:
        raise ImmuneLMError(f"{what}: no examples")
    if batch_size < 1:
        raise ImmuneLMError(f"batch_size must be >= 1, got {batch_size}")
    rows = encode_examples(tokenizer, examples, max_length, what)
    collate = PaddingCollator.for_tokenizer(tokenizer)
    batches = [collate(rows[lo:lo + batch_size]) for lo in range(0, len(rows), batch_size)]
    return batches, sum(_answer_tokens(b) for b in batches)


def _answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions that predict an answer token (what response_token_loss averages over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _to(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ----------------------------------------------------------------------------- gradients
def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ImmuneLMError("gradient cosine: the model has no trainable parameters (requires_grad is off everywhere)")
    return params


def mean_loss_gradient(model, tokenizer, examples: Sequence[Example], batch_size: int = 8,
                       max_length: Optional[int] = None, what: str = "gradient") -> tuple[list[torch.Tensor], float]:
    """(grad of the token-mean answer CE over ``examples`` per trainable parameter (float32), the loss)."""
    params = [p for _, p in trainable(model)]
    batches, total = _batches(tokenizer, examples, batch_size, max_length, what)
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    loss_sum = 0.0
    with eval_mode(model):
        for batch in batches:
            share = _answer_tokens(batch) / total  # the batch's weight in the token mean over the set
            if share == 0:
                continue
            batch = _to(batch, model)
            loss = response_token_loss(_logits(model, batch), batch["labels"]) * share
            parts = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
            for acc, part in zip(grads, parts):
                acc.add_(part.float())
            loss_sum += float(loss.detach())
    return grads, loss_sum


def group_of(name: str) -> str:
    """A parameter's group: its decoder block (``model.layers.3``), else its module (``lm_head``)."""
    block = re.search(r"\.(\d+)\.", name)
    return name[:block.end(1)] if block else name.rsplit(".", 1)[0]


def _cosine(dot: float, sq_a: float, sq_b: float) -> Optional[float]:
    return dot / math.sqrt(sq_a * sq_b) if sq_a > 0 and sq_b > 0 else None


def gradient_cosine(model, tokenizer, harmful: Sequence[Example], benign: Sequence[Example], batch_size: int = 8,
                    max_length: Optional[int] = None) -> GradientCosine:
    """cos(grad L_harmful, grad L_benign) over every trainable parameter, and per group."""
    names = [n for n, _ in trainable(model)]
    g_h, loss_h = mean_loss_gradient(model, tokenizer, harmful, batch_size, max_length, "gradient cosine (harmful)")
    g_b, loss_b = mean_loss_gradient(model, tokenizer, benign, batch_size, max_length, "gradient cosine (benign)")
    sums: dict[str, list[float]] = {}  # group -> [<g_h, g_b>, ||g_h||^2, ||g_b||^2]
    for name, a, b in zip(names, g_h, g_b):
        a, b = a.double().flatten(), b.double().flatten()
        acc = sums.setdefault(group_of(name), [0.0, 0.0, 0.0])
        for i, value in enumerate((a @ b, a @ a, b @ b)):
            acc[i] += float(value)
    dot, sq_h, sq_b = (sum(s[i] for s in sums.values()) for i in range(3))
    norm_h = finite(math.sqrt(sq_h), "gradient norm on harmful examples")
    norm_b = finite(math.sqrt(sq_b), "gradient norm on benign examples")
    if norm_h == 0 or norm_b == 0:
        raise ImmuneLMError(f"gradient cosine: the {'harmful' if norm_h == 0 else 'benign'} gradient is zero; "
                            "the cosine is undefined (is the loss already 0, or no parameter trainable?)")
    groups = {g: _cosine(*s) for g, s in sums.items()}
    return GradientCosine(
        cosine=finite(dot / (norm_h * norm_b), "gradient cosine"), harmful_norm=norm_h, benign_norm=norm_b,
        harmful_loss=finite(loss_h, "harmful loss"), benign_loss=finite(loss_b, "benign loss"),
        parameters=sum(a.numel() for a in g_h),
        groups={g: None if c is None else finite(c, f"gradient cosine of {g}") for g, c in groups.items()})


# ----------------------------------------------------------------------------- entropy
@torch.no_grad()
def token_entropies(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """H(p(.|x, y<t)) at every position predicting an answer token and that position's index t
    in its answer, both flat over the batch; and the vocabulary size."""
    logits = _logits(model, _to(batch, model))[:, :-1].float()
    entropy = torch.special.entr(logits.softmax(-1)).sum(-1).cpu()  # entr(0) = 0: no 0 * log 0 = NaN
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    index = mask.cumsum(-1) - 1
    return entropy[mask], index[mask], logits.shape[-1]


def response_entropy(model, tokenizer, examples: Sequence[Example], batch_size: int = 16, positions: int = 16,
                     max_length: Optional[int] = None,
                     answers: Literal["given", "generated"] = "given") -> ResponseEntropy:
    """Teacher-forced next-token entropy along the answers of ``examples`` (nats)."""
    if positions < 1:
        raise ImmuneLMError(f"positions must be >= 1, got {positions}")
    batches, _ = _batches(tokenizer, examples, batch_size, max_length, "response entropy")
    values, indices = [], []
    with eval_mode(model):
        for batch in batches:
            entropy, index, vocab = token_entropies(model, batch)
            values.append(entropy), indices.append(index)
    entropy, index = torch.cat(values).double(), torch.cat(indices)
    head = index < positions
    counts = torch.bincount(index[head], minlength=1)
    sums = torch.bincount(index[head], weights=entropy[head], minlength=1)
    return ResponseEntropy(
        answers=answers, mean=finite(entropy.mean(), "response entropy"),
        per_position=finite_list(sums / counts, "response entropy per position"),
        per_position_count=counts.tolist(), tokens=len(entropy), examples=len(examples),
        max_entropy=math.log(vocab))


def generated_response_entropy(model, tokenizer, examples: Sequence[Example],
                               generation: Optional[GenerationConfig] = None, batch_size: int = 16,
                               positions: int = 16) -> ResponseEntropy:
    """:func:`response_entropy` on the model's own answers to the prompts of ``examples``
    (greedy, 32 new tokens, unless ``generation`` says otherwise)."""
    cfg = generation or GenerationConfig(max_new_tokens=32, progress=False)
    texts = generate(model, tokenizer, [e.prompt_messages for e in examples], cfg)
    own = [e.with_response(text) for e, text in zip(examples, texts)]
    return response_entropy(model, tokenizer, own, batch_size, positions, answers="generated")
