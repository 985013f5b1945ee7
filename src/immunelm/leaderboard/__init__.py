"""Leaderboards: defences x task x suites x seeds (+ attacker searches) from one YAML, each cell
cached by the hash of its resolved config (:mod:`immunelm.leaderboard.cells`), aggregated with
confidence intervals over seeds (:mod:`immunelm.leaderboard.table`) into ``leaderboard.json``
and ``leaderboard.html``."""

from immunelm.leaderboard.config import LeaderboardConfig, leaderboard_names, load_leaderboard

__all__ = ["LeaderboardConfig", "leaderboard_names", "load_leaderboard"]
