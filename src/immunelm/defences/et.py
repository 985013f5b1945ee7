"""E.T.: immunisation against inference-time interventions (Cevallos-Moreno et al., Engineering
Applications of AI 2026; code github.com/DISTA-HCAI/ET).

Layer by layer, an attacker fits an intervention on the residual stream entering block l that
unlocks harmful answers; then block l is trained so that, *given the intervened input*, its own
contribution to the residual stream is what it was on the clean input, while the clean input's
contribution stays unchanged:

    L_l = MSE(f_l(h + i(h); theta'), f_l(h; theta)) + clean_weight * MSE(f_l(h; theta'), f_l(h; theta))

with h the residual stream entering block l on harmful prompts (prompt tokens), i the frozen
attacker's edit, f_l(x) = block_l(x) - x (attention + MLP output: the official code matches the
attention and MLP outputs separately; one block-level term here, decision), theta the block before
this layer's training, clean_weight 0.01 (official). The next layer's attacker then attacks the
updated model. Attackers (``adversary``):

* ``reft`` (the paper's): a rank-2 NoReFT intervention fitted by harmful CE
  (:mod:`immunelm.attacks.reft`; official: lr 4e-3, 20 prompts x 10 epochs);
* ``steering``: the steering attack's difference-of-means vector, i = -strength * r^(l) (toward
  compliance), recomputed on the current model for each layer (:mod:`immunelm.attacks.steering`).

Full weights only: the official code trains a rank-2 LoRA on block l and merges it at once, i.e.
a low-rank update of that block; here the block is trained directly (``train.lora`` is refused,
because a reference "before this layer" cannot come from switching adapters off). The official
acceptance tests (toxicity x2, perplexity) and re-tries per layer are replaced by ``rounds`` fixed
rounds; the attack's harmful CE before and after each layer's defence is recorded instead.
"""

from __future__ import annotations

import copy
import random
from typing import Literal, Optional

import torch
from pydantic import Field, field_validator

from immunelm.attacks.directions import difference_of_means, pad_id, prompt_rows
from immunelm.attacks.reft import ReFTAttack, grad_flags_kept
from immunelm.config import Config, Seed
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.defences.rmu import token_mse
from immunelm.engine import StepContext, TrainConfig, TrainResult, causal_lm_loss, train
from immunelm.errors import ImmuneLMError
from immunelm.models import ModelAdapter
from immunelm.models.depth import LayerChoice, resolve_layer

ET_PAPER = "https://github.com/DISTA-HCAI/ET"


class ETConfig(Config):
    adversary: Literal["reft", "steering"] = Field("reft", description="The inner attacker: reft (paper) or steering.")
    layers: Optional[list[LayerChoice]] = Field(None, description="Blocks immunised, in order (None = all, first to last, as the paper).")
    rounds: int = Field(1, ge=1, le=100, description="Attack-then-defend rounds per layer (paper: up to 3, with acceptance tests).")
    clean_weight: float = Field(0.01, ge=0, description="Weight of the clean-input term (official 0.01).")
    rank: int = Field(2, ge=1, le=4096, description="reft: rank of the attacker's intervention (official 2).")
    attack_examples: int = Field(32, ge=1, description="reft: harmful pairs the attacker fits on (official 20).")
    attack_steps: int = Field(40, ge=1, description="reft: attacker optimiser steps per round (official: 10 epochs of 20).")
    attack_lr: float = Field(4e-3, gt=0, description="reft: attacker learning rate (official 4e-3).")
    strength: float = Field(2.0, gt=0, description="steering: alpha in multiples of the difference of means r^(l).")
    seed: Seed = Field(0, description="Attacker draws and initialisation.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=16, max_steps=50, log_every=10),
        description="Engine settings of each layer's defence (official: Adam 1e-4, 150 epochs, batch 16); max_steps per round.")

    @field_validator("train")
    @classmethod
    def _full_weights(cls, train: TrainConfig) -> TrainConfig:
        if train.lora is not None:
            raise ValueError("lora must be unset: E.T. trains each block's weights directly (see the module docstring)")
        return train


def block_update(adapter: ModelAdapter, model, batch: dict[str, torch.Tensor], layer: int, edit=None) -> torch.Tensor:
    """f_l(x) = block_l(x) - x for the (optionally edited) input x of block ``layer``."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    edits = {layer: edit} if edit is not None else {}
    with adapter.add_to_outputs(edits, "resid_pre"):
        with adapter.read_outputs([layer], "resid_pre") as pre, adapter.read_outputs([layer], "resid_post") as post:
            model(**inputs)
    return post[layer] - pre[layer]


class ETStep:
    def __init__(self, cfg: ETConfig, layer: int, edit, reference) -> None:
        self.cfg, self.layer, self.edit, self.reference = cfg, layer, edit, reference
        self.adapter: ModelAdapter | None = None
        self.ref_adapter = ModelAdapter(reference)

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        adapter = self.adapter = self.adapter or ModelAdapter(ctx.accelerator.unwrap_model(ctx.model))
        with torch.no_grad():
            target = block_update(self.ref_adapter, self.reference, batch, self.layer)
        steered = block_update(adapter, ctx.model, batch, self.layer, self.edit)
        clean = block_update(adapter, ctx.model, batch, self.layer)
        mask = batch["attention_mask"]
        steered_loss, clean_loss = token_mse(steered, target, mask), token_mse(clean, target, mask)
        loss = steered_loss + self.cfg.clean_weight * clean_loss
        ctx.backward(loss)
        return {"loss": loss.detach(), "steered_mse": steered_loss.detach(), "clean_mse": clean_loss.detach()}


def prompt_only_rows(tokenizer, data: DefenceData) -> list[dict[str, list[int]]]:
    """Harmful prompts with the assistant header (what the intervention acts on), no answer."""
    return [{"input_ids": ids, "labels": list(ids)} for ids in prompt_rows(tokenizer, data.refusals)]


class Attacker:
    """Fits (reft) or computes (steering) the edit against the model as it is now."""

    def __init__(self, cfg: ETConfig, tokenizer, data: DefenceData) -> None:
        self.cfg, self.tokenizer, self.data = cfg, tokenizer, data
        harmful = random.Random(cfg.seed).sample(data.harmful, min(cfg.attack_examples, len(data.harmful)))
        self.rows = [encode_example(tokenizer, e) for e in harmful]

    def edit(self, model, layer: int, round_: int):
        if self.cfg.adversary == "steering":
            pad = pad_id(self.tokenizer)
            r = difference_of_means(model, prompt_rows(self.tokenizer, self.data.refusals),
                                    prompt_rows(self.tokenizer, self.data.benign), 1, pad)[layer, 0]
            return (-self.cfg.strength * r).detach()
        with grad_flags_kept(model):
            attack = ReFTAttack(model, ModelAdapter(model).point(layer, "resid_pre"), self.cfg.rank, self.cfg.seed + round_)
            settings = TrainConfig(lr=self.cfg.attack_lr, batch_size=min(16, len(self.rows)), max_steps=self.cfg.attack_steps,
                                   seed=self.cfg.seed, progress=False, max_grad_norm=None)
            train(settings, attack, self.rows, PaddingCollator.for_tokenizer(self.tokenizer))
        attack.intervention.requires_grad_(False)
        return attack.intervention

    @torch.no_grad()
    def harmful_loss(self, model, layer: int, edit) -> float:
        """The attacker's objective (harmful answer CE) with its edit installed."""
        adapter = ModelAdapter(model)
        batch = {k: v.to(next(model.parameters()).device) for k, v in PaddingCollator.for_tokenizer(self.tokenizer)(self.rows).items()}
        with adapter.add_to_outputs({layer: edit}, "resid_pre"):
            return float(causal_lm_loss(model, batch))


def train_only_block(model, layer: int) -> None:
    keep = {id(p) for p in ModelAdapter(model).block(layer).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


@register_defence("et", ETConfig, paper=ET_PAPER)
def et(model, tokenizer, data: DefenceData, cfg: ETConfig):
    if not data.harmful and cfg.adversary == "reft":
        raise ImmuneLMError("defence 'et' (adversary reft) needs harmful pairs to fit its attacker but data.harmful is empty")
    num_layers = ModelAdapter(model).num_layers
    layers = [resolve_layer(l, num_layers) for l in cfg.layers] if cfg.layers is not None else list(range(num_layers))
    attacker, rows = Attacker(cfg, tokenizer, data), prompt_only_rows(tokenizer, data)
    collate, records, history, steps, seconds = PaddingCollator.for_tokenizer(tokenizer), [], [], 0, 0.0
    for layer in layers:
        for round_ in range(cfg.rounds):
            edit = attacker.edit(model, layer, round_)
            before = attacker.harmful_loss(model, layer, edit)
            reference = copy.deepcopy(model).eval().requires_grad_(False)
            train_only_block(model, layer)
            result = train(cfg.train.model_copy(update={"seed": cfg.train.seed + 1000 * layer + round_}), model, rows, collate,
                           step_fn=ETStep(cfg, layer, edit, reference), description=f"et layer {layer}")
            model = result.model
            model.requires_grad_(True)
            records.append({"layer": layer, "round": round_, "attack_harmful_ce_before": before,
                            "attack_harmful_ce_after": attacker.harmful_loss(model, layer, edit)})
            history += [{**h, "step": steps + h["step"], "layer": layer, "round": round_} for h in result.history]
            steps, seconds = steps + result.steps, seconds + result.seconds
    return trained(TrainResult(model, steps, seconds, history), adversary=cfg.adversary, layers=layers, per_layer=records)
