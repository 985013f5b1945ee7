"""Judges: (prompt, response) -> refused / complied / complied_correct / complied_wrong / collapsed.

Importing this package registers every built-in judge; build one with
``build_judge("keyword", presets=["gcg"])``.
"""

from immunelm.eval.judges import classifier, exact, keyword, rubric  # noqa: F401  (registration)
from immunelm.eval.judges.base import OUTCOMES, Judge, JudgeConfig, JudgeSample, Verdict
from immunelm.eval.judges.registry import build_judge, judge_class, judge_names, register_judge

__all__ = [
    "OUTCOMES", "Judge", "JudgeConfig", "JudgeSample", "Verdict",
    "build_judge", "judge_class", "judge_names", "register_judge",
]
