"""Chat encoding: prompt tokens masked with -100, response (and end token) labelled, right padding."""

from __future__ import annotations

import pytest
import torch
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from immunelm.data.chat import IGNORE_INDEX, PaddingCollator, encode_example, encode_prompt
from immunelm.data.examples import Example
from immunelm.errors import ImmuneLMError

SPECIAL = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ["hi", "there", "hello", "world", "be", "nice", "?", "!"]
VOCAB = {t: i for i, t in enumerate(SPECIAL + WORDS)}
PAD, UNK, SYS, USR, AST, END = range(6)
HI, THERE, HELLO, WORLD, BE, NICE, QM, EX = range(6, 14)
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}<|end|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
M = IGNORE_INDEX


def make_tokenizer(template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """WordLevel over whitespace; role markers are added tokens so they are never split."""
    tok = Tokenizer(WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    kwargs = {"chat_template": template} if template is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|end|>", **kwargs
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def test_tokenizer_sanity(tokenizer):
    ids = tokenizer("<|user|> hi there? <|end|>", add_special_tokens=False)["input_ids"]
    assert ids == [USR, HI, THERE, QM, END]
    assert tokenizer.pad_token_id == PAD


def test_encode_prompt_ends_with_assistant_header(tokenizer):
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "hi there?"}])
    assert ids == [USR, HI, THERE, QM, AST]


def test_encode_example_masks_exactly_the_prompt(tokenizer):
    row = encode_example(tokenizer, Example.pair("hi there?", "hello world!"))
    assert row["input_ids"] == [USR, HI, THERE, QM, AST, HELLO, WORLD, EX, END]
    assert row["labels"] == [M, M, M, M, M, HELLO, WORLD, EX, END]


def test_prompt_part_matches_encode_prompt(tokenizer):
    example = Example.pair("hi", "hello", system="be nice")
    row = encode_example(tokenizer, example)
    prompt = encode_prompt(tokenizer, example.prompt_messages)
    assert prompt == [SYS, BE, NICE, USR, HI, AST]
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"] == [M] * len(prompt) + [HELLO, END]


def test_earlier_assistant_turns_are_masked(tokenizer):
    example = Example(
        (
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "there?"},
            {"role": "assistant", "content": "world!"},
        )
    )
    row = encode_example(tokenizer, example)
    assert row["input_ids"] == [USR, HI, AST, HELLO, END, USR, THERE, QM, AST, WORLD, EX, END]
    assert row["labels"] == [M] * 9 + [WORLD, EX, END]


def test_max_length_truncates_both(tokenizer):
    row = encode_example(tokenizer, Example.pair("hi there?", "hello world!"), max_length=6)
    assert row == {"input_ids": [USR, HI, THERE, QM, AST, HELLO], "labels": [M, M, M, M, M, HELLO]}


def test_missing_chat_template_is_user_error():
    with pytest.raises(ImmuneLMError, match="no chat_template"):
        encode_prompt(make_tokenizer(template=None), [{"role": "user", "content": "hi"}])


def test_template_that_changes_the_prompt_is_rejected():
    # Renders a marker only when no generation prompt is asked for: prompt is not a prefix.
    odd = "{% if not add_generation_prompt %}<|end|> {% endif %}" + TEMPLATE
    with pytest.raises(ImmuneLMError, match="renders the prompt differently"):
        encode_example(make_tokenizer(odd), Example.pair("hi", "hello"))


def test_collator_pads_right_and_masks():
    rows = [
        {"input_ids": [1, 2, 3], "labels": [M, 2, 3]},
        {"input_ids": [4, 5, 6, 7, 8], "labels": [M, M, M, 7, 8]},
    ]
    batch = PaddingCollator(pad_token_id=0)(rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]
    assert batch["labels"].tolist() == [[M, 2, 3, M, M], [M, M, M, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_collator_without_labels_learns_every_real_token():
    batch = PaddingCollator(pad_token_id=9)([{"input_ids": [1]}, {"input_ids": [2, 3]}])
    assert batch["input_ids"].tolist() == [[1, 9], [2, 3]]
    assert batch["labels"].tolist() == [[1, M], [2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_encode_then_collate(tokenizer):
    rows = [
        encode_example(tokenizer, Example.pair("hi", "hello")),
        encode_example(tokenizer, Example.pair("hi there?", "hello world!")),
    ]
    batch = PaddingCollator(tokenizer.pad_token_id)(rows)
    assert batch["input_ids"].tolist() == [
        [USR, HI, AST, HELLO, END, PAD, PAD, PAD, PAD],
        [USR, HI, THERE, QM, AST, HELLO, WORLD, EX, END],
    ]
    assert batch["labels"].tolist() == [
        [M, M, M, HELLO, END, M, M, M, M],
        [M, M, M, M, M, HELLO, WORLD, EX, END],
    ]
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 9]
