"""The one training loop. Alignment, every defence and every fine-tuning attack run through it.

What varies between methods is the step function (see :mod:`immunelm.engine.steps`); what
is shared lives here: deterministic data order, gradient accumulation, clipping, optimiser
and schedule, LoRA wrapping, evaluation at chosen steps, progress with ETA, resumable
safetensors checkpoints, and ``accelerate`` so the same run goes multi-GPU (DDP/FSDP/
DeepSpeed via ``accelerate launch``) without code changes.
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from immunelm.engine.checkpoint import (
    CHECKPOINT_PREFIX, apply_checkpoint, find_resumable, prune_checkpoints, resume_message, run_fingerprint, run_record,
    save_checkpoint,
)
from immunelm.engine.config import TrainConfig
from immunelm.engine.optim import build_optimizer, build_scheduler
from immunelm.engine.sampling import BatchOrder
from immunelm.engine.steps import CausalLMStep, StepContext, TrainStep
from immunelm.errors import ImmuneLMError, NonFiniteError

EvalFn = Callable[[torch.nn.Module, int], dict[str, float]]
StepCallback = Callable[[int, dict[str, float]], None]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _not_finite(value, device) -> torch.Tensor:
    return ~torch.isfinite(torch.as_tensor(value, device=device).detach()).all()


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped (peft-wrapped if LoRA was used)
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_accelerator(mixed_precision: str = "no"):
    """One ``Accelerator`` per process (accelerate keeps process-wide state)."""
    from accelerate import Accelerator

    on_gpu = torch.cuda.is_available()
    return Accelerator(cpu=not on_gpu, mixed_precision=mixed_precision if on_gpu else "no")


def apply_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    assert lora is not None
    peft_cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def total_optimizer_steps(cfg: TrainConfig, order: BatchOrder) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * order.batches_per_epoch / cfg.grad_accum))


class Engine:
    """Train ``model`` on ``dataset`` (a sequence of encoded rows) with ``step_fn``.

    ``run_config`` is the whole resolved config of the command (e.g. the finetune config): its
    fields are recorded in every checkpoint so ``train(resume=True)`` refuses a checkpoint
    written under another config. ``log`` receives one-line notes (what a resume continues from).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        dataset: Sequence[Any],
        collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
        step_fn: TrainStep | None = None,
        evaluate: EvalFn | None = None,
        output_dir: str | Path | None = None,
        callbacks: Sequence[StepCallback] = (),
        accelerator=None,
        description: str = "train",
        run_config=None,
        log: Callable[[str], None] = _to_stderr,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("training dataset is empty")
        self.cfg = config
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.step_fn = step_fn or CausalLMStep()
        self.evaluate = evaluate
        self.output_dir = Path(output_dir) if output_dir else None
        self.callbacks = list(callbacks)
        self.accelerator = accelerator or get_accelerator(config.mixed_precision)
        self.description = description
        self.log = log
        self.fingerprint = run_fingerprint(config, run_config, len(dataset))
        seed_everything(config.seed)  # before LoRA init so adapters are seeded too
        self.model = apply_lora(model, config) if config.lora else model
        if config.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable()
            if config.lora and hasattr(self.model, "enable_input_require_grads"):
                # Frozen embeddings give checkpointed blocks no grad-requiring input otherwise.
                self.model.enable_input_require_grads()

    @property
    def checkpoint_root(self) -> Path | None:
        return self.output_dir / "checkpoints" if self.output_dir else None

    def train(self, resume: bool = False) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        order = BatchOrder(len(self.dataset), cfg.batch_size, cfg.seed, acc.num_processes, acc.process_index)
        total = total_optimizer_steps(cfg, order)
        optimizer = build_optimizer(self.model.parameters(), cfg)
        scheduler = build_scheduler(optimizer, total, cfg)
        model, optimizer = acc.prepare(self.model, optimizer)
        counters = {"step": 0, "batches": 0}
        history: list[dict] = []
        evaluations: list[dict] = []
        if resume:
            counters = self._resume(acc.unwrap_model(model), optimizer, scheduler)
            history, evaluations = counters.pop("history", []), counters.pop("evaluations", [])
        ctx = StepContext(model, acc, counters["step"], total, cfg.grad_accum)
        batches = order.batches(start_batch=counters["batches"])
        pending: list[dict[str, torch.Tensor]] = []
        bar = tqdm(
            total=total, initial=counters["step"], desc=self.description,
            disable=not (cfg.progress and acc.is_main_process), dynamic_ncols=True,
        )
        started = time.perf_counter()
        model.train()
        for step in range(counters["step"], total):
            if step in cfg.eval_at:
                evaluations.append(self._run_eval(model, step))
            ctx.step = step
            pending.extend(self._optimizer_step(model, optimizer, scheduler, ctx, batches))
            counters = {"step": step + 1, "batches": counters["batches"] + cfg.grad_accum}
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                history.append(self._summarise(pending, step + 1, scheduler))
                bar.set_postfix(loss=f"{history[-1].get('loss', float('nan')):.4f}")
                pending = []
            bar.update(1)
            for callback in self.callbacks:
                callback(step + 1, history[-1] if history else {})
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                self._checkpoint(model, optimizer, scheduler, counters, history, evaluations)
        bar.close()
        if total in cfg.eval_at:
            evaluations.append(self._run_eval(model, total))
        return TrainResult(
            acc.unwrap_model(model), total, time.perf_counter() - started, history, evaluations
        )

    def _optimizer_step(self, model, optimizer, scheduler, ctx, batches) -> list[dict]:
        acc, cfg = self.accelerator, self.cfg
        metrics = []
        for micro in range(cfg.grad_accum):
            rows = [self.dataset[i] for i in next(batches)]
            batch = {k: v.to(acc.device) for k, v in self.collate_fn(rows).items()}
            last = micro == cfg.grad_accum - 1
            with (nullcontext() if last else acc.no_sync(model)), acc.autocast():
                metrics.append(self.step_fn(ctx, batch))
        # Clipping at +inf changes nothing (factor exactly 1) but returns the norm, which is checked.
        norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf)
        self._stop_if_not_finite(ctx, metrics, norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return metrics

    def _stop_if_not_finite(self, ctx: StepContext, metrics: list[dict], norm) -> None:
        """Raise before ``optimizer.step`` if this step's loss or gradient is nan/inf: the weights
        keep their last finite values and no checkpoint is written after the bad step."""
        acc = self.accelerator
        bad_loss = ctx.take_nonfinite_loss().to(acc.device)
        for m in metrics:
            if "loss" in m:
                bad_loss = bad_loss | _not_finite(m["loss"], acc.device)
        # fp16's loss scaler expects inf gradients now and then and skips those steps itself.
        check_grad = norm is not None and getattr(acc, "scaler", None) is None
        bad_grad = _not_finite(norm, acc.device) if check_grad else torch.tensor(False, device=acc.device)
        flags = torch.stack([bad_loss, bad_grad]).float()
        if acc.num_processes > 1:  # every process must stop together, not hang in the next collective
            flags = acc.reduce(flags, reduction="sum")
        loss_bad, grad_bad = (flags > 0).tolist()
        if loss_bad or grad_bad:
            what = "loss" if loss_bad else f"gradient norm ({float(norm)})"
            raise NonFiniteError(
                f"training stopped at step {ctx.step + 1}: the {what} is not finite (nan or inf); this step was not "
                "applied and nothing after it was saved (lower train.lr, set train.max_grad_norm, or check the data)")

    def _resume(self, model, optimizer, scheduler) -> dict:
        """Load the newest complete checkpoint of this run; one-line error if there is none."""
        if self.checkpoint_root is None:
            raise ImmuneLMError("resume: the engine has no output_dir to resume from")
        data, skipped = find_resumable(self.checkpoint_root, self.fingerprint)
        counters = apply_checkpoint(data, model, optimizer, scheduler)
        if self.accelerator.is_main_process:
            self.log(resume_message(data, skipped))
        return counters

    def _summarise(self, pending: list[dict], step: int, scheduler) -> dict[str, float]:
        # A step function may report a metric only on some steps (TokenBuncher's KL on its GRPO
        # steps, not its Token Noiser steps): each is averaged over the steps that report it.
        keys = dict.fromkeys(k for m in pending for k in m)
        row = {k: float(torch.stack([m[k].float() for m in pending if k in m]).mean()) for k in keys}
        row.update(step=step, lr=scheduler.get_last_lr()[0])
        return row

    def _run_eval(self, model, step: int) -> dict[str, float]:
        if self.evaluate is None:
            return {"step": step}
        model.eval()
        with torch.no_grad():
            result = dict(self.evaluate(self.accelerator.unwrap_model(model), step))
        model.train()
        result["step"] = step
        return result

    def _checkpoint(self, model, optimizer, scheduler, counters, history, evaluations) -> None:
        if self.checkpoint_root is None:
            raise ValueError("checkpoint_every is set but the engine has no output_dir")
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            target = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{counters['step']}"
            state = {**counters, "history": history, "evaluations": evaluations}
            save_checkpoint(target, acc.unwrap_model(model), optimizer, scheduler, state, run_record(self.fingerprint))
            prune_checkpoints(self.checkpoint_root, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()


def train(config: TrainConfig, model, dataset, collate_fn, **kwargs) -> TrainResult:
    """Convenience wrapper: ``Engine(...).train(resume=kwargs.pop('resume', False))``."""
    resume = kwargs.pop("resume", False)
    return Engine(config, model, dataset, collate_fn, **kwargs).train(resume=resume)
