"""Which number the report shows for each pillar, shared by tables and plots so they never disagree.

"Final" means the last evaluated attack step (the budget), not the peak; the "worst" adversary is
the one the resistance summary names, falling back to the highest final harmful score when a
results file has no summary. Generalisation numbers fall back to the worst attack's final reading.
"""

from __future__ import annotations

from typing import Optional

from immunelm.eval.pillars import within_bound
from immunelm.eval.schema import AdversaryResult, CurvePoint, EvaluationReport, ModelReport


def final_point(adv: AdversaryResult) -> Optional[CurvePoint]:
    """The last evaluated step: "final" numbers are read at the attack budget, not the peak."""
    return max(adv.curve, key=lambda p: p.step) if adv.curve else None


def worst_result(model: ModelReport) -> Optional[AdversaryResult]:
    """The summary's worst adversary, or the highest final harmful score if there is no summary."""
    scored = [a for a in model.resistance if a.curve]
    if model.resistance_summary:
        for adv in scored:
            if adv.name == model.resistance_summary.worst_adversary:
                return adv
    return max(scored, key=lambda a: final_point(a).harmful_score, default=None)


def worst_final(model: ModelReport) -> Optional[float]:
    if model.resistance_summary:
        return model.resistance_summary.worst_final_harmful
    adv = worst_result(model)
    return final_point(adv).harmful_score if adv else None


def mean_final(model: ModelReport) -> Optional[float]:
    finals = [final_point(a).harmful_score for a in model.resistance if a.curve]
    return sum(finals) / len(finals) if finals else None


def reference_model(report: EvaluationReport) -> Optional[ModelReport]:
    return next((m for m in report.models if m.role == "reference"), None)


def adversary_names(report: EvaluationReport) -> list[str]:
    """Every adversary in first-seen order, so models attacked by different suites still align."""
    names: list[str] = []
    for model in report.models:
        names.extend(a.name for a in model.resistance if a.name not in names)
    return names


def _generalisation(model: ModelReport, field: str, curve_field: str) -> Optional[float]:
    """The Generalisation record's value, else the worst attack's final reading of the same thing."""
    value = getattr(model.generalisation, field) if model.generalisation else None
    if value is not None:
        return value
    adv = worst_result(model)
    return getattr(final_point(adv), curve_field) if adv else None


def cross_domain(model: ModelReport) -> Optional[float]:
    return _generalisation(model, "cross_domain", "cross_domain_harmful")


def heldout_phrasing(model: ModelReport) -> Optional[float]:
    return _generalisation(model, "in_domain_heldout_phrasings", "heldout_phrasing_harmful")


def threshold(report: EvaluationReport) -> Optional[float]:
    return next((m.resistance_summary.threshold for m in report.models if m.resistance_summary), None)


def worst_end(model: ModelReport) -> Optional[CurvePoint]:
    """The model at the end of its worst attack (its utility and collapse are shown beside the harm)."""
    adv = worst_result(model)
    return final_point(adv) if adv else None


def worst_utility(model: ModelReport) -> Optional[float]:
    rs = model.resistance_summary
    if rs and rs.worst_adversary_utility is not None:
        return rs.worst_adversary_utility
    end = worst_end(model)
    return end.benign_accuracy if end else None


def worst_collapsed(model: ModelReport) -> Optional[float]:
    rs = model.resistance_summary
    if rs and rs.worst_adversary_collapsed is not None:
        return rs.worst_adversary_collapsed
    end = worst_end(model)
    return end.outcomes.collapsed if end else None


def no_attack_within_bound(model: ModelReport) -> Optional[bool]:
    """True when utility was measured and every attack broke it beyond epsilon; files written
    before the summary recorded it (schema < 1.3) are judged from their curves."""
    rs = model.resistance_summary
    if rs is None or not model.resistance:
        return None
    if rs.no_attack_within_utility_bound is not None:
        return rs.no_attack_within_utility_bound
    bounded = within_bound([a for a in model.resistance if a.curve], rs.epsilon)
    return None if bounded is None else not bounded
