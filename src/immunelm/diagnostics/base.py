"""What every diagnostic shares: a typed, strict result and the refusal of non-finite numbers.

A diagnostic is a small function of one or two models (and the task's examples) that returns a
:class:`DiagnosticResult`; ``immunelm diagnose`` and ``evaluate`` put those results in
``results.json`` and draw them in ``report.html``. A NaN or inf in a diagnostic is a bug or a
broken model, never a number to plot: :func:`finite` stops the run with the quantity's name.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict

from immunelm.errors import ImmuneLMError


class DiagnosticResult(BaseModel):
    """Base of every diagnostic's result: strict keys, JSON-serialisable fields only."""

    model_config = ConfigDict(extra="forbid")


def finite(value: float | torch.Tensor, what: str) -> float:
    """``value`` as a float, or an error naming ``what`` if it is NaN or infinite."""
    number = float(value)
    if not math.isfinite(number):
        raise ImmuneLMError(f"{what}: got {number}, expected a finite number (is the model broken or the input empty?)")
    return number


def finite_list(values: Iterable[float] | torch.Tensor, what: str) -> list[float]:
    return [finite(v, f"{what}[{i}]") for i, v in enumerate(values.tolist() if isinstance(values, torch.Tensor) else values)]


def matching_parameters(a: torch.nn.Module, b: torch.nn.Module, what: str) -> list[str]:
    """Names of the parameters two models share with equal shapes; an error if they differ
    (a weight delta or a shared direction only means something between one architecture)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    missing = sorted(set(pa) ^ set(pb))
    if missing:
        raise ImmuneLMError(f"{what}: the models have different parameters (e.g. '{missing[0]}'); "
                            "expected two checkpoints of one architecture")
    for name, p in pa.items():
        if p.shape != pb[name].shape:
            raise ImmuneLMError(f"{what}: parameter '{name}' has shape {tuple(p.shape)} vs {tuple(pb[name].shape)}; "
                                "expected two checkpoints of one architecture")
    return list(pa)


class Timer:
    """Seconds per diagnostic, summed over calls: ``with timer("kl"): ...``."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = {} if seconds is None else seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
