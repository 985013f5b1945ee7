"""Shared error for the plugin registries (defences, attacks, judges, world datasets)."""

from __future__ import annotations

import difflib
from typing import Iterable

from immunelm.errors import ImmuneLMError


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ImmuneLMError:
    """``unknown <kind> 'x' (known: a, b); did you mean 'a'?`` as one line."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ImmuneLMError(f"unknown {kind} '{name}' (known: {', '.join(known)}){hint}")
