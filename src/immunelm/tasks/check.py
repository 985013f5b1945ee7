"""Can a model's tokenizer encode a task? Checked for every model before any work starts.

A word-level tokenizer (the organism's) maps unseen words to ``<unk>``: scoring it on English
text would produce numbers that look fine and mean nothing. Byte-level BPE tokenizers never
emit ``<unk>``, so for them the check is a cheap no-op.
"""

from __future__ import annotations

from immunelm.errors import ImmuneLMError
from immunelm.tasks.base import EvalTask


def unknown_words(tokenizer, texts: list[str], limit: int = 3) -> tuple[int, list[str]]:
    """(number of texts containing ``<unk>``, up to ``limit`` example words that became ``<unk>``)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0, []
    bad, words = 0, []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if unk not in ids:
            continue
        bad += 1
        for word in text.split():
            if len(words) < limit and unk in tokenizer(word, add_special_tokens=False)["input_ids"] and word not in words:
                words.append(word)
    return bad, words


def check_tokenizer(tokenizer, task: EvalTask, model_name: str) -> None:
    """One-line error if ``tokenizer`` cannot encode the task's text or has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ImmuneLMError(
            f"model '{model_name}': its tokenizer has no chat_template; pass one with chat_template=chatml (or a .jinja file, or template text)")
    texts = sorted(set(task.texts()))
    bad, words = unknown_words(tokenizer, texts)
    if bad:
        raise ImmuneLMError(
            f"model '{model_name}': its tokenizer cannot encode task '{task.name}' ({bad}/{len(texts)} texts have unknown "
            f"tokens, e.g. {', '.join(repr(w) for w in words)}); evaluate it on a task in its own vocabulary")
