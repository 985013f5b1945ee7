"""AntiDote: bi-level adversarial training against a LoRA-emitting hypernetwork (Sanyal et al. 2025,
https://arxiv.org/abs/2509.08000).

An adversary H_phi (:mod:`.hypernetwork`) reads the model's activations and patches every target
linear map with LoRA factors; it is trained to make the patched model prefer the harmful answer.
The defender is trained so that, even patched, the model prefers the safe answer, while the
*clean* model keeps its capability:

    adversary:  min_phi   -log sigmoid(log pi_patched(y_h|x) - log pi_patched(y_s|x))
    defender:   min_theta -log sigmoid(log pi_patched(y_s|x) - log pi_patched(y_h|x))
                          + ce_weight * CE_clean(benign) + kl_weight * KL(pi_theta || pi_base)(benign)

(the paper's L_safe and decoupled capability loss, lambda 0.8, beta 0.3; log pi sums the answer's
tokens; KL over the benign answers' token distributions, pi_base the model before the defence).

Decisions (issue 12): the paper alternates k adversary steps and k defender steps (code: k = 2000);
here each engine (defender) step is preceded by ``adversary_steps`` updates of phi on the same
pairs, the same 1:1 ratio with a short period. The defender treats the adversary's factors as fixed
(detached), first-order like the other bi-level defences. The official code's swapped preference
pair and its no-grad adversary pass (see docs/defences.md) are not copied; the paper's equations
are. The hypernetwork is saved as the run's ``artifacts/antidote_hypernetwork.safetensors``.
Pairs: each defender harmful pair (x, y_h) with the refusal of the same prompt as y_s.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from immunelm.config import Config, Seed
from immunelm.data import PaddingCollator, encode_example
from immunelm.defences.base import DefenceData, register_defence, trained
from immunelm.defences.hypernetwork import LoRAHypernetwork, patched, recorded_inputs, target_shapes
from immunelm.models.reference import OriginalModel
from immunelm.defences.unlearning import sequence_logprob
from immunelm.engine import StepContext, TrainConfig, mean_token_kl, response_token_loss, train
from immunelm.engine.sampling import BatchOrder
from immunelm.errors import ImmuneLMError
from immunelm.models import ModelAdapter
from immunelm.models.depth import LayerChoice, resolve_layer

ANTIDOTE_PAPER = "https://arxiv.org/abs/2509.08000"


class AntiDoteConfig(Config):
    rank: int = Field(8, ge=1, le=1024, description="Rank of the LoRA factors the hypernetwork emits (official 8).")
    width: int = Field(64, ge=4, le=8192, description="Hypernetwork width (official 1024).")
    layers: Optional[list[LayerChoice]] = Field(None, description="Blocks whose linear maps are patched (None = all, official).")
    adversary_lr: float = Field(2e-4, gt=0, description="Adam lr of the hypernetwork (paper 2e-4; official code 2e-7).")
    adversary_steps: int = Field(1, ge=0, le=1000, description="Hypernetwork updates before each defender step.")
    ce_weight: float = Field(0.8, ge=0, description="lambda: weight of the clean model's benign CE (paper 0.8).")
    kl_weight: float = Field(0.3, ge=0, description="beta: weight of KL(pi_theta || pi_base) on benign answers (paper 0.3).")
    pair_batch_size: int = Field(8, ge=1, description="(prompt, harmful, safe) triples per step.")
    seed: Seed = Field(0, description="Seeds the hypernetwork and the pair order.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, batch_size=16, max_steps=200, log_every=10),
        description="Engine (defender) settings; its batches are the benign pairs (official: LoRA r16, lr 3e-5).")


def preference_loss(preferred: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(log pi(preferred) - log pi(other))."""
    return -F.logsigmoid(preferred - other).mean()


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(softmax(logits) || softmax(ref_logits))."""
    return mean_token_kl(logits[:, :-1], ref_logits[:, :-1], labels[:, 1:] != -100)


def preference_pairs(tokenizer, data: DefenceData) -> list[tuple[dict, dict]]:
    refusals = {e.prompt: e.response for e in data.refusals}
    default = data.refusals[0].response
    return [(encode_example(tokenizer, e), encode_example(tokenizer, e.with_response(refusals.get(e.prompt, default))))
            for e in data.harmful]


class AntiDoteStep:
    def __init__(self, cfg: AntiDoteConfig, pairs: list[tuple[dict, dict]], collate, reference: OriginalModel) -> None:
        self.cfg, self.pairs, self.collate, self.reference = cfg, pairs, collate, reference
        self.order = BatchOrder(len(pairs), cfg.pair_batch_size, cfg.seed).batches()
        self.targets: dict | None = None
        self.hypernetwork: LoRAHypernetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, model) -> None:
        adapter = ModelAdapter(model)
        layers = ([resolve_layer(l, adapter.num_layers) for l in self.cfg.layers] if self.cfg.layers is not None
                  else range(adapter.num_layers))
        self.targets = {f"{i}.{name}": m for i in layers for name, m in adapter.linear_layers(i).items()}
        device = adapter.embedding.weight.device
        self.hypernetwork = LoRAHypernetwork(target_shapes(self.targets), self.cfg.rank, self.cfg.width, self.cfg.seed).to(device)
        self.optimizer = torch.optim.Adam(self.hypernetwork.parameters(), lr=self.cfg.adversary_lr)

    def factors(self, model, batch: dict[str, torch.Tensor]) -> dict:
        """The hypernetwork's LoRA factors for every target, from the clean model's activations on ``batch``."""
        with torch.no_grad(), recorded_inputs(self.targets) as seen:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return {name: self.hypernetwork.factors(name, seen[name], batch["attention_mask"]) for name in self.targets}

    def patched_logprobs(self, model, factors: dict, harmful: dict, safe: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with patched(self.targets, factors):
            lh = sequence_logprob(model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"]).logits, harmful["labels"])
            ls = sequence_logprob(model(input_ids=safe["input_ids"], attention_mask=safe["attention_mask"]).logits, safe["labels"])
        return lh, ls

    def adversary_update(self, ctx: StepContext, model, harmful: dict, safe: dict) -> float:
        params = list(self.hypernetwork.parameters())
        lh, ls = self.patched_logprobs(ctx.model, self.factors(model, harmful), harmful, safe)
        loss = preference_loss(lh, ls)
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = ctx.accelerator.reduce(g, "mean") if ctx.accelerator.num_processes > 1 else g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def __call__(self, ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = ctx.accelerator.unwrap_model(ctx.model)
        if self.targets is None:
            self.setup(model)
        device = batch["input_ids"].device
        indices = next(self.order)
        harmful = {k: v.to(device) for k, v in self.collate([self.pairs[i][0] for i in indices]).items()}
        safe = {k: v.to(device) for k, v in self.collate([self.pairs[i][1] for i in indices]).items()}
        adversary = [self.adversary_update(ctx, model, harmful, safe) for _ in range(self.cfg.adversary_steps)]
        factors = {k: (u.detach(), v.detach()) for k, (u, v) in self.factors(model, harmful).items()}
        lh, ls = self.patched_logprobs(ctx.model, factors, harmful, safe)
        safety = preference_loss(ls, lh)
        logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = response_token_loss(logits, batch["labels"])
        kl = token_kl(logits, self.reference.logits(model, batch), batch["labels"])
        loss = safety + self.cfg.ce_weight * ce + self.cfg.kl_weight * kl
        ctx.backward(loss)
        metrics = {"loss": loss.detach(), "safety": safety.detach(), "capability_ce": ce.detach(), "kl": kl.detach(),
                   "patched_margin": (ls - lh).detach().mean()}
        if adversary:
            metrics["adversary_loss"] = torch.tensor(adversary[-1])
        return metrics


@register_defence("antidote", AntiDoteConfig, paper=ANTIDOTE_PAPER)
def antidote(model, tokenizer, data: DefenceData, cfg: AntiDoteConfig):
    if not data.harmful or not data.benign:
        raise ImmuneLMError("defence 'antidote' needs harmful pairs (the adversary's target) and benign pairs (capability); "
                            "data.harmful or data.benign is empty")
    collate = PaddingCollator.for_tokenizer(tokenizer)
    step = AntiDoteStep(cfg, preference_pairs(tokenizer, data), collate, OriginalModel(model, lora=cfg.train.lora is not None))
    benign = [encode_example(tokenizer, e) for e in data.benign]
    result = train(cfg.train, model, benign, collate, step_fn=step, description="antidote")
    artifacts = {"antidote_hypernetwork": step.hypernetwork.state_dict()} if step.hypernetwork is not None else {}
    return trained(result, artifacts=artifacts, targets=len(step.targets or {}), hypernetwork_parameters=sum(
        p.numel() for p in step.hypernetwork.parameters()) if step.hypernetwork is not None else 0)
