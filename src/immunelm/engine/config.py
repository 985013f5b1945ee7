"""The training engine's typed config (shared by alignment, every defence and every attack)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from immunelm.config import Config, Seed

Beta = Annotated[float, Field(ge=0, lt=1)]
Step = Annotated[int, Field(ge=0)]


class LoraSettings(Config):
    """Low-rank adapters via peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685)."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt (e.g. [q_proj, k_proj, v_proj]) or 'all-linear'.",
    )


class TrainConfig(Config):
    """One training run: optimiser, schedule, batch geometry, budget, checkpoints."""

    optimizer: Literal["adamw", "adam", "sgd", "adagrad", "adadelta"] = Field(
        "adamw", description="Optimiser (TAR's red team uses all of these)."
    )
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for AdamW).")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam/AdamW betas, each in [0, 1).")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="SGD Nesterov momentum (needs momentum > 0).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warm-up."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps from 0 to lr.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of linear/cosine decay, as a fraction of lr.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimiser step.")
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps; overrides epochs.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data if max_steps is unset.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm, > 0 (None: off).")
    seed: Seed = Field(0, description="Seeds weights init of adapters, data order and dropout.")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters instead of all weights.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Autocast on GPU.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (GPU).")
    eval_at: list[Step] = Field(default_factory=list, description="Steps at which to run evaluation callbacks (0 = before training).")
    checkpoint_every: int | None = Field(None, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    log_every: int = Field(10, ge=1, description="Record averaged metrics every N steps.")
    progress: bool = Field(True, description="Show a progress bar with ETA.")

    def weight_settings(self) -> dict:
        """The settings that determine the trained weights: bookkeeping dropped, settings the
        chosen optimiser or schedule ignores dropped, equivalent optimisers merged (Adam and
        AdamW with weight decay 0 are one optimiser). Two configs with equal weight settings
        train the same model (used to refuse duplicate adversaries)."""
        out = self.model_dump(mode="json", exclude={"log_every", "progress", "eval_at", "checkpoint_every",
                                                    "keep_checkpoints", "gradient_checkpointing"})
        if out["optimizer"] in ("adam", "adamw") and out["weight_decay"] == 0:
            out["optimizer"] = "adam"  # AdamW's decoupled decay is its only difference from Adam
        if out["optimizer"] != "sgd":
            out.pop("momentum"), out.pop("nesterov")
        if out["optimizer"] not in ("adam", "adamw"):
            out.pop("betas")
        if out["schedule"] == "constant":
            out.pop("min_lr_ratio")
        if out["max_steps"] is not None:
            out.pop("epochs")  # max_steps overrides epochs
        return out

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov=true needs momentum > 0")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps}): the peak lr would never be reached")
        return self
