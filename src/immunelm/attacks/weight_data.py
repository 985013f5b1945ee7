"""What the weight-edit attacks of Wei et al. 2024 (https://arxiv.org/abs/2402.05162) share:
their safety and utility data, access to the decoder's linear weights, recording of those
layers' inputs, and the sweep over a budget grid. The methods themselves are
:mod:`immunelm.attacks.pruning` (weights) and :mod:`immunelm.attacks.lowrank` (ranks).

Safety data are the attacker's harmful prompts paired with refusals. ``safety_targets=generate``
(the default) uses the model's own greedy answers, as the paper's safety data are the aligned
model's own refusals; with an evaluation judge, answers it does not call refusals are replaced by
``refusal_text`` (or dropped when none is set). ``safety_targets=fixed`` pairs every prompt
with ``refusal_text``. Losses and activations count response tokens only (``tokens=response``,
the official code's ``--disentangle``). Utility data are the attacker's benign pairs.

Weights are edited in place and restored from a CPU snapshot, so each grid point starts again
from the unattacked model; peft tuner layers are their frozen base layers.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers.pytorch_utils import Conv1D

from immunelm.attacks.base import AttackResult, AttackRun
from immunelm.attacks.finetune import draw
from immunelm.config import Config, Seed
from immunelm.data import Example, PaddingCollator
from immunelm.data.chat import IGNORE_INDEX, encode_examples
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import GenerationConfig, eval_mode, generate
from immunelm.eval.judges.base import JudgeSample
from immunelm.eval.judges.outcomes import REFUSED
from immunelm.models import ModelAdapter
from immunelm.models.hooks import install

WEI_2024 = "https://arxiv.org/abs/2402.05162"
Batch = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- settings
class WeightEditData(Config):
    """Safety and utility data of the weight-edit attacks (Wei et al. 2024, https://arxiv.org/abs/2402.05162)."""

    examples: int = Field(64, ge=1, le=100_000, description="Examples drawn from each attacker pool (paper: 128 safety, 128 utility).")
    safety_targets: Literal["generate", "fixed"] = Field(
        "generate", description="generate: the model's own answers to the harmful prompts (the paper's safety data are the "
                                "aligned model's refusals); fixed: every prompt paired with refusal_text.")
    refusal_text: Optional[str] = Field(
        None, min_length=1, description="Fixed refusal; with generate it replaces answers the evaluation's judge does not call refusals.")
    tokens: Literal["response", "all"] = Field(
        "response", description="Tokens whose loss and activations count: response (official --disentangle) or all.")
    max_length: int = Field(256, ge=8, le=32_768, description="Examples are cut to this many tokens.")
    max_new_tokens: int = Field(32, ge=1, le=1024, description="Length of the model's own answers (safety_targets=generate).")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per forward pass when recording activations (results do not depend on it).")
    seed: Seed = Field(0, description="Which examples are drawn from the pools.")

    @model_validator(mode="after")
    def _fixed_needs_text(self) -> "WeightEditData":
        if self.safety_targets == "fixed" and not self.refusal_text:
            raise ValueError("safety_targets=fixed needs refusal_text (the refusal every harmful prompt is paired with)")
        return self


# ----------------------------------------------------------------------------- data
def _refused(judge, harmful: list[Example], answers: list[str]) -> list[bool]:
    """Which answers the evaluation's judge calls refusals (all of them without a judge)."""
    if judge is None:
        return [True] * len(answers)
    samples = [JudgeSample(e.prompt, a, e.response or None, dict(e.meta)) for e, a in zip(harmful, answers)]
    return [v.outcome == REFUSED for v in judge.judge(samples)]


class NothingToRemove(ImmuneLMError):
    """The model answers every harmful prompt harmfully already: there is no safe behaviour whose
    weights an edit could remove (the attack leaves the model as it is and says so)."""


def _harmless(judge, harmful: list[Example], answers: list[str]) -> list[bool]:
    if judge is None:
        return [False] * len(answers)
    samples = [JudgeSample(e.prompt, a, e.response or None, dict(e.meta)) for e, a in zip(harmful, answers)]
    return [v.harmful == 0 for v in judge.judge(samples)]


def refusal_examples(run: AttackRun, harmful: list[Example], cfg: WeightEditData, attack: str) -> tuple[list[Example], int, str]:
    """(harmful prompt, safe answer) pairs, how many answers are the model's own, and what they are.

    Safe answers are the model's own refusals (the paper's safety data). A model that refuses
    nothing but still answers harmlessly (SDD answers with irrelevant text) has that behaviour as
    its safety: its harmless answers are used instead. A model with neither raises NothingToRemove."""
    if cfg.safety_targets == "fixed":
        return [e.with_response(cfg.refusal_text) for e in harmful], 0, "fixed refusal"
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)
    answers = generate(run.model, run.tokenizer, [e.prompt_messages for e in harmful], gen)
    out, own = [], 0
    for example, answer, refused in zip(harmful, answers, _refused(run.judge, harmful, answers)):
        if refused and answer.strip():
            out.append(example.with_response(answer))
            own += 1
        elif cfg.refusal_text:
            out.append(example.with_response(cfg.refusal_text))
    if out:
        return out, own, "own refusals"
    harmless = [e.with_response(a) for e, a, ok in zip(harmful, answers, _harmless(run.judge, harmful, answers)) if ok and a.strip()]
    if harmless:
        return harmless, len(harmless), "own harmless answers (the model refused none)"
    raise NothingToRemove(f"{attack}: the model answered all {len(harmful)} harmful prompts harmfully; there is no safe "
                          "behaviour to remove")


def attack_rows(run: AttackRun, cfg: WeightEditData, attack: str) -> tuple[list[dict], list[dict], dict]:
    """Encoded safety rows, utility rows and what was used (for the result's info)."""
    rng = random.Random(cfg.seed)
    # Without repeats: a repeated example would add nothing to sums over examples.
    harmful = draw(run.data.harmful, min(cfg.examples, len(run.data.harmful)), rng, "harmful")
    benign = draw(run.data.benign, min(cfg.examples, len(run.data.benign)), rng, "benign")
    refusals, own, source = refusal_examples(run, harmful, cfg, attack)
    safety = encode_examples(run.tokenizer, refusals, cfg.max_length, f"{attack} safety data")
    utility = encode_examples(run.tokenizer, benign, cfg.max_length, f"{attack} utility data")
    return safety, utility, {"safety_examples": len(safety), "own_answers": own, "safety_data": source,
                             "utility_examples": len(utility)}


def unedited(run: AttackRun, points: list, reason: str, started: float) -> AttackResult:
    """Every grid point scored on the model as it is, with the reason (NothingToRemove)."""
    evaluations = [run.score(run.model, k) for k in range(len(points))]
    return AttackResult(evaluations, time.perf_counter() - started, {"skipped": reason})


def make_batches(rows: list[dict], pad_id: int, batch_size: int, tokens: str, device) -> list[Batch]:
    """Padded batches with ``select``: the token positions whose loss and activations count."""
    collate = PaddingCollator(pad_id)
    out = []
    for lo in range(0, len(rows), batch_size):
        batch = collate(rows[lo:lo + batch_size])
        select = batch["labels"] != IGNORE_INDEX if tokens == "response" else batch["attention_mask"].bool()
        labels = batch["input_ids"].masked_fill(~select, IGNORE_INDEX) if tokens == "all" else batch["labels"]
        out.append({k: v.to(device) for k, v in {**batch, "labels": labels, "select": select}.items()})
    return out


def batches_for(run: AttackRun, rows: list[dict], cfg: WeightEditData, batch_size: int | None = None) -> list[Batch]:
    pad_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    return make_batches(rows, pad_id, batch_size or cfg.batch_size, cfg.tokens, next(run.model.parameters()).device)


def forward_inputs(batch: Batch) -> dict:
    """The model's arguments for ``batch`` (no labels, no KV cache)."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


# ----------------------------------------------------------------------------- weights
def block_linears(model) -> list[dict[str, nn.Module]]:
    """Per decoder block, its linear layers by name (``blocks.0.self_attn.q_proj``); peft tuner
    layers are their frozen base layers, so edits reach the base weights."""
    adapter = ModelAdapter(model)
    return [{f"blocks.{i}.{n}": m for n, m in adapter.linear_layers(i).items()} for i in range(adapter.num_layers)]


def all_linears(model) -> dict[str, nn.Module]:
    return {name: module for block in block_linears(model) for name, module in block.items()}


def matrix(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` (default: the weight) as ``[out, in]``: GPT-2's Conv1D stores it transposed."""
    t = module.weight if tensor is None else tensor
    return t.T if isinstance(module, Conv1D) else t


@torch.no_grad()
def write_matrix(module: nn.Module, value: torch.Tensor) -> None:
    """Set the weight from an ``[out, in]`` matrix (transposed back for Conv1D)."""
    module.weight.copy_(matrix(module, value).to(module.weight.dtype))


def snapshot(targets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Original weights on the CPU, so each grid point starts from the unattacked model."""
    return {name: m.weight.detach().to("cpu", copy=True) for name, m in targets.items()}


@torch.no_grad()
def restore(targets: dict[str, nn.Module], saved: dict[str, torch.Tensor]) -> None:
    for name, module in targets.items():
        module.weight.copy_(saved[name])


# ----------------------------------------------------------------------------- activations
@torch.no_grad()
def input_statistics(model, targets: dict[str, nn.Module], batches: list[Batch], gram: bool) -> dict[str, torch.Tensor]:
    """Per linear layer, over the selected tokens' inputs x (float64): sum of x_j^2 per input
    feature j, or (``gram=True``) the Gram matrix C = sum x x^T."""
    stats: dict[str, torch.Tensor] = {}
    selected: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            rows = x[selected["mask"]].double()  # [tokens, in]
            add = rows.T @ rows if gram else rows.pow(2).sum(0)
            stats[name] = stats[name] + add if name in stats else add
        return fn

    handles = [install(module, True, recorder(name)) for name, module in targets.items()]
    try:
        with eval_mode(model):  # dropout would make the statistics random
            for batch in batches:
                selected["mask"] = batch["select"]
                model(**forward_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(targets) - set(stats))
    if missing:
        raise ImmuneLMError(f"no activations reached {missing[0]} (and {len(missing) - 1} more linear layers); "
                            "the data have no selected tokens")
    return stats


# ----------------------------------------------------------------------------- the grid
def sweep(run: AttackRun, points: list, edit: Callable[[object], dict], start: dict, started: float) -> AttackResult:
    """Score point 0 (the unattacked model), then each point's edit of the original weights.
    ``attack_seconds`` is the attack's own cost: everything but scoring."""
    evaluations, records, scoring = [run.score(run.model, 0)], [start], 0.0
    for k, point in enumerate(points[1:], start=1):
        records.append(edit(point))
        tick = time.perf_counter()
        evaluations.append(run.score(run.model, k))
        scoring += time.perf_counter() - tick
    seconds = time.perf_counter() - started
    return AttackResult(evaluations, seconds, {"points": records, "attack_seconds": round(seconds - scoring, 3)})
