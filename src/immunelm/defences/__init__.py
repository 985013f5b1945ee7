"""Defences (immunisation methods). Each lives in its own module and registers in one line."""

from immunelm.defences.base import DefenceData, build_defence, defence_names, immunise, register_defence
from immunelm.defences import booster, constrained_sft, deep_align, repnoise, vaccine  # noqa: F401  (registration)

__all__ = ["DefenceData", "build_defence", "defence_names", "immunise", "register_defence"]
