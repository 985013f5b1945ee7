"""Soft-prompt (embedding-space) attack: k continuous virtual tokens, the model frozen.

Prompt tuning (Lester et al. 2021, https://arxiv.org/abs/2104.08691) learns k input
embeddings P in R^{k x d} for a frozen model; used as an attack (Schwinn et al. 2024, "Soft
Prompt Threats", https://arxiv.org/abs/2402.09063) P is fitted to elicit harmful answers:

    P* = argmin_P CE(harmful answers | [P ; prompt])

on the attacker's (harmful prompt, harmful answer) pairs, with no weight of the model changed.
An open-weight model's owner can feed any embedding, so this bounds what any text prompt can do.

How the virtual tokens reach the model (training and generation alike):

1. A prompt wrap inserts k copies of a placeholder token before (``position=prefix``, prompt
   tuning) or after (``suffix``, the embedding-attack / GCG position) the user's request. The
   placeholder is a token that encodes to exactly k consecutive copies of one id in this
   tokenizer's chat prompts (checked on every attacker prompt; a special token the chat template
   does not use is preferred, then unk, then punctuation; ``placeholder=`` picks one).
2. A forward hook on the input-embedding module replaces the embeddings of the first run of k
   placeholder ids in each row with P. With the KV cache the prompt is embedded once (the
   multi-token prefill); single-token decoding steps are left alone and read P from the cache.
   Prompts without the run (benign ones, never wrapped) are untouched, so utility is measured
   on the plain model, as for every prompt attack.

P is parameterised as rms * U (rms = the embedding module's mean output norm / sqrt(d)), so an
Adam step of ``lr`` moves it by about lr times a typical embedding coordinate in any model. It
starts as random vectors of the mean embedding norm or as the embeddings of a real ``phrase``.
The budget is optimiser steps through the shared engine; step 0 is the unattacked model.

Measured on the built-in aligned organism (k = 8, lr 0.1): harmful score 0.95 after 10 steps
as a prefix, 0.65 as a suffix (0.99 / 0.85 after 100); benign accuracy untouched (unwrapped).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, Optional, Sequence

import torch
from pydantic import Field, model_validator
from torch import nn

from immunelm.attacks.base import AttackResult, AttackRun, PromptWrap, register_attack
from immunelm.attacks.latent import FrozenLM, draw_harmful, frozen_train_config, loss_info, optimise
from immunelm.config import Config, Seed
from immunelm.data import Example, encode_example, encode_prompt
from immunelm.engine import TrainConfig
from immunelm.errors import ImmuneLMError
from immunelm.models import ModelAdapter

LESTER_2021 = "https://arxiv.org/abs/2104.08691"
SCHWINN_2024 = "https://arxiv.org/abs/2402.09063"
#: Plain-text placeholders tried after the tokenizer's spare special tokens.
PLAIN_PLACEHOLDERS = ("@", "#", "~", "^", "|", "*", "_")


class SoftPromptConfig(Config):
    """One soft-prompt attacker (Schwinn et al. 2024, https://arxiv.org/abs/2402.09063)."""

    tokens: int = Field(8, ge=1, le=512, description="k virtual tokens (Lester et al. use 1-150, https://arxiv.org/abs/2104.08691).")
    position: Literal["prefix", "suffix"] = Field(
        "prefix", description="Before the request (prompt tuning) or after it (embedding attack, https://arxiv.org/abs/2402.09063).")
    init: Literal["random", "phrase"] = Field(
        "random", description="Random directions of the mean embedding norm, or the embeddings of `phrase`'s tokens (cycled to k).")
    phrase: str = Field("", description="Initial text when init=phrase (e.g. 'sure , here is').")
    placeholder: Optional[str] = Field(
        None, description="A string that is one token in this tokenizer, used k times to reserve the positions "
                          "(unset: found automatically).")
    examples: int = Field(64, ge=1, le=100_000, description="Harmful (prompt, answer) pairs the soft prompt is fitted on.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=0.1, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; max_steps = budget; lr is about the fraction of a typical embedding "
                    "coordinate one Adam step moves.")
    seed: Seed = Field(0, description="Which attacker examples are drawn and the random initialisation.")

    @model_validator(mode="after")
    def _check(self) -> "SoftPromptConfig":
        frozen_train_config(self.train)
        if self.init == "phrase" and not self.phrase.strip():
            raise ValueError("init=phrase needs a non-empty phrase")
        return self


def placeholder_wrap(text: str, position: str) -> PromptWrap:
    if position == "prefix":
        return lambda prompt: f"{text} {prompt}"
    return lambda prompt: f"{prompt} {text}"


def _single_id(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _candidates(tokenizer, examples: Sequence[Example]) -> list[str]:
    """Spare special tokens (in no attacker prompt), then unk, then punctuation."""
    # unk goes after the spare specials: unknown words in a prompt also encode to it
    used = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    for example in examples:
        used.update(encode_prompt(tokenizer, example.prompt_messages))
    spare = [t.content for i, t in sorted(tokenizer.added_tokens_decoder.items()) if t.special and i not in used]
    return [*spare, *([tokenizer.unk_token] if tokenizer.unk_token else []), *PLAIN_PLACEHOLDERS]


def _reserves(tokenizer, examples: Sequence[Example], wrap: PromptWrap, token: int, k: int) -> bool:
    """Whether every wrapped prompt holds ``token`` exactly k times, all in one run."""
    for example in examples:
        ids = encode_prompt(tokenizer, example.with_prompt(wrap(example.prompt)).prompt_messages)
        where = [i for i, t in enumerate(ids) if t == token]
        if len(where) != k or where[-1] - where[0] != k - 1:
            return False
    return True


def find_placeholder(tokenizer, examples: Sequence[Example], k: int, position: str,
                     given: str | None = None) -> tuple[int, PromptWrap]:
    """(placeholder id, wrap inserting k of it): the first candidate (``given`` alone if set)
    that reserves exactly k consecutive positions in every example's chat prompt."""
    reserved = {tokenizer.pad_token_id, tokenizer.eos_token_id}  # padding and answer ends hold these
    for text in [given] if given else _candidates(tokenizer, examples):
        token = _single_id(tokenizer, text)
        if token is None or token in reserved:
            continue
        for sep in ("", " "):  # special tokens concatenate; word-level vocabularies need spaces
            wrap = placeholder_wrap(sep.join([text] * k), position)
            if _reserves(tokenizer, examples, wrap, token, k):
                return token, wrap
    if given:
        raise ImmuneLMError(f"soft_prompt: placeholder {given!r} does not encode as {k} consecutive copies of one "
                            "(non-pad, non-eos) token in this tokenizer's chat prompts; choose another placeholder")
    raise ImmuneLMError("soft_prompt: no token of this tokenizer reserves k consecutive positions in its chat prompts; "
                        "set placeholder= to a string that is a single token")


def insert_soft_tokens(ids: torch.Tensor, embedded: torch.Tensor, soft: torch.Tensor, placeholder: int) -> torch.Tensor:
    """``embedded`` with the first run of k = len(soft) ``placeholder`` ids of each row replaced
    by ``soft`` (rows without such a run unchanged). Single-token passes (KV-cache decoding) are
    returned as they are: their prompt was embedded, soft tokens included, in the prefill."""
    k = soft.shape[0]
    if ids.dim() != 2 or ids.shape[1] < max(2, k):
        return embedded
    runs = (ids == placeholder).unfold(1, k, 1).all(-1)  # [batch, T-k+1]: a run starts here
    rows = runs.any(-1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return embedded
    starts = runs.int().argmax(-1)[rows]  # argmax returns the first maximum: the first run
    cols = starts[:, None] + torch.arange(k, device=ids.device)
    out = embedded.clone()
    out[rows[:, None], cols] = soft.to(out.dtype)
    return out


@torch.no_grad()
def embedding_norm(embedding: nn.Module, sample: int = 4096) -> float:
    """Mean L2 norm of the embedding module's outputs over a fixed sample of ids (its outputs,
    so families that scale inside it, e.g. Gemma, are measured as the model sees them)."""
    vocab, device = embedding.weight.shape[0], embedding.weight.device
    ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:sample].to(device)
    return float(embedding(ids).float().norm(dim=-1).mean())


class SoftPrompt(FrozenLM):
    """k trainable embeddings P = rms * U that replace the placeholder run of every wrapped prompt."""

    def __init__(self, lm: nn.Module, placeholder: int, init: torch.Tensor, rms: float) -> None:
        super().__init__(lm)
        self.placeholder, self.rms = placeholder, float(rms)
        self.unit = nn.Parameter(init.detach().float().to(self.device) / self.rms)

    @property
    def embeddings(self) -> torch.Tensor:
        return self.rms * self.unit

    def _replace(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return insert_soft_tokens(args[0], output, self.embeddings, self.placeholder) if args else output

    @contextmanager
    def installed(self) -> Iterator[None]:
        handle = self.adapter.embedding.register_forward_hook(self._replace)
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def initial_embeddings(embedding: nn.Module, tokenizer, cfg: SoftPromptConfig, norm: float) -> torch.Tensor:
    """k rows: random directions of length ``norm``, or ``cfg.phrase``'s embeddings (cycled to k)."""
    weight = embedding.weight
    if cfg.init == "random":
        z = torch.randn(cfg.tokens, weight.shape[-1], generator=torch.Generator().manual_seed(cfg.seed))
        return (norm * z / z.norm(dim=-1, keepdim=True)).to(weight.device)
    ids = tokenizer(cfg.phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ImmuneLMError(f"soft_prompt: phrase {cfg.phrase!r} encodes to no tokens")
    cycled = torch.tensor([ids[i % len(ids)] for i in range(cfg.tokens)], device=weight.device)
    return embedding(cycled).float()


@register_attack("soft_prompt", SoftPromptConfig, paper=SCHWINN_2024, family="inference-time")
def soft_prompt(run: AttackRun, cfg: SoftPromptConfig) -> AttackResult:
    examples = draw_harmful(run, cfg.examples, cfg.seed)
    placeholder, wrap = find_placeholder(run.tokenizer, examples, cfg.tokens, cfg.position, cfg.placeholder)
    rows = [encode_example(run.tokenizer, e.with_prompt(wrap(e.prompt))) for e in examples]
    embedding = ModelAdapter(run.model).embedding
    norm = embedding_norm(embedding)
    init = initial_embeddings(embedding, run.tokenizer, cfg, norm)
    module = SoftPrompt(run.model, placeholder, init, rms=norm / embedding.weight.shape[-1] ** 0.5)
    result = optimise(run, module, rows, cfg.train, wrap=wrap)
    info = {"virtual_tokens": cfg.tokens, "position": cfg.position,
            "placeholder": run.tokenizer.convert_ids_to_tokens(placeholder), "embedding_norm": norm,
            "soft_norm": float(module.embeddings.detach().norm(dim=-1).mean()), "examples": len(rows), **loss_info(result)}
    return AttackResult(result.evaluations, result.seconds, info)
