"""Chat formatting through the tokenizer's chat template, with response-only labels.

The prompt part (everything up to and including the assistant header) and the response part
are tokenised separately and concatenated, so the boundary is exact for any tokenizer and
the loss can count response tokens only (labels = -100 elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from immunelm.data.examples import Example
from immunelm.errors import ImmuneLMError

IGNORE_INDEX = -100


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ImmuneLMError(
            f"tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has no chat_template; "
            "pass one with chat_template=chatml (a preset, a .jinja file or a template string) or use an instruction-tuned model"
        )
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


#: Named chat templates for tokenizers that ship none (``chat_template=chatml``).
CHAT_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def set_chat_template(tokenizer, value: str | None) -> None:
    """Give ``tokenizer`` a chat template: a preset name, a template file, or the template text."""
    if not value:
        return
    from pathlib import Path

    if value in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[value]
    elif "{{" in value or "{%" in value:
        tokenizer.chat_template = value
    elif Path(value).is_file():
        tokenizer.chat_template = Path(value).read_text(encoding="utf-8")
    else:
        raise ImmuneLMError(
            f"chat_template '{value}': not a preset ({', '.join(CHAT_TEMPLATES)}), a file, or Jinja template text")


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant header (ready to generate)."""
    text = _render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, example: Example, max_length: int | None = None) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (prompt masked with -100) for one example."""
    prompt_text = _render(tokenizer, example.prompt_messages, add_generation_prompt=True)
    full_text = _render(tokenizer, example.messages, add_generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise ImmuneLMError(
            "chat template renders the prompt differently with and without the response; "
            "cannot mask prompt tokens reliably"
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        # Training on it would add nothing (or give a NaN loss on a batch of such rows).
        why = (f"the prompt takes {len(prompt_ids)} tokens and max_length={max_length} cuts every answer token; "
               "raise max_length or shorten the prompt") if response_ids else "the answer encodes to no tokens"
        raise ImmuneLMError(f"example with no answer tokens to train on: {why}")
    return {"input_ids": input_ids, "labels": labels}


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int | None, source: str) -> list[dict[str, list[int]]]:
    """:func:`encode_example` for a whole dataset; an error names ``source`` and the example's index."""
    rows = []
    for index, example in enumerate(examples):
        try:
            rows.append(encode_example(tokenizer, example, max_length))
        except ImmuneLMError as exc:
            raise ImmuneLMError(f"{source}: example {index}: {exc}") from exc
    return rows


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids``/``labels`` to the longest row; builds ``attention_mask``."""

    pad_token_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "PaddingCollator":
        """Pads with the tokenizer's pad id (0 if it has none: padded positions are masked anyway)."""
        return cls(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(row.get("labels", row["input_ids"]), dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
