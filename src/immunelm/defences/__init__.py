"""Defences (immunisation methods). Each lives in its own module and registers in one line."""

from immunelm.defences.base import DefenceData, build_defence, defence_names, immunise, register_defence
from immunelm.defences import (  # noqa: F401  (registration)
    booster, circuit_breakers, constrained_sft, deep_align, lapt, repnoise, t_vaccine, vaccine,
)

__all__ = ["DefenceData", "build_defence", "defence_names", "immunise", "register_defence"]
