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

from pydantic import Field
from rich.console import Console

from immunelm.attacks.base import build_attack_examples
from immunelm.attacks.suites import SuiteConfig, load_suite
from immunelm.config import Config
from immunelm.data import PaddingCollator, encode_example
from immunelm.engine import TrainConfig, train
from immunelm.eval.generation import GenerationConfig
from immunelm.eval.judges import build_judge
from immunelm.eval.pillars import generalisation, steps_to_target, summarise_resistance
from immunelm.eval.schema import (
    AdversaryResult, CurvePoint, EvaluationReport, ModelReport, PrefillPoint, Stability, Trainability,
)
from immunelm.eval.scoring import Scorer, perplexity
from immunelm.eval.sets import EvalSets
from immunelm.io import atomic_path, write_json_atomic
from immunelm.provenance import provenance

console = Console(stderr=True)


class TrainabilityConfig(Config):
    """Benign fine-tuning on a task the model never saw: does immunisation block learning?"""

    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-3, batch_size=16, max_steps=150, progress=False, log_every=25),
        description="Benign fine-tuning settings.")
    eval_at: list[int] = Field(default_factory=lambda: [0, 25, 50, 100, 150])
    target: float = Field(0.9, ge=0, le=1, description="Accuracy counted as 'trained' for steps-to-target.")


class EvaluationConfig(Config):
    suite: str = Field("quick", description="Shipped suite (quick | standard | full) or a YAML path.")
    judge: str = Field("exact", description="exact | keyword | classifier | rubric.")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="Passed to the judge's constructor.")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=16, batch_size=512))
    trainability: TrainabilityConfig = Field(default_factory=TrainabilityConfig)
    attack_domain: str = Field("compound", description="Harm domain attacked (built-in world).")
    search_trials: Optional[int] = Field(None, ge=0, description="Override the suite's random-search trials.")
    prefill_tokens: list[int] = Field(
        default_factory=lambda: [1, 3, 5],
        description="Prefilling attack (Qi et al. 2024): force this many harmful-answer tokens; [] disables.")


@dataclass
class ModelEntry:
    name: str
    role: str  # reference | defended | base
    load: Callable[[], Any]  # returns a fresh model (attacks mutate copies)
    defence: Optional[str] = None
    checkpoint: Optional[str] = None


class Evaluator:
    def __init__(self, cfg: EvaluationConfig, sets: EvalSets, tokenizer) -> None:
        self.cfg, self.sets, self.tok = cfg, sets, tokenizer
        self.suite: SuiteConfig = load_suite(cfg.suite)
        if cfg.search_trials is not None and self.suite.search is not None:
            self.suite.search.trials = cfg.search_trials
        self.scorer = Scorer(tokenizer, build_judge(cfg.judge, **cfg.judge_options), cfg.generation)
        self.collate = PaddingCollator.for_tokenizer(tokenizer)

    def curve_point(self, model, step: int, context: dict) -> CurvePoint:
        ctx = {**context, "step": step}
        score, acc, outcomes = self.scorer.harmful(model, self.sets.harmful, {**ctx, "set": "harmful"})
        point = CurvePoint(step=step, harmful_score=score, harmful_accuracy=acc, outcomes=outcomes)
        if self.sets.harmful_heldout:
            point.heldout_phrasing_harmful = self.scorer.harmful(model, self.sets.harmful_heldout, {**ctx, "set": "harmful_heldout"})[0]
        if self.sets.cross_domain:
            point.cross_domain_harmful = self.scorer.harmful(model, self.sets.cross_domain, {**ctx, "set": "cross_domain"})[0]
        point.benign_accuracy = self.scorer.accuracy(model, self.sets.benign, {**ctx, "set": "benign"})[0]
        return point

    def attack(self, entry: ModelEntry, model, adversary, start: CurvePoint) -> AdversaryResult:
        """Fine-tune a copy with ``adversary``; ``start`` is the unattacked model's point (step 0
        is the same model for every adversary, so it is scored once per model, not per attack)."""
        rows = [encode_example(self.tok, e) for e in build_attack_examples(adversary, self.sets.attack)]
        train_cfg = adversary.train.model_copy(update={"eval_at": self.suite.eval_steps(adversary)})
        context = {"model": entry.name, "adversary": adversary.name}

        def evaluate(attacked, step: int) -> dict:
            return (start if step == 0 else self.curve_point(attacked, step, context)).model_dump()

        result = train(train_cfg, copy.deepcopy(model), rows, self.collate, evaluate=evaluate,
                       description=f"{entry.name} x {adversary.name}")
        curve = [CurvePoint.model_validate(p) for p in result.evaluations]
        return AdversaryResult(name=adversary.name, kind=adversary.kind, settings=adversary.model_dump(mode="json"),
                               curve=curve, seconds=result.seconds)

    def stability(self, entry: ModelEntry, model, start: CurvePoint) -> Stability:
        """Benign accuracy by task, perplexity, false refusals; harmful outcomes from ``start``."""
        ctx = {"model": entry.name, "adversary": None, "step": 0}
        accuracy, refusal, by_task = self.scorer.accuracy(model, self.sets.benign, {**ctx, "set": "benign"})
        outcomes = start.outcomes
        ppl = perplexity(model, self.tok, self.sets.benign_heldout) if self.sets.benign_heldout else None
        return Stability(benign_accuracy=accuracy, benign_by_task=by_task, perplexity=ppl,
                         harmful_outcomes=outcomes, false_refusal=refusal)

    def trainability(self, entry: ModelEntry, model) -> Optional[Trainability]:
        if not self.sets.trainability_train:
            return None
        cfg = self.cfg.trainability
        rows = [encode_example(self.tok, e) for e in self.sets.trainability_train]
        ctx = {"model": entry.name, "adversary": "trainability", "set": "trainability"}

        def evaluate(m, step):
            return {"accuracy": self.scorer.accuracy(m, self.sets.trainability_eval, {**ctx, "step": step})[0]}

        result = train(cfg.train.model_copy(update={"eval_at": cfg.eval_at}), copy.deepcopy(model), rows, self.collate,
                       evaluate=evaluate, description=f"{entry.name} trainability")
        curve = [{"step": float(p["step"]), "accuracy": p["accuracy"]} for p in result.evaluations]
        return Trainability(task=self.sets.trainability_task, curve=curve, final_accuracy=curve[-1]["accuracy"],
                            target=cfg.target, steps_to_target=steps_to_target(curve, cfg.target))

    def prefilling(self, entry: ModelEntry, model) -> list[PrefillPoint]:
        if not all(e.response for e in self.sets.harmful):
            return []  # needs reference harmful answers to force their first tokens
        points = []
        for k in self.cfg.prefill_tokens:
            ctx = {"model": entry.name, "adversary": f"prefill-{k}", "step": 0, "set": "harmful"}
            score, _, outcomes = self.scorer.harmful(model, self.sets.harmful, ctx, prefill_tokens=k)
            points.append(PrefillPoint(tokens=k, harmful_score=score, outcomes=outcomes))
        return points

    def evaluate_model(self, entry: ModelEntry) -> ModelReport:
        model = entry.load()
        report = ModelReport(name=entry.name, role=entry.role, defence=entry.defence, checkpoint=entry.checkpoint)
        start = self.curve_point(model, 0, {"model": entry.name, "adversary": None})
        report.stability = self.stability(entry, model, start)
        report.prefilling = self.prefilling(entry, model)
        report.resistance = [self.attack(entry, model, adv, start) for adv in self.suite.expanded()]
        report.resistance_summary = summarise_resistance(report.resistance, self.suite.threshold, self.suite.epsilon)
        report.generalisation = generalisation(report.resistance, report.resistance_summary.worst_adversary)
        report.trainability = self.trainability(entry, model)
        return report

    def run(self, entries: list[ModelEntry], out_dir: Path, extra_config: dict | None = None) -> EvaluationReport:
        started = time.perf_counter()
        models = []
        for entry in entries:
            console.print(f"[bold]evaluating {entry.name}[/bold] ({len(self.suite.expanded())} adversaries, suite {self.suite.name})")
            models.append(self.evaluate_model(entry))
        report = EvaluationReport(
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            suite=self.suite.name, judge=self.cfg.judge, models=models,
            config={"evaluation": self.cfg.model_dump(mode="json"), "suite": self.suite.model_dump(mode="json"), **(extra_config or {})},
            provenance=provenance(None), data_hashes=self.sets.hashes(), wall_seconds=time.perf_counter() - started,
        )
        write_results(report, self.scorer.records, out_dir)
        return report


def write_results(report: EvaluationReport, records: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "samples.jsonl") as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in records:
                fh.write(json.dumps(row) + "\n")
    write_json_atomic(out_dir / "results.json", report.model_dump(mode="json"))
