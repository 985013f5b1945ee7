"""Refusal-direction ablation and weight orthogonalisation (Arditi et al. 2024, "Refusal in
Language Models Is Mediated by a Single Direction", https://arxiv.org/abs/2406.11717).

With r_hat the unit refusal direction (:mod:`immunelm.attacks.directions`):

* ``refusal_ablation`` (inference-time, paper section 2.4): every activation written into the
  residual stream loses its r_hat component, at every layer and every token position,

      x <- x - r_hat r_hat^T x,

  applied by hooks to the input of every block, the output of every attention and MLP module
  and the last block's output (so no block, nor the final norm, ever reads a component along
  r_hat, also during KV-cached generation). The hooks live on the attack's copy of the model
  and are removed afterwards.
* ``refusal_orthogonalise`` (weight edit, paper section 4.1): the same ablation folded into the
  weights of every matrix that writes into the residual stream (token and position embeddings,
  attention output projections, MLP down projections, and their biases),

      W_out <- W_out - r_hat r_hat^T W_out,

  so the edited model needs no hooks and can be saved as is. A tied unembedding is untied first
  (it reads the stream; editing it would change what the hooks leave alone). After the edit the
  residual stream is checked to carry no component along r_hat; a family whose blocks add
  normalised outputs (Gemma 2's post-norms) cannot be edited this way and is refused in one line.

The curve has two points: 0 = the intact model, 1 = the direction removed.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.directions import (
    ARDITI_2024, Candidate, DirectionConfig, check_eval_points, eval_mode, find_direction, left_padded, pad_id,
    prompt_rows, score_grid,
)
from immunelm.errors import ImmuneLMError
from immunelm.models import ModelAdapter, find_linears
from immunelm.models.hooks import HookPoint

#: The most of |x . r_hat| / |x| the edited residual stream may keep (rounding only).
EDIT_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
HALF_TOLERANCE = 1e-2


class RefusalDirectionConfig(DirectionConfig):
    """Settings of both refusal-direction attacks (the direction search; the grid is fixed)."""

    def points(self) -> list[float]:
        """0 = the intact model, 1 = the direction removed."""
        return [0.0, 1.0]


# ----------------------------------------------------------------------------- ablation
def project_out(direction: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """x - r_hat (r_hat . x) for every position of ``hidden`` (r_hat a unit vector)."""
    r = direction.to(dtype=hidden.dtype, device=hidden.device)
    return hidden - (hidden @ r).unsqueeze(-1) * r


def ablation_points(num_layers: int) -> list[HookPoint]:
    """Every place an activation enters or is written into the residual stream."""
    points = [HookPoint(l, kind) for l in range(num_layers) for kind in ("resid_pre", "attn_out", "mlp_out")]
    return points + [HookPoint(num_layers - 1, "resid_post")]


def ablation_hooks(adapter: ModelAdapter, unit: torch.Tensor) -> list[tuple[HookPoint, object]]:
    fn = partial(project_out, unit.detach())
    return [(point, fn) for point in ablation_points(adapter.num_layers)]


def ablated(adapter: ModelAdapter, cand: Candidate):
    """The ablation of ``cand``'s direction as a context manager (the selection's intervention)."""
    return adapter.hooked(ablation_hooks(adapter, cand.unit))


@register_attack("refusal_ablation", RefusalDirectionConfig, paper=ARDITI_2024, family="inference-time",
                 budget_unit="ablation")
def refusal_ablation(run: AttackRun, cfg: RefusalDirectionConfig) -> AttackResult:
    started = time.perf_counter()
    selection = find_direction(run, cfg, ablated)
    adapter = ModelAdapter(run.model)
    evaluations = score_grid(run, cfg.points(), lambda _: ablated(adapter, selection.chosen))
    return AttackResult(evaluations, time.perf_counter() - started, selection.info())


# ----------------------------------------------------------------------------- weight edit
def residual_embeddings(adapter: ModelAdapter) -> list[nn.Embedding]:
    """Embeddings added into the residual stream (token, and GPT-2's learned positions)."""
    blocks = adapter.layout.blocks + "."
    return [m for name, m in adapter.hf_model.named_modules()
            if isinstance(m, nn.Embedding) and m.embedding_dim == adapter.hidden_size and not name.startswith(blocks)]


@torch.no_grad()
def output_projections(adapter: ModelAdapter) -> list[nn.Module]:
    """The linear layer whose output IS each attention and MLP module's output (o_proj,
    down_proj, c_proj, dense, dense_4h_to_h...), found by one probe forward pass: declaration
    order differs between families (Phi-3 declares o_proj before qkv_proj)."""
    modules = [(f"blocks.{i}.{part}", get(i)) for i in range(adapter.num_layers)
               for part, get in (("attn", adapter.attention), ("mlp", adapter.mlp))]
    outputs: dict[int, torch.Tensor] = {}
    handles = [lin.register_forward_hook(lambda m, args, out: outputs.__setitem__(id(m), out))
               for _, module in modules for lin in find_linears(module, "").values()]
    probe = torch.arange(1, 5, device=adapter.embedding.weight.device).unsqueeze(0) % adapter.embedding.num_embeddings
    try:  # eval mode: dropout after the projection (GPT-2) must not hide the match
        with eval_mode(adapter.model), adapter.read_outputs([name for name, _ in modules], detach=True) as written:
            adapter.model(input_ids=probe)
    finally:
        for handle in handles:
            handle.remove()
    found = []
    for name, module in modules:
        match = [lin for lin in find_linears(module, "").values()
                 if outputs[id(lin)].shape == written[name].shape and torch.equal(outputs[id(lin)], written[name])]
        if not match:
            raise ImmuneLMError(f"{name}: no linear layer writes this module's output directly; "
                                f"cannot orthogonalise a {adapter.family} model (use refusal_ablation)")
        found.append(match[0])
    return found


def residual_writers(adapter: ModelAdapter) -> list[nn.Module]:
    """Every module whose weights write into the residual stream."""
    return residual_embeddings(adapter) + output_projections(adapter)


@torch.no_grad()
def _orthogonalise_module(module: nn.Module, r: torch.Tensor) -> None:
    """Remove r from everything ``module`` writes. The rows of an embedding and of GPT-2's
    Conv1D ([in, out]) weight are vectors in the stream: W <- W - (W r) r^T; nn.Linear's
    [out, in] weight: W <- W - r (r^T W); a bias: b <- b - (b . r) r."""
    weight = module.weight
    w, rr = weight.float(), r.to(weight.device)
    if isinstance(module, (nn.Embedding, Conv1D)):
        weight.copy_(w - torch.outer(w @ rr, rr))
    else:
        weight.copy_(w - torch.outer(rr, rr @ w))
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias.copy_(bias.float() - (bias.float() @ rr) * rr)


def untie_unembedding(adapter: ModelAdapter) -> bool:
    """Give a tied lm_head its own copy of the embedding (it reads the stream, so the edit
    must not reach it); True if it was tied."""
    head, embedding = adapter.unembedding, adapter.embedding
    if head.weight is not embedding.weight and head.weight.data_ptr() != embedding.weight.data_ptr():
        return False
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    adapter.hf_model.config.tie_word_embeddings = False
    return True


def orthogonalise(model: nn.Module, unit: torch.Tensor) -> dict:
    """Edit ``model`` in place so nothing it writes into the residual stream has a component
    along ``unit``; returns what was edited."""
    adapter = ModelAdapter(model)
    untied = untie_unembedding(adapter)
    writers = residual_writers(adapter)
    r = unit.detach().float()
    for module in writers:
        _orthogonalise_module(module, r)
    return {"matrices": len(writers), "untied_unembedding": untied}


@torch.no_grad()
def residual_projection(model: nn.Module, rows: Iterable[list[int]], unit: torch.Tensor, pad: int) -> float:
    """max over real tokens of |x . r_hat| / |x| for the residual stream entering every block
    and leaving the last one."""
    adapter = ModelAdapter(model)
    rows = list(rows)
    inputs = left_padded(rows, pad, next(model.parameters()).device)
    points = [HookPoint(l, "resid_pre").name for l in range(adapter.num_layers)]
    points.append(HookPoint(adapter.num_layers - 1, "resid_post").name)
    with adapter.read_outputs(points, detach=True) as acts:
        model(**inputs)
    real = inputs["attention_mask"].bool()
    r = unit.float().to(real.device)
    worst = 0.0
    for hidden in acts.values():
        x = hidden.float()[real]
        worst = max(worst, float(((x @ r).abs() / x.norm(dim=-1).clamp(min=1e-12)).max()))
    return worst


def _check_edit(model: nn.Module, rows: list[list[int]], unit: torch.Tensor, pad: int) -> float:
    left = residual_projection(model, rows, unit, pad)
    tolerance = EDIT_TOLERANCE.get(next(model.parameters()).dtype, HALF_TOLERANCE)
    if left > tolerance:
        family = ModelAdapter(model).family
        raise ImmuneLMError(f"refusal_orthogonalise: after the edit the residual stream of this {family} model "
                            f"keeps {left:.3g} of the direction (tolerance {tolerance}); its blocks write through "
                            "modules the edit does not reach (e.g. post-norms); use refusal_ablation instead")
    return left


def _merged(model: nn.Module) -> nn.Module:
    """A peft model's adapters folded into its weights, so the edit covers them too."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


@register_attack("refusal_orthogonalise", RefusalDirectionConfig, paper=ARDITI_2024, family="weight-edit",
                 budget_unit="edit")
def refusal_orthogonalise(run: AttackRun, cfg: RefusalDirectionConfig) -> AttackResult:
    started = time.perf_counter()
    run.model = _merged(run.model)
    selection = find_direction(run, cfg, ablated)  # the hooks and the edit are the same map
    check_eval_points(run.eval_at, len(cfg.points()))
    evaluations = [run.score(run.model, 0)] if 0 in run.eval_at else []  # before the edit: the intact model
    info = {**selection.info(), **orthogonalise(run.model, selection.chosen.unit)}
    with eval_mode(run.model):
        rows = prompt_rows(run.tokenizer, run.data.harmful[:cfg.batch_size])
        info["residual_projection_after"] = _check_edit(run.model, rows, selection.chosen.unit, pad_id(run.tokenizer))
    evaluations += [run.score(run.model, point) for point in run.eval_at if point > 0]
    return AttackResult(evaluations, time.perf_counter() - started, info, model=run.model)
