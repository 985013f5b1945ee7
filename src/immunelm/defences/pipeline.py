"""Composed defences: several registered defences applied in sequence from one config
(e.g. Vaccine then LoX, TAR then LoX). Each step's resolved config, record and time are kept,
so the run's ``immunise.json`` shows exactly what was applied, in which order.

    immunelm immunise pipeline 'defence.steps=[{defence: vaccine}, {defence: lox, config: {rank: 4}}]'
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, model_validator

from immunelm.config import Config, load_config
from immunelm.defences.base import DefenceData, Immunised, apply_defence, build_defence, merged, register_defence


class PipelineStep(Config):
    defence: str = Field(description="A registered defence name.")
    config: dict[str, Any] = Field(default_factory=dict, description="That defence's config fields.")


class PipelineConfig(Config):
    steps: list[PipelineStep] = Field(default_factory=list, description="Defences in the order they are applied.")

    @model_validator(mode="after")
    def _valid_steps(self) -> "PipelineConfig":
        if not self.steps:
            raise ValueError("steps: give at least one defence, e.g. [{defence: vaccine}, {defence: lox}]")
        if any(step.defence == "pipeline" for step in self.steps):
            raise ValueError("steps: a pipeline cannot contain a pipeline; list its defences instead")
        self.resolved()  # unknown names or fields fail here, before any training
        return self

    def resolved(self) -> list[tuple[str, Config]]:
        return [(s.defence, load_config(build_defence(s.defence).config_cls, base=s.config,
                                        label=f"defence.steps[{i}] ({s.defence})")) for i, s in enumerate(self.steps)]


def any_step_needs_base(cfg: PipelineConfig) -> bool:
    return any(build_defence(name).requires_base(step_cfg) for name, step_cfg in cfg.resolved())


@register_defence("pipeline", PipelineConfig, paper="composition of registered defences", needs_base=any_step_needs_base)
def pipeline(model, tokenizer, data: DefenceData, cfg: PipelineConfig):
    records = []
    for name, step_cfg in cfg.resolved():
        started = time.perf_counter()
        result = apply_defence(name, model, tokenizer, data, step_cfg)
        model = merged(result.model)
        records.append({"defence": name, "config": step_cfg.model_dump(mode="json"), "info": result.info,
                        "seconds": time.perf_counter() - started})
    return Immunised(model, {"steps": records})
