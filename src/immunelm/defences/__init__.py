"""Defences (immunisation methods). Each lives in its own module and registers in one line."""

from immunelm.defences.base import DefenceData, build_defence, defence_names, immunise, register_defence
from immunelm.defences import deep_align, constrained_sft  # noqa: F401  (registration)

__all__ = ["DefenceData", "build_defence", "defence_names", "immunise", "register_defence"]
