"""Utility scorers: does a model's answer match a reference? One function per scorer name.

* ``exact``: whitespace-normalised equality (the built-in world, whose answers are exact).
* ``contains``: every key fact in ``meta["keys"]`` (or, without keys, the whole reference)
  occurs in the answer, case-insensitively. Chat models wrap answers in sentences
  ("The capital of France is Paris."), so exact match under-counts them.
* ``multiple_choice``: the first option letter (A-E) the answer names equals the reference's.

Perplexity is not an answer scorer: a task lists its perplexity text separately.
"""

from __future__ import annotations

import re
from typing import Callable

from immunelm.data import Example
from immunelm.eval.judges.outcomes import answer_contains, normalise
from immunelm.registry import unknown_name

_OPTION = re.compile(r"(?<![A-Za-z])\(?([A-E])[).:]?(?![A-Za-z])")


def exact(answer: str, example: Example) -> bool:
    return normalise(answer) == normalise(example.response)


def contains(answer: str, example: Example) -> bool:
    return answer_contains(answer, example.response, example.meta.get("keys"))


def first_option(text: str) -> str | None:
    """The first standalone option letter in ``text`` ("B", "(B)", "B)", "B." or "B: ...")."""
    match = _OPTION.search(text.strip())
    return match.group(1) if match else None


def multiple_choice(answer: str, example: Example) -> bool:
    expected = first_option(example.response)
    return expected is not None and first_option(answer) == expected


SCORERS: dict[str, Callable[[str, Example], bool]] = {
    "exact": exact, "contains": contains, "multiple_choice": multiple_choice,
}


def scorer(name: str) -> Callable[[str, Example], bool]:
    if name not in SCORERS:
        raise unknown_name("scorer", name, SCORERS)
    return SCORERS[name]
