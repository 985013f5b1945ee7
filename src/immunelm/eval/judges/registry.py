"""Judges by name: a new judge is one file plus one ``@register_judge("name")`` line."""

from __future__ import annotations

from typing import Any, Callable

from immunelm.registry import unknown_name
from immunelm.eval.judges.base import Judge

_JUDGES: dict[str, type[Judge]] = {}


def register_judge(name: str) -> Callable[[type[Judge]], type[Judge]]:
    """Class decorator: make ``cls`` buildable as ``build_judge(name, ...)``."""

    def add(cls: type[Judge]) -> type[Judge]:
        if name in _JUDGES and _JUDGES[name] is not cls:
            raise ValueError(f"judge name {name!r} is already registered by {_JUDGES[name].__qualname__}")
        cls.name = name
        _JUDGES[name] = cls
        return cls

    return add


def judge_names() -> list[str]:
    return sorted(_JUDGES)


def judge_class(name: str) -> type[Judge]:
    if name not in _JUDGES:
        raise unknown_name("judge", name, _JUDGES)
    return _JUDGES[name]


def build_judge(name: str, **config: Any) -> Judge:
    """The judge registered as ``name``, configured by ``config`` (validated, typos rejected)."""
    return judge_class(name).from_options(**config)
