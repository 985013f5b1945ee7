"""TokenBuncher (Feng et al. 2025, https://arxiv.org/abs/2508.20697): immunise against harmful RL.

Harmful RL needs the model's own samples to differ, so that some are rewarded above others. TokenBuncher
removes that diversity on harmful queries:

* **entropy-as-reward RL**: GRPO (the attacks' :class:`~immunelm.attacks.rl.GRPOStep`) on harmful
  prompts with reward r_i = -(mean token entropy of completion o_i under the policy), so the policy
  becomes near-deterministic there;
* **Token Noiser**: cross-entropy on the policy's own better-than-average completions (advantage
  >= 0) toward a noisy target, (1 - eps) on the sampled token and eps spread over the rest of the
  vocabulary by z ~ U(0, 1) (z at the sampled token = 0, normalised to sum 1): the low-logit tail is
  filled with noise, so an attacker who raises the entropy again samples noise, not alternatives.

Schedule (official code): GRPO only for ``warmup_steps``, then every ``noiser_every``-th step is a
Token Noiser step instead of a GRPO step. Official settings on 7B: 4 rollouts, KL coefficient 0.001,
lr 1e-6, 200 steps, 25 warm-up steps, eps 0.1. Decision (issue 12): the target is the paper's
form, (1 - m) on the sampled token and noise of total mass m on the rest, with m = ``noise_eps``
defaulting to 0.01, the mass the official code actually trains with (it normalises z to sum eps and
scales it by eps again: eps^2). With the paper text's m = 0.1 the noise floor (about 0.1 ln(V/0.1)
nats per token) is above what the entropy reward reaches: on the organism mean rollout entropy rose
1.72 -> 1.85 in 100 steps, while GRPO alone lowered it 1.84 -> 0.78 and m = 0.01 to 0.93 in 60 steps
(one run each). The prompts are the defender's harmful prompts (those of ``data.refusals``); no
harmful answers are needed.
"""

from __future__ import annotations

import torch
from pydantic import Field

from immunelm.attacks.rl import GRPOAttackConfig, GRPOStep, Reference, ScoredRollout, prompt_batch
from immunelm.config import Config, Seed
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.engine import StepContext, TrainConfig, train
from immunelm.errors import ImmuneLMError

TOKENBUNCHER_PAPER = "https://arxiv.org/abs/2508.20697"


class TokenBuncherConfig(Config):
    group_size: int = Field(4, ge=2, le=1024, description="Rollouts per harmful prompt (official 4).")
    max_new_tokens: int = Field(16, ge=1, le=32768, description="Tokens sampled per rollout (official 1024; the organism's answers are short).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the rollouts.")
    beta: float = Field(0.001, ge=0, le=100, description="KL coefficient to the starting model (official 0.001).")
    noise_eps: float = Field(0.01, ge=0, lt=1, description=(
        "Token Noiser: target mass spread over the vocabulary tail (official code: eps 0.1 applied twice = 0.01; paper text 0.1)."))
    warmup_steps: int = Field(12, ge=0, description="GRPO-only steps before the Token Noiser starts (official 25 of 200).")
    noiser_every: int = Field(2, ge=0, description="After warm-up, every n-th step is a Token Noiser step (official 2; 0 = never).")
    seed: Seed = Field(0, description="Seeds the rollouts and the noise.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-5, batch_size=8, max_steps=100, log_every=10),
        description="Engine settings: batch_size = harmful prompts per step (official: lr 1e-6, 200 steps, batch 32 on 7B; "
                    "at 1e-4 the organism lost its refusal and benign accuracy, at 1e-5 it kept both).")

    def grpo(self) -> GRPOAttackConfig:
        return GRPOAttackConfig(group_size=self.group_size, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                beta=self.beta, seed=self.seed, train=self.train)


def response_entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over each row's completion positions of the entropy of pi(. | o_<t) at ``temperature``."""
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    weights = mask.float()
    return (entropy * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class EntropyReward:
    """r_i = -mean token entropy of completion i (the reward TokenBuncher maximises)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, examples, texts, logits: torch.Tensor, mask: torch.Tensor):
        entropy = response_entropy(logits, mask, self.temperature)
        return -entropy, {"entropy": entropy.mean()}


def noisy_targets(labels: torch.Tensor, vocab: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(1 - eps) at each label, eps * z elsewhere, z ~ U(0, 1) zeroed at the label and summing to 1."""
    z = torch.rand(*labels.shape, vocab, generator=generator).to(labels.device)
    z.scatter_(-1, labels.unsqueeze(-1), 0.0)
    z = z / z.sum(dim=-1, keepdim=True)
    target = eps * z
    target.scatter_(-1, labels.unsqueeze(-1), 1.0 - eps)
    return target


def noiser_loss(scored: ScoredRollout, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Soft-target CE on the completion tokens of the rollouts whose advantage is >= 0."""
    keep = (scored.advantages >= 0).unsqueeze(1) & scored.mask
    labels = scored.seqs["labels"][:, 1:].clamp(min=0)
    logp = torch.log_softmax(scored.logits[:, :-1].float(), dim=-1)
    target = noisy_targets(labels, logp.shape[-1], eps, generator)
    per_token = -(target * logp).sum(dim=-1)
    return (per_token * keep).sum() / keep.sum().clamp(min=1)


class TokenBuncherStep:
    def __init__(self, cfg: TokenBuncherConfig, grpo: GRPOStep) -> None:
        self.cfg, self.grpo = cfg, grpo

    def noiser_step(self, step: int) -> bool:
        cfg = self.cfg
        return cfg.noiser_every > 0 and step >= cfg.warmup_steps and (step - cfg.warmup_steps) % cfg.noiser_every == 0

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scored = self.grpo.scored_rollout(ctx, batch)
        if self.noiser_step(ctx.step):
            noise = torch.Generator().manual_seed(scored.seed + 1)  # fixed by (seed, step): resumable
            loss, extra = noiser_loss(scored, self.cfg.noise_eps, noise), {"noiser_step": torch.tensor(1.0)}
        else:
            loss, extra = self.grpo.policy_loss(ctx, scored)
            extra["noiser_step"] = torch.tensor(0.0)
        ctx.backward(loss)
        return {"loss": loss.detach(), **scored.metrics, **extra}


@register_defence("tokenbuncher", TokenBuncherConfig, paper=TOKENBUNCHER_PAPER)
def tokenbuncher(model, tokenizer, data: DefenceData, cfg: TokenBuncherConfig):
    prompts = list(data.refusals)
    if not prompts:
        raise ImmuneLMError("defence 'tokenbuncher' needs harmful prompts but data.refusals is empty")
    grpo_cfg = cfg.grpo()
    reference = Reference(model, lora=cfg.train.lora is not None) if cfg.beta > 0 else None
    grpo = GRPOStep(grpo_cfg, prompts, tokenizer, EntropyReward(cfg.temperature), reference)
    result = train(cfg.train, model, list(range(len(prompts))), prompt_batch, step_fn=TokenBuncherStep(cfg, grpo),
                   description="tokenbuncher")
    return trained(result)
