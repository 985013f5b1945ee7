"""The library's orchestration, shared by the CLI verbs and the benchmarks (typed configs in,
results out). The CLI only parses arguments and calls these."""

from immunelm.api.evaluation import EvaluateConfig, ModelSpec, parse_model_flags, run_evaluation, validate_evaluation
from immunelm.api.immunise import ImmuniseConfig, defence_data, run_immunise, validate_immunise

__all__ = [
    "EvaluateConfig", "ImmuniseConfig", "ModelSpec", "defence_data", "parse_model_flags", "run_evaluation",
    "run_immunise", "validate_evaluation", "validate_immunise",
]
