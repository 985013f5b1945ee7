"""Defences (immunisation methods). Each lives in its own module and registers in one line."""

from immunelm.defences.base import (
    DefenceData, Immunised, apply_defence, build_defence, defence_names, immunise, merged, register_defence,
)
from immunelm.defences import (  # noqa: F401  (registration)
    antidote, booster, circuit_breakers, condition_number, constrained_sft, ctrap, deep_align, et, ilu, lapt, lox, mlac,
    npo, pipeline, repnoise, rmu, sdd, seam, sophon, t_vaccine, tar, tokenbuncher, undo, vaccine,
)

__all__ = ["DefenceData", "Immunised", "apply_defence", "build_defence", "defence_names", "immunise", "merged", "register_defence"]
