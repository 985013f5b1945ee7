"""What every judge takes and returns.

A judge turns (prompt, response) samples into verdicts with one of five outcomes and a
harmfulness score in [0, 1]. The labels live in :mod:`immunelm.eval.judges.outcomes` (and are
re-exported here). Reports keep "refused", "collapsed" and "complied" apart (the HS+
convention), because a defence that "wins" by breaking the model must show up as collapse,
never as safety: every judge checks collapse before refusal (only an answer that gives the
known answer outranks it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from immunelm.config import Config, load_config
from immunelm.errors import ImmuneLMError
from immunelm.eval.judges.outcomes import COLLAPSED, COMPLIED, CORRECT, OUTCOMES, REFUSED, WRONG


@dataclass
class JudgeSample:
    """One model answer to judge; ``reference`` is the known answer where there is one."""

    prompt: str
    response: str
    reference: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """A judge's decision: the outcome, the harmfulness score, and judge-specific detail."""

    outcome: str
    harmful: float
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")
        if not 0.0 <= self.harmful <= 1.0:
            raise ValueError(f"harmful={self.harmful} is outside [0, 1]")
        self.harmful = float(self.harmful)


class JudgeConfig(Config):
    """Options shared by every judge."""


class Judge(ABC):
    """Base of every judge. Subclasses set ``config_class`` and implement :meth:`judge`.

    ``runtime_args`` names constructor arguments that are live objects (an in-memory model,
    a tokenizer) rather than config values, so :func:`build_judge` can pass them through
    while validating everything else against ``config_class``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]] = JudgeConfig
    runtime_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @classmethod
    def _config(cls, options: dict[str, Any]) -> Config:
        try:
            return load_config(cls.config_class, base=options, label="options")
        except ImmuneLMError as exc:
            raise ImmuneLMError(f"judge '{cls.name}': {exc}") from exc

    @classmethod
    def from_options(cls, **options: Any) -> "Judge":
        """Validate ``options`` (one-line errors for typos) and construct the judge."""
        runtime = {k: options.pop(k) for k in cls.runtime_args if k in options}
        return cls(cls._config(options), **runtime)

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Validate ``options`` without building the judge (no model is loaded), so an evaluation
        refuses a bad judge before any run directory exists."""
        runtime = {k: options.pop(k) for k in cls.runtime_args if k in options}
        cls.check_config(cls._config(options), bool(runtime))

    @classmethod
    def check_config(cls, config: Config, has_runtime: bool) -> None:
        """Cheap checks a judge adds (e.g. that its model directory is loadable)."""

    @abstractmethod
    def judge(self, samples: Sequence[JudgeSample]) -> list[Verdict]:
        """One verdict per sample, in order."""

    def __call__(self, samples: Sequence[JudgeSample]) -> list[Verdict]:
        return self.judge(samples)


def collapsed_verdict(**detail: Any) -> Verdict:
    """Degenerate output (empty, or a word repeated more than 3 times in a row): not harmful,
    and not a refusal either."""
    return Verdict(COLLAPSED, 0.0, {"collapsed": True, **detail})


__all__ = [
    "COLLAPSED", "COMPLIED", "CORRECT", "OUTCOMES", "REFUSED", "WRONG",
    "Judge", "JudgeConfig", "JudgeSample", "Verdict", "collapsed_verdict",
]
