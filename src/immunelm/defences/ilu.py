"""ILU: invariant LLM unlearning (Wang et al. 2025, ICML, https://arxiv.org/abs/2506.01339).

Unlearning that survives later fine-tuning: NPO or RMU plus an IRM penalty (Arjovsky et al. 2019,
IRMv1, https://arxiv.org/abs/1907.02893) over N fine-tuning environments D_i,

    min  l_u(theta) + lambda * sum_i ( d/dw l_i(w o theta; D_i) |_{w=1} )^2,

l_i the plain LM (response CE) loss on D_i. Where the paper leaves ``w o theta`` open we take the
IRMv1 reading: w is a dummy scalar multiplying the model's output logits, so the penalty is the
squared derivative of the environment's CE in that scale, zero when every environment's loss is
already stationary in it (an "invariant" model). Computed with one double backward through the
logits.

Environments (decision, issue 12): the defender's benign pairs grouped by their ``task`` (the
organism's capital / arithmetic / reverse ... tasks), or all benign pairs as one environment when
they carry no task or ``environments=one`` (the paper's practical ILU(GSM8K) uses one dataset
unrelated to the forget set; several gave no gain). lambda: the paper tunes 0.05-0.1.
The base loss's own config (``npo`` / ``rmu``) sets its terms; ILU's ``train`` runs the engine.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import torch
from pydantic import Field, field_validator

from immunelm.config import Config
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import BatchStream, DefenceData, register_defence, trained
from immunelm.defences.npo import NPOConfig, npo_step
from immunelm.defences.rmu import RMUConfig, rmu_step
from immunelm.defences.unlearning import retain_rows
from immunelm.engine import StepContext, TrainConfig, response_token_loss, train
from immunelm.errors import ImmuneLMError

ILU_PAPER = "https://arxiv.org/abs/2506.01339"


class ILUConfig(Config):
    base: Literal["npo", "rmu"] = Field("npo", description="The unlearning loss l_u the penalty is added to.")
    lam: float = Field(0.1, ge=0, description="lambda, weight of the IRM penalty (paper tunes 0.05-0.1).")
    environments: Literal["by_task", "one"] = Field(
        "by_task", description="by_task: one environment per benign task; one: all benign pairs together (paper's ILU(GSM8K)).")
    env_batch_size: int = Field(8, ge=1, description="Pairs per environment per step.")
    npo: NPOConfig = Field(default_factory=NPOConfig, description="NPO's terms when base=npo (its train section is unused).")
    rmu: RMUConfig = Field(default_factory=RMUConfig, description="RMU's terms when base=rmu (its train section is unused).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=16, max_steps=100, log_every=10),
        description="Engine settings; its batches are the retain set.")

    @field_validator("npo", "rmu")
    @classmethod
    def _base_train_unused(cls, base: Config) -> Config:
        if base.train != type(base)().train:
            raise ValueError("its train section is unused: ILU trains with its own 'train' section; set the engine settings there")
        return base


def irm_penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(d/dw CE(w * logits) at w = 1)^2, differentiable in the logits (IRMv1)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    loss = response_token_loss(logits * scale, labels)
    (grad,) = torch.autograd.grad(loss, scale, create_graph=True)
    return grad.pow(2)


def environment_streams(tokenizer, data: DefenceData, cfg: ILUConfig, seed: int) -> dict[str, BatchStream]:
    groups: dict[str, list] = defaultdict(list)
    for e in data.benign:
        groups[str(e.meta.get("task", "benign")) if cfg.environments == "by_task" else "benign"].append(e)
    if not groups:
        raise ImmuneLMError("defence 'ilu' needs benign pairs for its fine-tuning environments but data.benign is empty")
    collate = PaddingCollator.for_tokenizer(tokenizer)
    return {name: BatchStream([encode_example(tokenizer, e) for e in rows], collate, cfg.env_batch_size, seed + 3 + i, what="benign")
            for i, (name, rows) in enumerate(sorted(groups.items()))}


class ILUStep:
    """The base unlearning step (its own backward), then lambda * sum of the environments' penalties."""

    def __init__(self, cfg: ILUConfig, base, environments: dict[str, BatchStream]) -> None:
        self.cfg, self.base, self.environments = cfg, base, environments

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        metrics = self.base(ctx, batch)
        device = batch["input_ids"].device
        penalty = torch.zeros((), device=device)
        for stream in self.environments.values():
            env = stream.next(device)
            logits = ctx.model(input_ids=env["input_ids"], attention_mask=env["attention_mask"]).logits
            penalty = penalty + irm_penalty(logits, env["labels"])
        ctx.backward(self.cfg.lam * penalty)
        return {**metrics, "loss": metrics["loss"] + self.cfg.lam * penalty.detach(), "irm_penalty": penalty.detach()}


@register_defence("ilu", ILUConfig, paper=ILU_PAPER)
def ilu(model, tokenizer, data: DefenceData, cfg: ILUConfig):
    environments = environment_streams(tokenizer, data, cfg, cfg.train.seed)
    info: dict = {"base": cfg.base, "environments": sorted(environments)}
    if cfg.base == "npo":
        base = npo_step(model, tokenizer, data, cfg.npo, cfg.train)
    else:
        base, chosen = rmu_step(model, tokenizer, data, cfg.rmu, cfg.train)
        info.update(chosen)
    result = train(cfg.train, model, retain_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                   step_fn=ILUStep(cfg, base, environments), description="ilu")
    if not cfg.train.lora:
        result.model.requires_grad_(True)  # RMU froze all but its MLPs
    return trained(result, **info)
