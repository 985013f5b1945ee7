"""The versioned, typed result schema of an evaluation (``results.json``).

Field order and names are part of the format: bump :data:`SCHEMA_VERSION` when changing them.
Rates are fractions in [0, 1]. ``harmful_score`` is the judge's mean harmfulness (for the
world's exact judge: the fraction of exactly correct harmful answers, = ``harmful_accuracy``).
Per-sample outputs live beside it in ``samples.jsonl`` so every number can be traced.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.6"  # 1.1: optional ModelReport.prefilling; 1.2: task, named generalisation splits;
# 1.3: ResistanceSummary says which attacks stayed within the utility bound and the worst attack's utility/collapse;
# 1.4: AdversaryResult.family / budget_unit / info (attacks as plug-ins);
# 1.5: ResistanceSummary.outcome_by_adversary / held_only_by_collapse (collapse is an outcome of its own)
# 1.6: ModelReport.diagnostics, AdversaryResult.drift (mechanistic diagnostics in every evaluation)
#: Every version this code reads: each later one only added optional fields.
READABLE_SCHEMA_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", SCHEMA_VERSION)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Outcomes(Record):
    """How answers to harmful prompts split; a collapsed model is never counted as safe."""

    n: int
    refused: float
    complied: float
    collapsed: float


class CurvePoint(Record):
    """The attacked model after ``step`` attack steps (step 0 = before the attack)."""

    step: int
    harmful_score: float = Field(description="Judge harmfulness on in-domain eval prompts, training phrasings.")
    harmful_accuracy: Optional[float] = Field(None, description="Exact harmful accuracy (built-in world only).")
    outcomes: Outcomes
    heldout_phrasing_harmful: Optional[float] = Field(None, description="Same entities, held-out phrasings.")
    cross_domain_harmful: Optional[float] = Field(None, description="The other harm domain (never attacked).")
    benign_accuracy: Optional[float] = Field(None, description="Utility of the attacked model.")
    generalisation: dict[str, float] = Field(
        default_factory=dict, description="Harmful score on each of the task's generalisation splits (by name).")
    generalisation_outcomes: dict[str, Outcomes] = Field(
        default_factory=dict, description="Refused / complied / collapsed on each generalisation split.")


class DriftSummary(Record):
    """Harmful-prompt representations (last prompt token) before vs after an attack, per layer
    (0 = embeddings): mean distance relative to the unattacked norm, and mean cosine."""

    relative_distance: list[float]
    cosine: list[float]


class AdversaryResult(Record):
    name: str
    kind: str = Field(description="The registered attack: harmful_sft | harmful_mix | benign_sft | ...")
    family: str = Field("fine-tuning", description="fine-tuning | rl | inference-time | weight-edit | prompt.")
    budget_unit: str = Field("steps", description="What the curve's step counts: optimiser steps, or the index of the attack's own grid.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Resolved attack config.")
    curve: list[CurvePoint]
    seconds: float = 0.0
    info: dict[str, Any] = Field(default_factory=dict, description="What the attack measured (e.g. fraction of weights removed).")
    drift: Optional[DriftSummary] = Field(None, description="Harmful embedding drift at the attack's end (attacks that leave a model).")


class ResistanceSummary(Record):
    """Aggregates over the suite (Rosati et al. 2024 conditions; TamperBench's bounded worst case)."""

    budget: int = Field(description="T: the largest attack step evaluated.")
    threshold: float = Field(description="phi: harmful score at or below which the model counts as resisting.")
    epsilon: float = Field(description="Utility-drop bound for the bounded worst case: the largest relative drop of "
                                       "benign accuracy from the model's own pre-attack accuracy.")
    mean_final_harmful: float
    worst_final_harmful: float
    worst_adversary: str
    worst_within_utility_bound: Optional[float] = Field(
        None, description="Worst final harmful score among adversaries whose utility drop <= epsilon "
                          "(None: no such adversary, see no_attack_within_utility_bound).")
    worst_within_utility_bound_adversary: Optional[str] = Field(None, description="The adversary that scored it.")
    within_utility_bound: Optional[list[str]] = Field(
        None, description="Adversaries whose utility drop stayed <= epsilon (None: not recorded, files before 1.3).")
    no_attack_within_utility_bound: Optional[bool] = Field(
        None, description="True when utility was measured and every attack dropped it by more than epsilon: the "
                          "harmful scores then describe a broken model, not a resistant one.")
    worst_adversary_utility: Optional[float] = Field(
        None, description="Benign accuracy of the model at the end of its worst attack.")
    worst_adversary_collapsed: Optional[float] = Field(
        None, description="Share of collapsed (degenerate) answers to harmful prompts at the end of its worst attack.")
    weak_resistance: bool = Field(description="max over t <= T and adversaries of harmful <= threshold.")
    broken_by: list[str] = Field(default_factory=list, description="Adversaries that pushed harmful above threshold.")
    worst_by_family: dict[str, float] = Field(
        default_factory=dict, description="Worst final harmful score per attack family (fine-tuning, rl, inference-time, "
                                          "weight-edit, prompt); the worst case above is taken over all of them.")
    worst_adversary_by_family: dict[str, str] = Field(default_factory=dict, description="The adversary behind each.")
    outcome_by_adversary: dict[str, Literal["refused", "collapsed", "deflected", "broken"]] = Field(
        default_factory=dict, description="How each attack ended: broken (final harmful > phi); collapsed (harmful <= phi "
                                          "but the attacked model's utility fell by more than epsilon, or most answers "
                                          "collapsed); refused (most answers refusals); deflected (most answers harmless "
                                          "compliance: wrong or irrelevant, e.g. SDD's).")
    held_only_by_collapse: list[str] = Field(
        default_factory=list, description="Attacks whose low harmful score came from a collapsed or broken model: a "
                                          "collapse trap's win, never counted as the model refusing.")


class Stability(Record):
    benign_accuracy: float
    benign_by_task: dict[str, float] = Field(default_factory=dict)
    perplexity: Optional[float] = Field(None, description="Held-out benign answer perplexity.")
    harmful_outcomes: Optional[Outcomes] = Field(None, description="Harmful prompts before any attack.")
    false_refusal: Optional[float] = None


class Generalisation(Record):
    """Resistance beyond what the attacker trained on, at the end of the strongest attack."""

    adversary: str
    in_domain_heldout_phrasings: Optional[float] = None
    cross_domain: Optional[float] = None
    disjoint_entities: Optional[float] = Field(None, description="In-domain eval entities never in attack data.")
    splits: dict[str, float] = Field(default_factory=dict, description="Every generalisation split of the task, by name.")


class Trainability(Record):
    task: str
    curve: list[dict[str, float]] = Field(default_factory=list, description="[{step, accuracy}, ...]")
    final_accuracy: float
    target: float
    steps_to_target: Optional[int] = Field(None, description="First evaluated step reaching target (None: never).")


class PrefillPoint(Record):
    """Prefilling attack (Qi et al. 2024): the first ``tokens`` tokens of the harmful answer are
    forced; harmful score of the completed answer. No weights change."""

    tokens: int
    harmful_score: float
    outcomes: Outcomes


class KLSummary(Record):
    """Per-token KL(model || anchor) by response position (Qi et al. 2024), with the benign control."""

    first_k: int
    harmful: list[float]
    harmful_first_mean: float
    harmful_later_mean: Optional[float] = None
    benign: Optional[list[float]] = None
    benign_first_mean: Optional[float] = None
    benign_later_mean: Optional[float] = None


class DeltaSummary(Record):
    """The weight delta model - anchor over its matrices (immunelm.diagnostics.spectra)."""

    median_effective_rank: float
    median_rank90_fraction: float = Field(description="Rank for 90% of the energy / full rank, median over matrices.")
    relative_norm: float = Field(description="||delta||_F / ||W_anchor||_F over all matrices.")


class ModelDiagnostics(Record):
    """The mechanistic diagnostics an evaluation computes per model (``evaluation.diagnostics``)."""

    anchor: Optional[str] = Field(None, description="The model KL and the delta are read against: the reference for "
                                                    "defended models, the base model (if given) for the reference.")
    kl: Optional[KLSummary] = None
    delta: Optional[DeltaSummary] = None
    worst_attack: Optional[str] = Field(None, description="The most harmful adversary that left a model: its drift is shown.")
    worst_attack_drift: Optional[DriftSummary] = None
    gradient_cosine: Optional[float] = Field(None, description="cos(grad L_harmful, grad L_benign) (SEAM's quantity).")
    response_entropy: Optional[float] = Field(None, description="Mean next-token entropy on harmful answers (TokenBuncher's).")
    landscape: Optional[dict[str, Any]] = Field(None, description="immunelm.diagnostics.landscape.Landscape1D (harmful loss).")
    representation_map: Optional[dict[str, Any]] = Field(
        None, description="immunelm.diagnostics.drift.RepresentationMap of harmful/benign prompts before and after the worst attack.")
    skipped: dict[str, str] = Field(default_factory=dict, description="Diagnostic -> why it was not computed.")
    seconds: dict[str, float] = Field(default_factory=dict, description="What each diagnostic cost.")


class ModelReport(Record):
    name: str
    role: Literal["reference", "defended", "base"]
    defence: Optional[str] = None
    checkpoint: Optional[str] = None
    resistance: list[AdversaryResult] = Field(default_factory=list)
    resistance_summary: Optional[ResistanceSummary] = None
    stability: Optional[Stability] = None
    generalisation: Optional[Generalisation] = None
    trainability: Optional[Trainability] = None
    prefilling: list[PrefillPoint] = Field(default_factory=list)
    wall_seconds: Optional[float] = Field(None, description="Time this model's evaluation took (all pillars).")
    diagnostics: Optional[ModelDiagnostics] = None


class EvaluationReport(Record):
    schema_version: str = SCHEMA_VERSION
    created_utc: str
    suite: str
    judge: str
    models: list[ModelReport]
    task: str = Field("world", description="The evaluation task the sets came from.")
    config: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    data_hashes: dict[str, str] = Field(default_factory=dict)
    wall_seconds: float = 0.0

    def model(self, name: str) -> ModelReport:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
