"""From finished cells to leaderboard rows: per seed, the numbers over all of that model's suites;
per row, their mean and a 95% confidence interval over seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from typing import Optional

from immunelm.leaderboard.cells import Cell
from immunelm.leaderboard.schema import Row, SearchSummary, Stat
from immunelm.search.study import best_trial


def stat(values: list[Optional[float]]) -> Stat:
    """Mean, Student-t 95% interval over seeds (none with one value), min, max; None values are
    kept in ``values`` but not averaged."""
    known = [v for v in values if v is not None]
    if not known:
        return Stat(values=values)
    mean = statistics.fmean(known)
    low = high = None
    if len(known) > 1:
        from scipy.stats import t

        half = t.ppf(0.975, len(known) - 1) * statistics.stdev(known) / math.sqrt(len(known))
        low, high = mean - half, mean + half
    return Stat(mean=mean, ci_low=low, ci_high=high, min=min(known), max=max(known), n=len(known), values=values)


def per_seed(reports: list) -> dict:
    """One seed's numbers over the ModelReports of each of its suites."""
    finals, families, outcomes, worst, bounded, no_bound = [], defaultdict(list), [], None, [], False
    for m in reports:
        rs = m.resistance_summary
        finals += [a.curve[-1].harmful_score for a in m.resistance]
        for family, value in rs.worst_by_family.items():
            families[family].append(value)
        outcomes += list(rs.outcome_by_adversary.values())
        if worst is None or rs.worst_final_harmful > worst[0]:
            worst = (rs.worst_final_harmful, m)
        if rs.worst_within_utility_bound is not None:
            bounded.append(rs.worst_within_utility_bound)
        no_bound = no_bound or bool(rs.no_attack_within_utility_bound)
    first, worst_model = reports[0], worst[1]
    splits = (worst_model.generalisation.splits if worst_model.generalisation else {}) or {}
    return {
        "worst_harmful": worst[0],
        "worst_harmful_within_bound": max(bounded) if bounded else None,
        "no_attack_within_bound": not bounded and no_bound,
        "mean_harmful": statistics.fmean(finals),
        "worst_by_family": {f: max(v) for f, v in families.items()},
        "broken_share": sum(o == "broken" for o in outcomes) / len(outcomes),
        "collapse_share": sum(o == "collapsed" for o in outcomes) / len(outcomes),
        "worst_attack_utility": worst_model.resistance_summary.worst_adversary_utility,
        "benign": first.stability.benign_accuracy if first.stability else None,
        "false_refusal": first.stability.false_refusal if first.stability else None,
        "generalised_harm": max(splits.values()) if splits else None,
        "trainability": first.trainability.final_accuracy if first.trainability else None,
        "steps_to_target": first.trainability.steps_to_target if first.trainability else None,
    }


def search_summary(cell: Cell, trials: int) -> SearchSummary:
    """The first ``trials`` trials of the cell's study (a longer study run earlier is cut, so every
    row of one leaderboard is searched with the same budget)."""
    rows = json.loads((cell.dir / "search.json").read_text())["trials"][:trials]
    best = best_trial(rows)
    return SearchSummary(seed=cell.seed, trials=len(rows), feasible=sum(r["feasible"] for r in rows),
                         best_harmful_within_bound=best["harmful"] if best else None,
                         best_trial={k: v for k, v in best.items() if k not in ("config", "best_so_far")} if best else None,
                         best_so_far=[r["best_so_far"] for r in rows], cell=cell.key)


def build_rows(cells: list[Cell], done: set[str], reference: str, trials: int) -> list[Row]:
    """A row per defence (reference first), from the cells in ``done``; a seed counts only when
    every one of its evaluate cells is done, and a training-free defence's seeds share one cell."""
    from immunelm.report import load_report

    rows = []
    for name in dict.fromkeys(c.row for c in cells):
        mine = [c for c in cells if c.row == name]
        by_seed: dict = defaultdict(list)
        for c in mine:
            if c.kind == "evaluate":
                by_seed[c.seed].append(c)
        seen, seeds, numbers = set(), [], []
        for seed, evaluations in by_seed.items():
            keys = tuple(sorted(c.key for c in evaluations))
            if keys in seen or not all(c.key in done for c in evaluations):
                continue
            seen.add(keys)
            seeds.append(seed)
            # a cell evaluates one model; another leaderboard sharing the cell may call its row otherwise
            numbers.append(per_seed([load_report(c.dir).models[0] for c in evaluations]))
        searched = {c.key: c for c in mine if c.kind == "search" and c.key in done}
        searches = [search_summary(c, trials) for c in searched.values()]
        immunised = list({c.key: c for c in mine if c.kind == "immunise" and c.key in done}.values())
        rows.append(make_row(name, mine, seeds, numbers, searches, immunised, name == reference))
    return rows


def make_row(name, mine, seeds, numbers, searches, immunised, is_reference) -> Row:
    def over(key):
        return stat([n[key] for n in numbers])
    families = sorted({f for n in numbers for f in n["worst_by_family"]})
    # only seeds that were searched: a mean over searched and unsearched seeds would mix two worst cases
    by_seed_search = {s.seed: s.best_harmful_within_bound for s in searches}
    with_search = [max([v for v in (n["worst_harmful_within_bound"], by_seed_search[seed]) if v is not None], default=None)
                   for seed, n in zip(seeds, numbers) if seed in by_seed_search]
    seconds = [json.loads((c.dir / "immunise.json").read_text())["seconds"] for c in immunised]
    defence = None if is_reference else next((c.spec.get("defence") for c in mine if c.kind == "immunise"), None)
    return Row(
        name=name, defence=defence, reference=is_reference, seeds=seeds,
        **{k: over(k) for k in ("worst_harmful", "worst_harmful_within_bound", "mean_harmful", "broken_share", "collapse_share",
                                "worst_attack_utility", "benign", "false_refusal", "generalised_harm", "trainability",
                                "steps_to_target")},
        no_attack_within_bound=any(n["no_attack_within_bound"] for n in numbers),
        worst_by_family={f: stat([n["worst_by_family"].get(f) for n in numbers]) for f in families},
        search=searches, worst_with_search=stat(with_search), immunise_seconds=stat(seconds),
        cells=[c.key for c in mine])
