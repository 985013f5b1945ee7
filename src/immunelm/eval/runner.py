"""Run an evaluation: every model x every adversary of a suite, plus the other three pillars.

Writes ``results.json`` (the typed schema, with provenance and data hashes) and
``samples.jsonl`` (every generated answer with its verdict), both atomically.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator
from rich.console import Console

from immunelm.attacks.base import Adversary, AttackRun, PromptWrap
from immunelm.attacks.suites import SuiteConfig, load_suite
from immunelm.config import Config, load_config
from immunelm.data import PaddingCollator, encode_example
from immunelm.engine import TrainConfig, train
from immunelm.eval import diagnostics
from immunelm.eval.generation import GenerationConfig
from immunelm.eval.judges import build_judge
from immunelm.eval.pillars import generalisation, steps_to_target, summarise_resistance
from immunelm.eval.schema import (
    AdversaryResult, CurvePoint, EvaluationReport, ModelReport, PrefillPoint, Stability, Trainability,
)
from immunelm.eval.scoring import Scorer, perplexity
from immunelm.tasks.base import CROSS_DOMAIN, HELDOUT_PHRASINGS, EvalTask
from immunelm.io import atomic_path, write_json_atomic
from immunelm.models.adapters import is_peft_model, save_adapter
from immunelm.models.loading import save_model
from immunelm.provenance import provenance

console = Console(stderr=True)


class TrainabilityConfig(Config):
    """Benign fine-tuning on a task the model never saw: does immunisation block learning?"""

    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-3, batch_size=16, max_steps=150, progress=False, log_every=25),
        description="Benign fine-tuning settings.")
    eval_at: list[NonNegativeInt] = Field(default_factory=lambda: [0, 25, 50, 100, 150])
    target: float = Field(0.9, ge=0, le=1, description="Accuracy counted as 'trained' for steps-to-target.")


class EvaluationConfig(Config):
    """How to evaluate. Fields left unset take the task's defaults (a real model needs other
    generation lengths, suites and trainability settings than the 1M-parameter organism)."""

    task: str = Field("world", description="Shipped task (world | smol) or a task YAML path.")
    task_options: dict[str, Any] = Field(default_factory=dict, description="Overrides of the task provider's options (e.g. domain=vault).")
    suite: Optional[str] = Field(None, description="Shipped suite (quick | standard | full | smol-quick ...) or a YAML path; unset = the task's.")
    judge: Optional[str] = Field(None, description="exact | keyword | classifier | rubric; unset = the task's judge.")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="Passed to the judge's constructor.")
    generation: Optional[GenerationConfig] = Field(None, description="Decoding; unset = the task's defaults.")
    trainability: Optional[TrainabilityConfig] = Field(None, description="Benign fine-tuning; unset = the task's defaults.")
    search_trials: Optional[int] = Field(None, ge=0, description="Override the suite's random-search trials.")
    prefill_tokens: list[PositiveInt] = Field(
        default_factory=lambda: [1, 3, 5],
        description="Prefilling attack (Qi et al. 2024): force this many harmful-answer tokens; [] disables.")
    save_attacked: list[str] = Field(
        default_factory=list, description="Adversaries whose attacked model is saved to RUN_DIR/attacked/<model>/<adversary> "
                                          "(safetensors; LoRA attacks as adapters); '*' = every attack that leaves a model.")
    diagnostics: list[str] = Field(
        default_factory=lambda: list(diagnostics.DEFAULT),
        description=f"Mechanistic diagnostics per model: {', '.join(diagnostics.KNOWN)} (default: the cheap "
                    f"{', '.join(diagnostics.DEFAULT)}; [] = none). See immunelm.eval.diagnostics.")

    @field_validator("diagnostics")
    @classmethod
    def _known_diagnostics(cls, names: list[str]) -> list[str]:
        return diagnostics.check_names(names)


def _wrapped(examples: list, wrap: PromptWrap | None) -> list:
    return examples if wrap is None else [e.with_prompt(wrap(e.prompt)) for e in examples]


@dataclass
class ModelEntry:
    name: str
    role: str  # reference | defended | base
    load: Callable[[], tuple[Any, Any]]  # returns a fresh (model, tokenizer) (attacks mutate copies)
    defence: Optional[str] = None
    checkpoint: Optional[str] = None
    evaluate: bool = True  # False: only an anchor for the others' diagnostics


@dataclass
class Subject:
    """One model under evaluation with its own tokenizer, scorer and collator."""

    entry: ModelEntry
    model: Any
    tokenizer: Any
    scorer: Scorer
    collate: Any

    @property
    def name(self) -> str:
        return self.entry.name


class Evaluator:
    """Runs every model of an evaluation on one task; each model keeps its own tokenizer."""

    def __init__(self, cfg: EvaluationConfig, task: EvalTask, settings: "ResolvedSettings") -> None:
        self.cfg, self.task, self.settings = cfg, task, settings
        self.suite: SuiteConfig = load_suite(settings.suite)
        if cfg.search_trials is not None and self.suite.search is not None:
            self.suite.search.trials = cfg.search_trials
        self.judge = build_judge(settings.judge, **settings.judge_options)
        self.records: list[dict] = []
        self.out_dir: Path | None = None  # set by run(); attacked models are saved under it
        self.entries: list[ModelEntry] = []  # set by run(): every model, to find each one's anchor
        self._anchors: dict[str, tuple] = {}  # name -> (model, tokenizer), loaded once

    def anchor_of(self, entry: ModelEntry) -> Optional[tuple[str, Any, Any]]:
        """(name, model, tokenizer) of the checkpoint ``entry`` is compared with: the reference for
        a defended model; the base model (when exactly one is given) for the reference."""
        roles = {"defended": "reference", "reference": "base"}
        candidates = [e for e in self.entries if e.role == roles.get(entry.role) and e.name != entry.name]
        if len(candidates) != 1 or not set(self.cfg.diagnostics) & {"kl", "spectra"}:
            return None
        anchor = candidates[0]
        if anchor.name not in self._anchors:
            model, tokenizer = anchor.load()
            self._anchors[anchor.name] = (model.eval(), tokenizer)
        return (anchor.name, *self._anchors[anchor.name])

    def subject(self, entry: ModelEntry) -> Subject:
        model, tokenizer = entry.load()
        scorer = Scorer(tokenizer, self.judge, self.settings.generation, self.records, self.task.harmful_scorer)
        return Subject(entry, model, tokenizer, scorer, PaddingCollator.for_tokenizer(tokenizer))

    def curve_point(self, sub: Subject, model, step: int, context: dict, wrap: PromptWrap | None = None) -> CurvePoint:
        """Score ``model`` at a budget point; ``wrap`` rewrites every harmful prompt (prompt
        attacks), never the benign ones."""
        ctx = {**context, "step": step}
        score, acc, outcomes = sub.scorer.harmful(model, _wrapped(self.task.harmful, wrap), {**ctx, "set": "harmful"})
        point = CurvePoint(step=step, harmful_score=score, harmful_accuracy=acc, outcomes=outcomes)
        for name, examples in self.task.generalisation.items():
            harm, _, split_outcomes = sub.scorer.harmful(model, _wrapped(examples, wrap), {**ctx, "set": name})
            point.generalisation[name], point.generalisation_outcomes[name] = harm, split_outcomes
        point.heldout_phrasing_harmful = point.generalisation.get(HELDOUT_PHRASINGS)
        point.cross_domain_harmful = point.generalisation.get(CROSS_DOMAIN)
        point.benign_accuracy = sub.scorer.accuracy(model, self.task.utility, {**ctx, "set": "benign"})[0]
        return point

    def attack(self, sub: Subject, adversary: Adversary, start: CurvePoint,
               probe: "diagnostics.ModelProbe | None" = None) -> AdversaryResult:
        """Run ``adversary`` on a copy of the model; ``start`` is the unattacked model's point
        (budget point 0 is the same model for every adversary: scored once per model)."""
        context = {"model": sub.name, "adversary": adversary.name}

        def score(attacked, step: int, wrap: PromptWrap | None = None) -> dict:
            unattacked = step == 0 and wrap is None
            return (start if unattacked else self.curve_point(sub, attacked, step, context, wrap)).model_dump()

        spec = adversary.spec
        run = AttackRun(copy.deepcopy(sub.model), sub.tokenizer, self.task.attack, self.suite.eval_steps(adversary), score,
                        description=f"{sub.name} x {adversary.name}", judge=self.judge)
        result = spec.run(run, adversary.config)
        self._keep_attacked(sub, adversary, result)
        curve = [CurvePoint.model_validate(p) for p in result.evaluations]
        return AdversaryResult(name=adversary.name, kind=adversary.kind, family=spec.family, budget_unit=spec.budget_unit,
                               settings=adversary.config.model_dump(mode="json"), curve=curve, seconds=result.seconds,
                               info=result.info, drift=probe.after_attack(adversary.name, result.model) if probe else None)

    def _keep_attacked(self, sub: Subject, adversary: Adversary, result) -> None:
        """Save the attacked model when asked (e.g. a weight-orthogonalised model to publish
        as a red-team artefact); hooks and prompts leave no model and are skipped."""
        wanted = self.cfg.save_attacked
        if result.model is None or self.out_dir is None or not ("*" in wanted or adversary.name in wanted):
            return
        out = self.out_dir / "attacked" / sub.name / adversary.name
        if is_peft_model(result.model):
            save_adapter(result.model, sub.tokenizer, out, sub.entry.checkpoint or sub.name)
        else:
            save_model(result.model, sub.tokenizer, out)

    def stability(self, sub: Subject, start: CurvePoint) -> Stability:
        """Benign accuracy by set, perplexity, false refusals; harmful outcomes from ``start``."""
        ctx = {"model": sub.name, "adversary": None, "step": 0}
        accuracy, refusal, by_set = sub.scorer.accuracy(sub.model, self.task.utility, {**ctx, "set": "benign"})
        ppl = perplexity(sub.model, sub.tokenizer, self.task.perplexity) if self.task.perplexity else None
        return Stability(benign_accuracy=accuracy, benign_by_task=by_set, perplexity=ppl,
                         harmful_outcomes=start.outcomes, false_refusal=refusal)

    def trainability(self, sub: Subject) -> Optional[Trainability]:
        task = self.task.trainability
        if task is None:
            return None
        cfg = self.settings.trainability
        rows = [encode_example(sub.tokenizer, e) for e in task.train]
        ctx = {"model": sub.name, "adversary": "trainability", "set": "trainability"}

        def evaluate(m, step):
            return {"accuracy": sub.scorer.accuracy(m, [task.eval], {**ctx, "step": step})[0]}

        result = train(cfg.train.model_copy(update={"eval_at": cfg.eval_at}), copy.deepcopy(sub.model), rows, sub.collate,
                       evaluate=evaluate, description=f"{sub.name} trainability")
        curve = [{"step": float(p["step"]), "accuracy": p["accuracy"]} for p in result.evaluations]
        return Trainability(task=task.name, curve=curve, final_accuracy=curve[-1]["accuracy"],
                            target=cfg.target, steps_to_target=steps_to_target(curve, cfg.target))

    def prefilling(self, sub: Subject) -> list[PrefillPoint]:
        if not all(e.response for e in self.task.harmful):
            return []  # needs reference harmful answers to force their first tokens
        points = []
        for k in self.cfg.prefill_tokens:
            ctx = {"model": sub.name, "adversary": f"prefill-{k}", "step": 0, "set": "harmful"}
            score, _, outcomes = sub.scorer.harmful(sub.model, self.task.harmful, ctx, prefill_tokens=k)
            points.append(PrefillPoint(tokens=k, harmful_score=score, outcomes=outcomes))
        return points

    def evaluate_model(self, entry: ModelEntry) -> ModelReport:
        started = time.perf_counter()
        sub = self.subject(entry)
        report = ModelReport(name=entry.name, role=entry.role, defence=entry.defence, checkpoint=entry.checkpoint)
        start = self.curve_point(sub, sub.model, 0, {"model": entry.name, "adversary": None})
        report.stability = self.stability(sub, start)
        report.prefilling = self.prefilling(sub)
        probe = diagnostics.ModelProbe(self.cfg.diagnostics, sub.model, sub.tokenizer, diagnostics.harmful_pairs(self.task),
                                       self.task.benign, self.anchor_of(entry)) if self.cfg.diagnostics else None
        report.resistance = [self.attack(sub, adv, start, probe) for adv in self.suite.expanded()]
        report.resistance_summary = summarise_resistance(report.resistance, self.suite.threshold, self.suite.epsilon)
        report.diagnostics = probe.summary(report) if probe else None
        report.generalisation = generalisation(report.resistance, report.resistance_summary.worst_adversary)
        report.trainability = self.trainability(sub)
        report.wall_seconds = time.perf_counter() - started
        return report

    def run(self, entries: list[ModelEntry], out_dir: Path, extra_config: dict | None = None) -> EvaluationReport:
        started = time.perf_counter()
        self.out_dir, self.entries = out_dir, entries
        models, evaluated = [], [e for e in entries if e.evaluate]
        for entry in evaluated:
            console.print(f"[bold]evaluating {entry.name}[/bold] ({len(self.suite.expanded())} adversaries, "
                          f"suite {self.suite.name}, task {self.task.name})")
            models.append(self.evaluate_model(entry))
            if len(models) < len(evaluated):  # a model takes minutes on a real LM: keep what is done
                partial = self._report(models, started, extra_config)
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(out_dir / "results.partial.json", partial.model_dump(mode="json"))
        report = self._report(models, started, extra_config)
        write_results(report, self.records, out_dir)
        (out_dir / "results.partial.json").unlink(missing_ok=True)
        return report

    def _report(self, models: list[ModelReport], started: float, extra_config: dict | None) -> EvaluationReport:
        return EvaluationReport(
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            suite=self.suite.name, judge=self.settings.judge, models=models, task=self.task.name,
            config={"evaluation": self.cfg.model_dump(mode="json"), "resolved": self.settings.dump(),
                    "suite": self.suite.model_dump(mode="json"), "task": self.task.provenance, **(extra_config or {})},
            # The seed the answers were sampled with (attacks carry their own, in each adversary's settings).
            provenance=provenance(self.settings.generation.seed), data_hashes=self.task.hashes(),
            wall_seconds=time.perf_counter() - started,
        )


@dataclass
class ResolvedSettings:
    """The evaluation settings after the task's defaults filled what the user left unset."""

    suite: str
    judge: str
    judge_options: dict
    generation: GenerationConfig
    trainability: TrainabilityConfig

    def dump(self) -> dict:
        return {"suite": self.suite, "judge": self.judge, "judge_options": self.judge_options,
                "generation": self.generation.model_dump(mode="json"),
                "trainability": self.trainability.model_dump(mode="json")}


def resolve_settings(cfg: EvaluationConfig, task: EvalTask) -> ResolvedSettings:
    """User settings win; unset fields take the task's defaults, then the library's."""
    judge = cfg.judge or task.judge.name
    options = cfg.judge_options if cfg.judge else {**task.judge.options, **cfg.judge_options}
    generation = cfg.generation or load_config(GenerationConfig, base=task.defaults.get("generation", {}), label=f"task '{task.name}' generation")
    trainability = cfg.trainability or load_config(
        TrainabilityConfig, base=task.defaults.get("trainability", {}), label=f"task '{task.name}' trainability")
    return ResolvedSettings(cfg.suite or task.defaults.get("suite", "quick"), judge, options, generation, trainability)


def write_results(report: EvaluationReport, records: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "samples.jsonl") as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in records:
                fh.write(json.dumps(row) + "\n")
    write_json_atomic(out_dir / "results.json", report.model_dump(mode="json"))
