"""UNDO: noise a copy of the model, then distil the model's outputs into it (Lee et al. 2025,
"Distillation Robustifies Unlearning", https://arxiv.org/abs/2506.06278).

Unlearning and alignment change what a model *says* but leave what it *knows* in the weights,
so a few fine-tuning steps bring it back. A student that only ever sees the teacher's outputs
on the data the defender keeps (never on the forget domain's facts) cannot inherit knowledge
those outputs do not express. UNDO makes the student from the teacher itself, partially
re-initialised, to trade compute for robustness:

    theta_student(0) = (1 - alpha) * theta_teacher + alpha * beta * theta_init
    L(theta_student) = tau^2 * sum_t KL( p_teacher(. | x_<t; tau) || p_student(. | x_<t; tau) ) / #tokens

``theta_init`` is a fresh initialisation of the same architecture (the model's own
``initializer_range``), seeded by ``train.seed + init_seed`` (a leaderboard's seeds draw
different noise); ``alpha = 1, beta = 1`` is distillation into a random student
(the paper's strongest setting, close to retraining on filtered data); ``alpha = 0`` is
self-distillation and changes nothing. The KL is forward (teacher-weighted) over every
non-padding next-token position of D_align (refusals + benign pairs), prompts included (the
paper distils on the pretraining text, every token).

The teacher is the model this defence receives. The paper's "U" is an unlearning run first
(e.g. ``pipeline steps=[{defence: npo}, {defence: undo}]``); an aligned model that already
refuses is a teacher whose outputs express no harmful knowledge on D_align either.
Full-weight training only: the noised weights are the point, so LoRA is refused.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field, field_validator
from transformers import AutoModelForCausalLM

from immunelm.config import Config, Seed
from immunelm.data import PaddingCollator
from immunelm.defences.base import DefenceData, alignment_rows, register_defence, trained
from immunelm.engine import StepContext, TrainConfig, mean_token_kl, train

UNDO_PAPER = "https://arxiv.org/abs/2506.06278"


class UNDOConfig(Config):
    alpha: float = Field(1.0, ge=0, le=1, description="Interpolation towards a fresh initialisation (paper's alpha; 1 = random student).")
    beta: float = Field(1.0, gt=0, description="Scale of the fresh initialisation mixed in (paper's beta).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of teacher and student in the KL (loss scaled by tau^2).")
    init_seed: Seed = Field(0, description="Offset of the fresh initialisation's seed from train.seed (init seed = "
                                           "train.seed + init_seed: each training seed draws its own noise).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=3e-3, batch_size=64, max_steps=600, schedule="cosine", warmup_steps=30,
                                            log_every=50),
        description="Engine settings for the distillation (its batches are D_align). The organism's defaults: a "
                    "random student needs about as many steps as the organism's own pre-training (500 x 128).")

    @field_validator("train")
    @classmethod
    def _full_weights(cls, train_cfg: TrainConfig) -> TrainConfig:
        if train_cfg.lora is not None:
            raise ValueError("train.lora: UNDO trains the noised weights themselves; LoRA on frozen noised weights "
                             "could not recover them (leave train.lora unset)")
        return train_cfg


def fresh_initialisation(model, seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised state dict for ``model``'s architecture (its config's init scheme)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    return fresh.state_dict()


@torch.no_grad()
def noise_weights(model, init: dict[str, torch.Tensor], alpha: float, beta: float) -> None:
    """In place: theta <- (1 - alpha) theta + alpha beta theta_init, for every parameter (tied
    weights are listed once). Buffers (rotary frequencies, ...) are architecture, not knowledge:
    kept."""
    for name, param in model.named_parameters():
        param.mul_(1 - alpha).add_(init[name].to(param.device, param.dtype), alpha=alpha * beta)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """tau^2 * mean over positions with ``mask`` of KL(p_teacher || p_student) at temperature tau."""
    return mean_token_kl(teacher_logits, student_logits, mask, temperature)


class DistillStep:
    """Forward KL from the frozen teacher to the student on every next-token position of the batch."""

    def __init__(self, teacher, temperature: float) -> None:
        self.teacher, self.temperature = teacher, temperature

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, attention = batch["input_ids"], batch["attention_mask"]
        self.teacher.to(ids.device)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=ids, attention_mask=attention).logits
        student_logits = ctx.model(input_ids=ids, attention_mask=attention).logits
        mask = (attention[:, 1:] * attention[:, :-1]).bool()  # position t predicts token t+1: both real
        loss = distillation_kl(student_logits[:, :-1], teacher_logits[:, :-1], mask, self.temperature)
        ctx.backward(loss)
        return {"loss": loss.detach(), "kl": loss.detach()}


@register_defence("undo", UNDOConfig, paper=UNDO_PAPER)
def undo(model, tokenizer, data: DefenceData, cfg: UNDOConfig):
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    noise_weights(model, fresh_initialisation(model, cfg.train.seed + cfg.init_seed), cfg.alpha, cfg.beta)
    return trained(train(cfg.train, model, alignment_rows(tokenizer, data), PaddingCollator.for_tokenizer(tokenizer),
                         step_fn=DistillStep(teacher, cfg.temperature), description="undo"),
                   alpha=cfg.alpha, beta=cfg.beta)
