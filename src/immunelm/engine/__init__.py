"""One training engine that alignment, every defence and every attack reuse."""

from immunelm.engine.config import LoraSettings, TrainConfig
from immunelm.engine.engine import Engine, TrainResult, seed_everything, train
from immunelm.engine.steps import CausalLMStep, StepContext, TrainStep, causal_lm_loss, label_logprobs, mean_token_kl, response_token_loss

__all__ = [
    "Engine", "TrainConfig", "LoraSettings", "TrainResult", "train", "seed_everything",
    "CausalLMStep", "StepContext", "TrainStep", "causal_lm_loss", "label_logprobs", "mean_token_kl", "response_token_loss",
]
