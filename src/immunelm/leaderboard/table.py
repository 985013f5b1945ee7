"""From finished cells to leaderboard rows: per seed, the numbers over all of that model's suites;
per row, their mean and a 95% confidence interval over seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from typing import Optional

from immunelm.errors import ImmuneLMError
from immunelm.leaderboard.cells import Cell
from immunelm.leaderboard.schema import Row, SearchSummary, Stat
from immunelm.search.study import best_trial

# a None here means "worse than any number" (never reached the target), so a seed without it
# cannot be left out of the mean: the row's mean is None instead
NONE_IS_WORST = ("steps_to_target",)


def fewer_seeds(stat: Stat, row: Row) -> str:
    """"1 of 3 seeds" where a number covers fewer seeds than its row (e.g. only seed 0 was searched),
    so it is never read beside the row's 3-seed means as if it were one."""
    return f"{stat.n} of {len(row.seeds)} seeds" if 0 < stat.n < len(row.seeds) else ""


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


def per_seed(reports: list, cells: list[Cell]) -> dict:
    """One seed's numbers over the ModelReports of each of its suites (``cells``: where each came
    from, for the errors)."""
    finals, families, outcomes, worst, bounded, no_bound = [], defaultdict(list), [], None, [], False
    for m, cell in zip(reports, cells):
        rs = m.resistance_summary
        check_cell_report(m, cell)
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
    numbers = {
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
    bad = [k for k, v in numbers.items() if isinstance(v, float) and not math.isfinite(v)]
    bad += [f"worst_by_family.{f}" for f, v in numbers["worst_by_family"].items() if not math.isfinite(v)]
    if bad:
        raise ImmuneLMError(f"{cells[0].dir}: non-finite {bad[0]} in its results; delete the cell to re-run it")
    return numbers


def check_cell_report(model, cell: Cell) -> None:
    """A cached cell from a results schema before 1.5 has no outcome per attack (nor, before 1.3,
    the utility-bound fields): refuse it rather than take shares over some attacks only."""
    names = {a.name for a in model.resistance}
    if set(model.resistance_summary.outcome_by_adversary) != names:
        raise ImmuneLMError(f"{cell.dir / 'results.json'}: written by an older ImmuneLM (no outcome for every attack); "
                            "delete the cell directory to re-run it")


def search_summary(cell: Cell, trials: int) -> SearchSummary:
    """The first ``trials`` trials of the cell's study (a longer study run earlier is cut, so every
    row of one leaderboard is searched with the same budget)."""
    path = cell.dir / "search.json"
    try:
        rows = json.loads(path.read_text())["trials"][:trials]
        best = best_trial(rows)
        feasible = sum(bool(r["feasible"]) for r in rows)
        curve = [r["best_so_far"] for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImmuneLMError(f"{path}: not a search record ({type(exc).__name__}: {exc}); delete the cell to re-run it") from None
    if any(v is not None and not math.isfinite(v) for v in curve):
        raise ImmuneLMError(f"{path}: non-finite best-so-far harmful score; delete the cell to re-run it")
    return SearchSummary(seed=cell.seed, trials=len(rows), feasible=feasible,
                         best_harmful_within_bound=best["harmful"] if best else None,
                         best_trial={k: v for k, v in best.items() if k not in ("config", "best_so_far")} if best else None,
                         best_so_far=curve, cell=cell.key)


def build_rows(cells: list[Cell], done: set[str], reference: str, trials: int) -> list[Row]:
    """A row per defence (reference first), from the cells in ``done``; a seed counts only when
    every one of its evaluate cells is done, and a training-free defence's seeds share one cell."""
    from immunelm.report import load_report

    rows = []
    for name in dict.fromkeys(c.row for c in cells):
        mine = [c for c in cells if c.row == name]
        groups = done_seed_groups(mine, done)
        # a cell evaluates one model; another leaderboard sharing the cell may call its row otherwise
        numbers = [per_seed([load_report(c.dir).models[0] for c in evaluations], evaluations) for _, evaluations in groups]
        searched = {c.key: c for c in mine if c.kind == "search" and c.key in done}
        searches = [search_summary(c, trials) for c in searched.values()]
        with_search = worst_with_search(mine, groups, numbers, searches)
        immunised = list({c.key: c for c in mine if c.kind == "immunise" and c.key in done}.values())
        seeds = [same[0] for same, _ in groups]
        rows.append(make_row(name, mine, seeds, numbers, searches, with_search, immunised, name == reference))
    return rows


def done_seed_groups(mine: list[Cell], done: set[str]) -> list[tuple[list, list[Cell]]]:
    """(seeds, their evaluate cells) per distinct model of the row whose evaluations are all done;
    seeds whose cells share keys (a training-free defence) are one model, counted once."""
    by_seed: dict = defaultdict(list)
    for c in mine:
        if c.kind == "evaluate":
            by_seed[c.seed].append(c)
    aliases: dict = {}
    for seed, evaluations in by_seed.items():
        aliases.setdefault(tuple(sorted(c.key for c in evaluations)), []).append(seed)
    return [(same, by_seed[same[0]]) for same in aliases.values() if all(c.key in done for c in by_seed[same[0]])]


def worst_with_search(mine: list[Cell], groups, numbers: list[dict], searches: list[SearchSummary]) -> list:
    """Per searched model, the worse of its suites' and its search's bounded worst case (only
    searched models: a mean over searched and unsearched seeds would mix two worst cases). A
    search cell shared by several seeds (one key) counts for whichever of them is in the row."""
    by_seed = {c.seed: s for s in searches for c in mine if c.kind == "search" and c.key == s.cell}
    out = []
    for (same, _), n in zip(groups, numbers):
        search = next((by_seed[s] for s in same if s in by_seed), None)
        if search is not None:
            out.append(max([v for v in (n["worst_harmful_within_bound"], search.best_harmful_within_bound) if v is not None],
                           default=None))
    return out


def make_row(name, mine, seeds, numbers, searches, with_search, immunised, is_reference) -> Row:
    def over(key):
        values = [n[key] for n in numbers]
        if key in NONE_IS_WORST and None in values:
            return Stat(values=values)  # e.g. a seed that never reached the target: no mean hides it
        return stat(values)
    families = sorted({f for n in numbers for f in n["worst_by_family"]})
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
