"""Evaluation tasks: what an evaluation reads (sets, scorers, judge), as data."""

from immunelm.tasks.base import CROSS_DOMAIN, HELDOUT_CATEGORY, HELDOUT_PHRASINGS, EvalTask, JudgeSpec, ScoredSet, TrainabilityTask
from immunelm.tasks.check import check_tokenizer
from immunelm.tasks.loader import TaskContext, load_task, load_task_config, task_names

__all__ = [
    "CROSS_DOMAIN", "HELDOUT_CATEGORY", "HELDOUT_PHRASINGS", "EvalTask", "JudgeSpec", "ScoredSet", "TaskContext",
    "TrainabilityTask", "check_tokenizer", "load_task", "load_task_config", "task_names",
]
