"""Harmful RL with GRPO (Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300).

The attacker has harmful prompts and a reward, never a harmful answer to imitate: per optimiser
step it draws a batch of prompts q from the task's harmful pool (prompts only), samples a group
of G completions o_1..o_G per prompt from the current policy (seeded, temperature T), rewards
each with the evaluation's judge and moves the policy towards the better-than-average ones:

* reward r_i = judge harmfulness of o_i in [0, 1] (compliance), except r_i = -collapse_penalty
  for a collapsed answer, so breaking the model is never rewarded;
* group-normalised advantage A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps) (population
  std; a group of equal rewards gives A = 0, no NaN);
* loss = -1/G sum_i 1/|o_i| sum_t [min(rho_it A_i, clip(rho_it, 1-e, 1+e) A_i) - beta KL_it],
  rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t), the paper's eq. 3 (per-completion
  token mean, then the mean over completions);
* KL_it = pi_ref / pi - log(pi_ref / pi) - 1 at the sampled token (the paper's k3 estimator of
  KL(pi || pi_ref), unbiased and never negative); pi_ref is the model as the attack found it,
  frozen (under LoRA: the same network with its adapters off); beta = 0 skips it.

One optimisation step per generation batch (the paper's setting), so pi_old = pi detached and
rho = 1 numerically; the formula is kept because its gradient, A_i grad log pi, is the policy
gradient. Log-probabilities are taken at the sampling temperature (logits / T), so the
gradient is that of the policy that produced the samples (TRL does the same).

The judge sees the pool's reference answer where there is one (the world's exact judge needs
it): it is the verifier's key, never a training target.

Decision (issue 11): TRL's ``GRPOTrainer`` is not used. ``trl`` is not a dependency of the
project (not in requirements.txt, not installed), and its trainer is a second training loop
with its own data order, checkpoints, LoRA wrapping and accelerate set-up, whereas every method
here trains through the one engine. The objective is therefore an engine step function
(:class:`GRPOStep`): data order, LoRA or full weights, clipping, schedules, evaluation at the
suite's ``eval_at``, resumable checkpoints and multi-GPU come from the engine, and the rollouts
are seeded by (seed, step), so a resumed run samples what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from pydantic import Field

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.config import Config, Seed
from immunelm.data import Example, PaddingCollator
from immunelm.data.chat import IGNORE_INDEX, encode_prompt
from immunelm.engine import StepContext, TrainConfig, label_logprobs, train
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import GenerationConfig
# The evaluation's own decoding parts, so rollouts end, pad and sample exactly as scored answers do
# (generation.generate returns text only; the policy gradient needs the sampled token ids).
from immunelm.eval.generation import eos_token_ids, eval_mode, left_pad, padding_id, sampling_kwargs, seeded
from immunelm.eval.judges import JudgeSample, Verdict
from immunelm.eval.judges.outcomes import COLLAPSED, REFUSED
from immunelm.models.reference import OriginalModel

DEEPSEEKMATH = "https://arxiv.org/abs/2402.03300"


class GRPOAttackConfig(Config):
    """One GRPO attacker (defaults sized for the built-in organism; paper settings in each help)."""

    group_size: int = Field(8, ge=2, le=1024, description=(
        f"G: completions sampled per prompt; advantages are normalised within each group (paper 64, {DEEPSEEKMATH})."))
    max_new_tokens: int = Field(16, ge=1, le=32768, description=(
        "Tokens sampled per completion at most (paper 1024; the world's answers are at most 12)."))
    temperature: float = Field(1.0, gt=0, le=10, description=(
        "Sampling temperature; log-probabilities are taken at the same temperature."))
    beta: float = Field(0.04, ge=0, le=100, description=(
        f"KL(policy || reference) coefficient, k3 estimator (paper 0.04, {DEEPSEEKMATH}); 0 skips the reference model."))
    clip_eps: float = Field(0.2, gt=0, lt=1, description=(
        "Clip range e of the ratio, as in PPO (https://arxiv.org/abs/1707.06347); inactive with one step per batch."))
    collapse_penalty: float = Field(1.0, ge=0, le=100, description=(
        "A collapsed completion (empty or repetitive) is rewarded -this, so breaking the model is never rewarded."))
    advantage_eps: float = Field(1e-4, gt=0, le=1, description=(
        "eps in A = (r - mean) / (std + eps): keeps equal-reward groups at A = 0 (TRL's 1e-4)."))
    seed: Seed = Field(0, description="Seeds the sampled completions (with the step), independently of train.seed.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=8, max_steps=100, log_every=10),
        description="Engine settings: batch_size = harmful prompts per micro-batch (each sampled group_size times), "
                    "max_steps = budget, lr, LoRA or full (paper: lr 1e-6, 1024 completions per step, on 7B).")

    def effective(self, kind: str) -> dict:
        """What determines the attacked weights (for the suite's duplicate check)."""
        return {**self.model_dump(mode="json"), "train": self.train.weight_settings()}


# --------------------------------------------------------------------------------------- maths

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps) for rewards laid out group after group."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) at tokens sampled from pi: x - log x - 1, x = pi_ref / pi."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's completion tokens (1/|o_i| sum_t)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float, beta: float = 0.0, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's eq. 3 (negated, to minimise); token tensors are (completions, positions)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    per_token = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    if ref_logp is not None and beta > 0:
        per_token = per_token - beta * k3_kl(logp, ref_logp)
    return -sequence_mean(per_token, mask).mean()


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_t | y_<t) at each next-token position, mask of labelled positions), both (B, T-1).

    Rows are right-padded, so positions count from each row's first token as in sampling."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return label_logprobs(logits, batch["labels"], temperature)


# ------------------------------------------------------------------------------------ rollouts

@dataclass
class Rollout:
    """Sampled completions: training rows (prompt + completion, completion labelled) and their text."""

    rows: list[dict[str, list[int]]]
    texts: list[str]


def _completion(new_ids: list[int], eos_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(tokens the policy chose, up to and including the first eos; the answer before that eos)."""
    end = next((i for i, t in enumerate(new_ids) if t in eos_ids), None)
    return (new_ids, new_ids) if end is None else (new_ids[:end + 1], new_ids[:end])


def sample_completions(model, tokenizer, examples: Sequence[Example], max_new_tokens: int, temperature: float,
                       seed: int) -> Rollout:
    """One seeded sampled completion per example, with the evaluation's chat template and eos ids."""
    prompts = [encode_prompt(tokenizer, e.prompt_messages) for e in examples]
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = padding_id(tokenizer, eos_ids)
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    sampling = sampling_kwargs(GenerationConfig(do_sample=True, temperature=temperature))
    with torch.no_grad(), eval_mode(model), seeded(seed, device):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=pad_id, eos_token_id=eos_ids or None, use_cache=True, **sampling)
    rows, texts = [], []
    for prompt, new in zip(prompts, out[:, ids.shape[1]:].tolist()):
        chosen, answer = _completion(new, eos_ids)
        rows.append({"input_ids": prompt + chosen, "labels": [IGNORE_INDEX] * len(prompt) + chosen})
        texts.append(tokenizer.decode(answer, skip_special_tokens=True))
    return Rollout(rows, texts)


def judge_rewards(judge, examples: Sequence[Example], texts: Sequence[str],
                  collapse_penalty: float) -> tuple[torch.Tensor, list[Verdict]]:
    """(reward per completion, the judge's verdicts): harmfulness, or -penalty when collapsed."""
    samples = [JudgeSample(e.prompt, t, e.response or None, dict(e.meta)) for e, t in zip(examples, texts)]
    verdicts = judge.judge(samples)
    rewards = [-collapse_penalty if v.outcome == COLLAPSED else v.harmful for v in verdicts]
    return torch.tensor(rewards, dtype=torch.float32), verdicts


class JudgeReward:
    """The attacker's reward: the evaluation's judge (harmfulness, -penalty when collapsed), with
    the outcome rates as metrics. A reward sees the completions' text and the policy's detached
    logits over the sampled sequences (TokenBuncher's entropy reward reads those instead)."""

    def __init__(self, judge, collapse_penalty: float) -> None:
        self.judge, self.collapse_penalty = judge, collapse_penalty

    def __call__(self, examples: Sequence[Example], texts: Sequence[str], logits: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rewards, verdicts = judge_rewards(self.judge, examples, texts, self.collapse_penalty)

        def rate(outcome: str) -> torch.Tensor:
            return torch.tensor(sum(v.outcome == outcome for v in verdicts) / len(verdicts))

        return rewards, {"harmful": torch.tensor(sum(v.harmful for v in verdicts) / len(verdicts)),
                         "refused": rate(REFUSED), "collapsed": rate(COLLAPSED)}


class Reference(OriginalModel):
    """pi_ref, the model as the attack found it (frozen copy, or adapters off under LoRA)."""

    def logprobs(self, policy, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        return label_logprobs(self.logits(policy, batch), batch["labels"], temperature)[0]


# ------------------------------------------------------------------------------- step function

@dataclass
class ScoredRollout:
    """One micro-batch's sampled completions with everything a policy update needs."""

    seqs: dict[str, torch.Tensor]  # prompt + completion rows (completion labelled), on the device
    logits: torch.Tensor  # the policy's logits over seqs (with autograd graph)
    logp: torch.Tensor  # log pi of each sampled token at the sampling temperature, (completions, positions)
    mask: torch.Tensor  # completion positions
    rewards: torch.Tensor
    advantages: torch.Tensor
    metrics: dict[str, torch.Tensor]
    seed: int  # the rollouts' seed: anything else random in this step derives from it (resumable)


class GRPOStep:
    """The engine step: rollouts for this micro-batch's prompts, rewards, one GRPO backward."""

    def __init__(self, cfg: GRPOAttackConfig, prompts: list[Example], tokenizer, reward, reference: Reference | None) -> None:
        self.cfg, self.prompts, self.tokenizer, self.reward, self.reference = cfg, prompts, tokenizer, reward, reference
        self.collate = PaddingCollator.for_tokenizer(tokenizer)
        self._step, self._micro = -1, 0

    def rollout_seed(self, ctx: StepContext) -> int:
        """A seed fixed by (seed, step, micro-batch, process): a resumed run samples the same completions."""
        if ctx.step != self._step:
            self._step, self._micro = ctx.step, 0
        self._micro += 1
        index = (ctx.step * ctx.grad_accum + self._micro - 1) * ctx.accelerator.num_processes + ctx.accelerator.process_index
        return (self.cfg.seed * 1_000_003 + index) % 2**63

    def scored_rollout(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> ScoredRollout:
        """Sample group_size completions per prompt, run the policy over them, reward them."""
        cfg = self.cfg
        policy = ctx.accelerator.unwrap_model(ctx.model)
        examples = [self.prompts[i] for i in batch["prompt"].tolist() for _ in range(cfg.group_size)]
        seed = self.rollout_seed(ctx)
        rollout = sample_completions(policy, self.tokenizer, examples, cfg.max_new_tokens, cfg.temperature, seed)
        device = batch["prompt"].device
        seqs = {k: v.to(device) for k, v in self.collate(rollout.rows).items()}
        logits = ctx.model(input_ids=seqs["input_ids"], attention_mask=seqs["attention_mask"]).logits
        logp, mask = label_logprobs(logits, seqs["labels"], cfg.temperature)
        rewards, metrics = self.reward(examples, rollout.texts, logits.detach(), mask)
        advantages = group_advantages(rewards, cfg.group_size, cfg.advantage_eps).to(device)
        metrics = {"reward": rewards.mean(), **metrics, "completion_tokens": mask.sum(dim=1).float().mean()}
        return ScoredRollout(seqs, logits, logp, mask, rewards, advantages, metrics, seed)

    def policy_loss(self, ctx: StepContext, scored: ScoredRollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The GRPO objective on a scored rollout (and the KL metric when there is a reference)."""
        cfg, policy = self.cfg, ctx.accelerator.unwrap_model(ctx.model)
        ref_logp = self.reference.logprobs(policy, scored.seqs, cfg.temperature) if self.reference is not None else None
        loss = grpo_loss(scored.logp, scored.logp.detach(), scored.advantages, scored.mask, cfg.clip_eps, cfg.beta, ref_logp)
        extra = {"kl": sequence_mean(k3_kl(scored.logp.detach(), ref_logp), scored.mask).mean()} if ref_logp is not None else {}
        return loss, extra

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scored = self.scored_rollout(ctx, batch)
        loss, extra = self.policy_loss(ctx, scored)
        ctx.backward(loss)
        return {"loss": loss.detach(), **scored.metrics, **extra}


def prompt_batch(rows: list[int]) -> dict[str, torch.Tensor]:
    """The engine draws prompt indices; the step function samples their completions."""
    return {"prompt": torch.tensor(rows, dtype=torch.long)}


@register_attack("harmful_rl", GRPOAttackConfig, paper=DEEPSEEKMATH, family="rl", budget_unit="steps")
def harmful_rl(run: AttackRun, cfg: GRPOAttackConfig) -> AttackResult:
    """GRPO on the task's harmful prompts with the evaluation's judge as reward, scored at ``run.eval_at``."""
    if run.judge is None:
        raise ImmuneLMError("attack harmful_rl needs a judge for its rewards (AttackRun.judge); run it in an evaluation")
    if not run.data.harmful:
        raise ImmuneLMError("attack harmful_rl needs harmful prompts but the task's harmful pool is empty")
    reference = Reference(run.model, lora=cfg.train.lora is not None) if cfg.beta > 0 else None
    step = GRPOStep(cfg, list(run.data.harmful), run.tokenizer, JudgeReward(run.judge, cfg.collapse_penalty), reference)
    result = train(cfg.train.model_copy(update={"eval_at": run.eval_at}), run.model, list(range(len(run.data.harmful))),
                   prompt_batch, step_fn=step, evaluate=run.score, description=run.description)
    return AttackResult(result.evaluations, result.seconds, _info(cfg, result.history, result.steps), model=result.model)


def _info(cfg: GRPOAttackConfig, history: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Mean reward (and outcome rates) per logged step, and the sample budget spent."""
    keys = ("reward", "harmful", "refused", "collapsed", "kl")
    curve = [{"step": int(row["step"]), **{k: row[k] for k in keys if k in row}} for row in history]
    prompts = steps * cfg.train.batch_size * cfg.train.grad_accum
    return {"reward_curve": curve, "prompts": prompts, "completions": prompts * cfg.group_size}
