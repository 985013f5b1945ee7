"""Batched generation for any causal LM: left padding, KV cache, greedy or seeded sampling.

Every evaluation (harmfulness after an attack, benign accuracy, refusal rates, LLM judges)
generates many short answers, so this is the hot path of the adversarial evaluation. Prompts
are sorted by length so each batch carries little padding; they are left-padded so every
row's next token sits in the last column, which lets ``model.generate`` decode a whole batch
at once with its KV cache. Greedy batched answers equal one-by-one answers (a test checks).

Prefilling (forcing the start of each answer) works on token ids, not text: the forced ids
are appended to the encoded prompt and the answer is decoded from forced + generated ids in
one go, so its spacing is the tokenizer's own (a chat header ending in a newline gets no
artificial space before the prefix).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence, Union

import torch
from pydantic import Field
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from immunelm.config import Config, Seed
from immunelm.data.chat import IGNORE_INDEX, encode_example, encode_prompt
from immunelm.data.examples import Example
from immunelm.errors import ImmuneLMError

Messages = Sequence[Mapping[str, str]]
Prompt = Union[str, Messages]


class GenerationConfig(Config):
    """How answers are decoded. The defaults are greedy, as most published evaluations are."""

    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per answer at most.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature (sampling only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1.0 disables (sampling only).")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0 disables (sampling only).")
    stop_strings: list[str] = Field(
        default_factory=list, description="Answers are cut before the first occurrence of any of these."
    )
    batch_size: int = Field(64, ge=1, description="Prompts decoded together.")
    seed: Seed = Field(0, description="Sampling seed: the same seed and prompts give the same answers.")
    progress: bool = Field(True, description="Show a progress bar with ETA when there is more than one batch.")


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A plain string is one user turn; a list of ``{"role", "content"}`` dicts is used as is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt] if isinstance(prompt, Sequence) else None
    if not messages or not all("role" in m and "content" in m for m in messages):
        raise ImmuneLMError(
            f"prompt {prompt!r:.80}: expected a string or a non-empty list of {{'role', 'content'}} messages"
        )
    return messages


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut]


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos plus the model's (e.g. Llama 3's list)."""
    ids = {tokenizer.eos_token_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(model_eos if isinstance(model_eos, (list, tuple)) else [model_eos])
    return sorted(i for i in ids if i is not None)


def padding_id(tokenizer, eos_ids: list[int]) -> int:
    """The id batches are padded with: the tokenizer's pad token, else the first eos id."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if eos_ids:
        return eos_ids[0]  # padding is masked out, so any id works; eos is the usual choice
    raise ImmuneLMError(f"tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has neither a pad nor an eos token")


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-aligned, so its next token is the last column."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


class _StopOnStrings(StoppingCriteria):
    """Marks a row finished once its decoded answer contains a stop string (per-row stop)."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_width: int) -> None:
        self.tokenizer, self.stop_strings, self.prompt_width = tokenizer, list(stop_strings), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        hits = [any(s in t for s in self.stop_strings) for t in texts]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def _decode_one(tokenizer, prefix: list[int], new: list[int], eos_ids: list[int], stop_strings: Sequence[str]) -> str:
    """Forced prefix + generated ids up to eos, decoded together, cut at the first stop string
    the model generated (a stop string inside the forced prefix does not end the answer, as it
    does not stop decoding either)."""
    end = next((i for i, t in enumerate(new) if t in eos_ids), len(new))
    text = tokenizer.decode(prefix + new[:end], skip_special_tokens=True)
    forced = tokenizer.decode(prefix, skip_special_tokens=True) if prefix else ""
    start = len(forced) if text.startswith(forced) else 0
    return text[:start] + truncate_at_stop(text[start:], stop_strings)


def _decode(tokenizer, new_tokens: torch.Tensor, prefixes: Sequence[list[int]], eos_ids: list[int],
            stop_strings: Sequence[str]) -> list[str]:
    return [_decode_one(tokenizer, prefix, row, eos_ids, stop_strings)
            for prefix, row in zip(prefixes, new_tokens.tolist())]


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; the caller's train/eval state is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global RNG streams."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sampling_kwargs(cfg: GenerationConfig) -> dict:
    """``model.generate`` arguments for greedy decoding or ``cfg``'s sampling."""
    if not cfg.do_sample:
        # explicit Nones stop a model's own generation_config (e.g. temperature=0.6) leaking in
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}


@torch.no_grad()
def _generate_batch(model, tokenizer, rows: Sequence[list[int]], prefixes: Sequence[list[int]],
                    cfg: GenerationConfig, eos_ids: list[int], pad_id: int) -> list[str]:
    """Answers to already-encoded rows (prompt + forced prefix); ``prefixes`` are decoded with them."""
    ids, mask = left_pad(rows, pad_id)
    device = _model_device(model)
    stopping = None
    if cfg.stop_strings:
        stopping = StoppingCriteriaList([_StopOnStrings(tokenizer, cfg.stop_strings, ids.shape[1])])
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad_id, eos_token_id=eos_ids or None, use_cache=True, stopping_criteria=stopping,
        **sampling_kwargs(cfg),
    )
    return _decode(tokenizer, out[:, ids.shape[1]:].cpu(), prefixes, eos_ids, cfg.stop_strings)


def _prefixes(prefill_ids: Sequence[Sequence[int]] | None, n: int) -> list[list[int]]:
    """One forced prefix per prompt (empty without prefilling), with a one-line error on a bad count."""
    if prefill_ids is None:
        return [[] for _ in range(n)]
    if len(prefill_ids) != n:
        raise ImmuneLMError(f"prefill_ids has {len(prefill_ids)} rows for {n} prompts; give one (possibly empty) per prompt")
    return [[int(t) for t in row] for row in prefill_ids]


def response_prefix_ids(tokenizer, example: Example, k: int) -> list[int]:
    """The first ``k`` token ids of ``example``'s response, exactly as training sees them.

    These are the label positions of :func:`immunelm.data.encode_example` (the response
    tokenised in its chat context, after the assistant header), so prompt + prefix is the
    start of the training sequence token for token. The prefix stops before the first special
    token (the end-of-turn marker): forcing a response shorter than ``k`` forces all of it,
    never its end of turn.
    """
    if k < 0:
        raise ImmuneLMError(f"prefill length must be >= 0 tokens, got {k}")
    encoded = encode_example(tokenizer, example)
    response = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    end = next((i for i, t in enumerate(response) if t in special), len(response))
    return response[:min(k, end)]


def generate(model, tokenizer, prompts: Sequence[Prompt], cfg: GenerationConfig | None = None,
             prefill_ids: Sequence[Sequence[int]] | None = None) -> list[str]:
    """Answers to ``prompts`` (strings or chat-message lists), in the order given.

    Works for any causal LM ``model.generate`` supports, peft-wrapped ones included. Answers
    are decoded without special tokens and end at eos or just before the first stop string.
    ``prefill_ids`` (one list of token ids per prompt, e.g. from :func:`response_prefix_ids`)
    forces the start of each answer (the prefilling attack of Qi et al. 2024); the returned
    text is the whole answer, forced prefix included, decoded from prefix + generated ids
    together. An empty prefix is the same as none.
    """
    cfg = cfg or GenerationConfig()
    if not prompts:
        return []
    prefixes = _prefixes(prefill_ids, len(prompts))
    encoded = [encode_prompt(tokenizer, as_messages(p)) + prefix for p, prefix in zip(prompts, prefixes)]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows at once
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = padding_id(tokenizer, eos_ids)
    answers: list[str] = [""] * len(prompts)
    n_batches = -(-len(order) // cfg.batch_size)
    bar = tqdm(total=len(order), unit="prompt", desc="generate", disable=not cfg.progress or n_batches <= 1)
    with eval_mode(model), seeded(cfg.seed, _model_device(model)), bar:
        for lo in range(0, len(order), cfg.batch_size):
            batch = order[lo:lo + cfg.batch_size]
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in batch], [prefixes[i] for i in batch],
                                    cfg, eos_ids, pad_id)
            for i, text in zip(batch, texts):
                answers[i] = text
            bar.update(len(batch))
    return answers


def generate_one_by_one(model, tokenizer, prompts: Sequence[Prompt], cfg: GenerationConfig | None = None,
                        prefill_ids: Sequence[Sequence[int]] | None = None) -> list[str]:
    """The unbatched baseline: :func:`generate` called once per prompt (for benchmarks and tests)."""
    cfg = (cfg or GenerationConfig()).model_copy(update={"progress": False})
    prefixes = _prefixes(prefill_ids, len(prompts))
    return [generate(model, tokenizer, [p], cfg, [prefix])[0] for p, prefix in zip(prompts, prefixes)]
