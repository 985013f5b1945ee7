"""``run_evaluation``: attack every model with a suite on one task and score the four pillars.

Everything a user can get wrong (model names, sources, task, suite, judge, tokenizers that
cannot encode the task) is checked by :func:`validate_evaluation` before a run directory or
any model exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from immunelm.config import Config
from immunelm.errors import ImmuneLMError
from immunelm.eval.runner import EvaluationConfig, Evaluator, ModelEntry, resolve_settings
from immunelm.eval.schema import EvaluationReport
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import load_model_source, load_tokenizer_source
from immunelm.tasks import EvalTask, TaskContext, check_tokenizer, load_task
from immunelm.world.organism import OrganismConfig


class ModelSpec(Config):
    name: str = Field(description="Label in tables and plots.")
    source: str = Field(description="Model dir, .gguf, hub name, smollm2-135m-instruct, organism:<stage>, smol:<stage>.")
    role: str = Field("defended", description="reference | defended | base")
    defence: Optional[str] = None
    chat_template: Optional[str] = Field(None, description="For tokenizers without one: chatml, a .jinja file or template text.")


class EvaluateConfig(Config):
    models: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="aligned", source="organism:aligned", role="reference")],
        description="Models to evaluate; the reference is the undefended aligned model.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    organism: OrganismConfig = Field(default_factory=OrganismConfig, description="The built-in organism (organism:<stage> sources, world task).")
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig, description="The SmolLM2 organism (smol:<stage> sources, smol task).")
    cache_dir: Optional[str] = None
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own code (off by default).")
    chat_template: Optional[str] = Field(None, description="Chat template for models whose tokenizer has none and whose spec sets none.")


def parse_model_flags(flags: list[str]) -> list[ModelSpec]:
    """``NAME=SOURCE`` flags; the first is the reference."""
    specs = []
    for i, flag in enumerate(flags):
        name, sep, source = flag.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ImmuneLMError(f"--model '{flag}': expected NAME=SOURCE (e.g. mine=runs/immunise-x/model)")
        specs.append(ModelSpec(name=name.strip(), source=source.strip(), role="reference" if i == 0 else "defended"))
    return specs


def _check_models(models: list[ModelSpec]) -> None:
    if not models:
        raise ImmuneLMError("models: the list is empty; pass at least one -m NAME=SOURCE")
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImmuneLMError(f"models: duplicate name(s) {', '.join(duplicates)}; every model needs its own name")


def task_for(cfg: EvaluateConfig) -> EvalTask:
    return load_task(cfg.evaluation.task, TaskContext(cfg.organism, cfg.cache_dir, cfg.smol),
                     {"options": cfg.evaluation.task_options} if cfg.evaluation.task_options else None)


def _tokenizer(spec: ModelSpec, cfg: EvaluateConfig):
    return load_tokenizer_source(spec.source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                 spec.chat_template or cfg.chat_template)


def validate_evaluation(cfg: EvaluateConfig) -> EvalTask:
    """Fail on bad models, task, suite, judge or a tokenizer that cannot encode the task,
    before any run directory or model exists; returns the loaded task."""
    from immunelm.attacks import load_suite
    from immunelm.eval.judges.registry import judge_class

    _check_models(cfg.models)
    task = task_for(cfg)
    settings = resolve_settings(cfg.evaluation, task)
    load_suite(settings.suite)
    judge_class(settings.judge)
    for spec in cfg.models:
        check_tokenizer(_tokenizer(spec, cfg), task, spec.name)
    return task


def _loader(spec: ModelSpec, cfg: EvaluateConfig):
    def load():
        model, tokenizer = load_model_source(spec.source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                             spec.chat_template or cfg.chat_template)
        return model.eval(), tokenizer
    return load


def run_evaluation(cfg: EvaluateConfig, run_dir: Path, task: EvalTask | None = None) -> EvaluationReport:
    """Evaluate every model of ``cfg`` on its task; writes results.json, samples.jsonl, report.html."""
    task = task or validate_evaluation(cfg)
    entries = [ModelEntry(s.name, s.role, _loader(s, cfg), s.defence, s.source) for s in cfg.models]
    evaluator = Evaluator(cfg.evaluation, task, resolve_settings(cfg.evaluation, task))
    report = evaluator.run(entries, run_dir, {"models": [m.model_dump() for m in cfg.models]})
    from immunelm.report import render_report

    render_report(report, run_dir)
    return report
