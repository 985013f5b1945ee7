"""``run_evaluation``: attack every model with a suite on one task and score the four pillars.

Everything a user can get wrong (model names, sources, task, suite, judge, tokenizers that
cannot encode the task) is checked by :func:`validate_evaluation` before a run directory or
any model exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from immunelm.config import Config, repeated
from immunelm.errors import ImmuneLMError
from immunelm.eval.runner import EvaluationConfig, Evaluator, ModelEntry, resolve_settings
from immunelm.eval.schema import EvaluationReport
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import check_model_source, load_model_source, load_tokenizer_source
from immunelm.tasks import EvalTask, TaskContext, check_tokenizer, load_task
from immunelm.world.organism import OrganismConfig


class ModelSpec(Config):
    name: str = Field(description="Label in tables and plots.")
    source: str = Field(description="Model dir, .gguf, hub name, smollm2-135m-instruct, organism:<stage>, smol:<stage>.")
    role: Literal["reference", "defended", "base"] = Field(
        "defended", description="reference (the undefended aligned model; at most one) | defended | base")
    defence: Optional[str] = None
    chat_template: Optional[str] = Field(None, description="For tokenizers without one: chatml, a .jinja file or template text.")
    evaluate: bool = Field(True, description="False: only the anchor of the others' diagnostics (KL, delta), never "
                                             "attacked or scored (a leaderboard cell evaluates one model against its reference).")


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
    """Names, roles and the reference: everything about the list itself, before any source."""
    if not models:
        raise ImmuneLMError("models: the list is empty; pass at least one -m NAME=SOURCE")
    for i, m in enumerate(models):
        if not m.name.strip():
            raise ImmuneLMError(f"models[{i}].name: empty; every model needs a name (its label in tables and plots)")
        if not m.source.strip():
            raise ImmuneLMError(f"models[{i}].source: empty for model '{m.name}'; expected a model dir, .gguf, hub name or organism:<stage>")
    names = [m.name.strip() for m in models]
    duplicates = repeated(names)
    if duplicates:
        raise ImmuneLMError(f"models: duplicate name(s) {', '.join(duplicates)}; every model needs its own name")
    if not any(m.evaluate for m in models):
        raise ImmuneLMError("models: every model has evaluate=false (anchors only); at least one must be evaluated")
    references = [m.name for m in models if m.role == "reference"]
    if len(references) > 1:
        raise ImmuneLMError(f"models: {len(references)} models have role 'reference' ({', '.join(references)}); "
                            "at most one is the reference (the undefended aligned model), the others are defended or base")


def _check_sources(cfg: "EvaluateConfig") -> None:
    """Every model's source, cheaply (no weights), so a typo in the last one is found first."""
    for spec in cfg.models:
        try:
            check_model_source(spec.source)
        except ImmuneLMError as exc:
            raise ImmuneLMError(_for_model(spec, exc)) from exc


def _for_model(spec: ModelSpec, exc: Exception) -> str:
    """Prefix an error with the model's name (and its source, unless the error names it)."""
    message = str(exc)
    return f"model '{spec.name}': {message}" if spec.source in message else f"model '{spec.name}' ({spec.source}): {message}"


def _check_search(cfg: "EvaluateConfig", suite) -> None:
    """search_trials on a suite without a search space would silently sample nothing."""
    trials = cfg.evaluation.search_trials
    if trials and suite.search is None:
        raise ImmuneLMError(f"evaluation.search_trials={trials}: suite '{suite.name}' has no 'search' section, so no "
                            "adversary would be sampled; use a suite with one (e.g. full) or add it to the suite file")


def task_for(cfg: EvaluateConfig) -> EvalTask:
    return load_task(cfg.evaluation.task, TaskContext(cfg.organism, cfg.cache_dir, cfg.smol),
                     {"options": cfg.evaluation.task_options} if cfg.evaluation.task_options else None)


def _tokenizer(spec: ModelSpec, cfg: EvaluateConfig):
    return load_tokenizer_source(spec.source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                 spec.chat_template or cfg.chat_template)


def _check_save_attacked(cfg: EvaluateConfig, suite) -> None:
    names = [a.name for a in suite.adversaries]
    unknown = [n for n in cfg.evaluation.save_attacked if n != "*" and n not in names]
    if unknown:
        raise ImmuneLMError(f"evaluation.save_attacked: no adversary '{unknown[0]}' in suite {suite.name} "
                            f"(adversaries: {', '.join(names)}; '*' = all)")


def validate_evaluation(cfg: EvaluateConfig) -> EvalTask:
    """Fail on bad models, task, suite, judge or a tokenizer that cannot encode the task,
    before any run directory or model exists; returns the loaded task."""
    from immunelm.attacks import load_suite
    from immunelm.eval.judges.registry import judge_class

    _check_models(cfg.models)
    task = task_for(cfg)  # cheap (no model); its errors (missing extras, bad files) come first
    _check_sources(cfg)
    settings = resolve_settings(cfg.evaluation, task)
    suite = load_suite(settings.suite)
    _check_search(cfg, suite)
    _check_save_attacked(cfg, suite)
    judge_class(settings.judge).check_options(**settings.judge_options)
    for spec in cfg.models:
        try:
            tokenizer = _tokenizer(spec, cfg)
        except ImmuneLMError as exc:
            raise ImmuneLMError(_for_model(spec, exc)) from exc
        check_tokenizer(tokenizer, task, spec.name)
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
    entries = [ModelEntry(s.name, s.role, _loader(s, cfg), s.defence, s.source, s.evaluate) for s in cfg.models]
    evaluator = Evaluator(cfg.evaluation, task, resolve_settings(cfg.evaluation, task))
    report = evaluator.run(entries, run_dir, {"models": [m.model_dump() for m in cfg.models]})
    from immunelm.report import render_report

    render_report(report, run_dir)
    return report
