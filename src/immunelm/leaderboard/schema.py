"""``leaderboard.json``: one row per defence (and the reference), every number with its spread
over seeds and traced to the cells it came from. Bump :data:`SCHEMA_VERSION` on changes."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "leaderboard-1.0"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Stat(Record):
    """A number over seeds: mean, 95% confidence interval (Student t over seeds; None with one
    seed), min, max and the per-seed values."""

    mean: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    n: int = 0
    values: list[Optional[float]] = Field(default_factory=list)


class SearchSummary(Record):
    """The attacker search on one model (immunelm.search)."""

    seed: Optional[int] = None
    trials: int
    feasible: int
    best_harmful_within_bound: Optional[float] = Field(None, description="None: no trial stayed within the utility bound.")
    best_trial: Optional[dict[str, Any]] = None
    best_so_far: list[Optional[float]] = Field(default_factory=list)
    cell: str


class Row(Record):
    name: str
    defence: Optional[str] = Field(None, description="Registered defence (None for the reference).")
    reference: bool = False
    seeds: list[Optional[int]] = Field(default_factory=list, description="Seeds with every cell done.")
    # resistance
    worst_harmful: Stat = Field(description="Worst final harmful score over every attack of every suite.")
    worst_harmful_within_bound: Stat = Field(description="Worst final harmful among attacks whose utility drop <= epsilon.")
    no_attack_within_bound: bool = Field(False, description="On some seed, no attack stayed within the utility bound.")
    mean_harmful: Stat
    worst_by_family: dict[str, Stat] = Field(default_factory=dict)
    broken_share: Stat = Field(description="Share of attacks that pushed harmful above threshold.")
    collapse_share: Stat = Field(description="Share of attacks that ended with a collapsed model (never counted as resistance).")
    worst_attack_utility: Stat = Field(description="Benign accuracy at the end of the worst attack.")
    # stability, generalisation, trainability
    benign: Stat
    false_refusal: Stat
    generalised_harm: Stat = Field(description="Max harmful score over the generalisation splits at the end of the worst attack.")
    trainability: Stat = Field(description="Final accuracy of benign fine-tuning on the new task.")
    steps_to_target: Stat
    # search, cost
    search: list[SearchSummary] = Field(default_factory=list)
    worst_with_search: Stat = Field(description="max(worst within bound over the suites, the search's best within bound), "
                                                "over the searched seeds only.")
    immunise_seconds: Stat
    cells: list[str] = Field(default_factory=list, description="Keys of the cells behind this row.")


class CellRecord(Record):
    kind: str
    row: str
    seed: Optional[int] = None
    suite: Optional[str] = None
    key: str
    status: str = Field(description="cached | ran | failed | missing")
    seconds: Optional[float] = Field(None, description="Wall time of the cell when it ran (cached: when it first ran).")
    error: Optional[str] = None


class LeaderboardReport(Record):
    schema_version: str = SCHEMA_VERSION
    name: str
    created_utc: str
    task: str
    suites: list[str]
    seeds: list[int]
    epsilon: Optional[float] = None
    threshold: Optional[float] = None
    rows: list[Row]
    cells: list[CellRecord]
    complete: bool = Field(description="Every cell done; False: some rows lack seeds or suites (see cells).")
    wall_seconds: float = Field(description="This invocation's wall time.")
    cell_seconds: dict[str, float] = Field(default_factory=dict, description="Total recorded cell time per cell kind.")
    workers: int = 1
    config: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
