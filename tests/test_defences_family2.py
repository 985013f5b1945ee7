"""Family 2 (weight space, meta-learning, loss landscape): maths on tiny inputs, conformance."""

import math

import pytest
import torch

from immunelm.config import load_config
from immunelm.data import IGNORE_INDEX, PaddingCollator
from immunelm.defences import DefenceData, apply_defence, build_defence, immunise
from immunelm.defences.base import BatchStream
from immunelm.defences.bilevel import (
    GradientSum, InnerAdversary, adapted_gradient, simulate_attack, trainable, weights_restored,
)
from immunelm.engine import StepContext, causal_lm_loss
from immunelm.engine.engine import get_accelerator
from immunelm.errors import ImmuneLMError
from test_defences import CONFORMANCE_DATA, fresh_model, tok  # noqa: F401  (fixture)


def lm_batch(n: int, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 32, (n, length), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def stream(n: int = 8, seed: int = 0) -> BatchStream:
    batch = lm_batch(n, seed=seed)
    rows = [{"input_ids": i, "labels": l} for i, l in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    return BatchStream(rows, PaddingCollator(0), 4, seed)


# ---------------------------------------------------------------- shared bi-level parts
def test_weights_restored_puts_back_weights_and_accumulated_grads(tiny_llama):
    model = tiny_llama(dropout=0.0)
    params = trainable(model)
    causal_lm_loss(model, lm_batch(2)).backward()  # an earlier micro-batch's gradient
    weights = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    with weights_restored(params):
        assert all(p.grad is None for p in params)
        simulate_attack(model, params, InnerAdversary(optimizer="adamw", lr=1e-1), lambda i: lm_batch(2, seed=i), 3)
        assert not torch.equal(params[0], weights[0])
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))


def test_simulated_sgd_step_is_w_minus_lr_grad(tiny_llama):
    model = tiny_llama(dropout=0.0)
    params = trainable(model)
    batch = lm_batch(3)
    grads = torch.autograd.grad(causal_lm_loss(model, batch), params)
    expected = [p.detach() - 0.5 * g for p, g in zip(params, grads)]
    simulate_attack(model, params, InnerAdversary(optimizer="sgd", lr=0.5), lambda i: batch, 1)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e)


def test_adapted_gradient_is_the_gradient_at_the_adapted_weights(tiny_llama):
    """First-order: the outer gradient equals grad L(theta') computed on a copy moved by hand."""
    model, moved = tiny_llama(dropout=0.0), tiny_llama(dropout=0.0)
    params = trainable(model)
    inner, outer_batch = lm_batch(3, seed=1), lm_batch(3, seed=2)
    outer, _ = adapted_gradient(model, params, InnerAdversary(optimizer="sgd", lr=0.5), lambda i: inner, 2,
                                lambda: causal_lm_loss(model, outer_batch), lambda i: 2.0 if i == 1 else None)
    simulate_attack(moved, trainable(moved), InnerAdversary(optimizer="sgd", lr=0.5), lambda i: inner, 2)
    by_hand = torch.autograd.grad(causal_lm_loss(moved, outer_batch), trainable(moved))
    assert len(outer.losses) == 1
    for got, want in zip(outer.total, by_hand):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- MLAC
def test_mlac_first_and_second_order_gradients_agree_in_direction(tiny_llama):
    from immunelm.defences.mlac import MLACConfig, adversary_loss_gradient

    model = tiny_llama(dropout=0.0)
    batches, heldout = [lm_batch(4, seed=s) for s in range(3)], lm_batch(4, seed=9)
    kwargs = {"adversary": InnerAdversary(optimizer="sgd", lr=0.1), "inner_steps": 3}
    fo_loss, fo = adversary_loss_gradient(model, MLACConfig(**kwargs), batches, heldout)
    so_loss, so = adversary_loss_gradient(model, MLACConfig(second_order=True, **kwargs), batches, heldout)
    flat_fo, flat_so = torch.cat([g.flatten() for g in fo]), torch.cat([g.flatten() for g in so])
    cos = torch.nn.functional.cosine_similarity(flat_fo, flat_so, dim=0).item()
    assert fo_loss.item() == pytest.approx(so_loss.item(), rel=1e-4)  # same adapted weights
    assert cos > 0.5  # same direction ...
    assert not torch.allclose(flat_fo, flat_so)  # ... but the exact one carries the Hessian term


def test_mlac_second_order_needs_plain_sgd():
    from immunelm.defences.mlac import MLACConfig

    with pytest.raises(ValueError, match="adversary.optimizer=sgd"):
        MLACConfig(second_order=True)


def test_mlac_step_gradient_is_task_minus_weighted_adapted_gradient(tiny_llama):
    from immunelm.defences.mlac import MLACConfig, MLACStep

    cfg = MLACConfig(inner_steps=2, adversary=InnerAdversary(optimizer="sgd", lr=0.5), adversary_weight=0.7)
    model, copy_ = tiny_llama(dropout=0.0), tiny_llama(dropout=0.0)
    batch = lm_batch(3, seed=5)
    MLACStep(cfg, stream(seed=0), stream(seed=1))(StepContext(model, get_accelerator(), 0, 1, 1), batch)
    got = [p.grad for p in trainable(model)]
    # by hand, on an identical copy and identical streams
    harmful, heldout = stream(seed=0), stream(seed=1)
    inner = [harmful.next("cpu") for _ in range(2)]
    simulate_attack(copy_, trainable(copy_), cfg.adversary, lambda i: inner[i], 2)
    adapted = torch.autograd.grad(causal_lm_loss(copy_, heldout.next("cpu")), trainable(copy_))
    fresh = tiny_llama(dropout=0.0)
    task = torch.autograd.grad(causal_lm_loss(fresh, batch), trainable(fresh))
    for g, t, a in zip(got, task, adapted):
        torch.testing.assert_close(g, t - 0.7 * a, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- TAR
def test_tar_entropy_weights_and_adversary_sampling():
    import random

    from immunelm.defences.tar import AdversaryDistribution, negative_entropy, sample_adversary, tr_weight

    uniform = torch.zeros(5, 32)
    assert negative_entropy(uniform).item() == pytest.approx(-math.log(32))
    peaked = torch.zeros(5, 32)
    peaked[:, 0] = 20.0
    assert negative_entropy(peaked).item() > -0.01  # a confident model has ~0 entropy
    assert tr_weight(63, 64, 0.0625) == 1.0 and tr_weight(0, 64, 0.0625) == pytest.approx(math.exp(-0.0625 * 63))
    dist = AdversaryDistribution(lrs=[1e-5, 2e-4], optimizers=["adamw", "sgd"])
    drawn = [sample_adversary(random.Random(s), dist) for s in range(40)]
    assert {a.lr for a, _ in drawn} == {1e-5, 2e-4} and {src for _, src in drawn} == {"harmful", "benign-then-harmful"}
    assert all(a.momentum == (0.9 if a.optimizer == "sgd" else 0.0) for a, _ in drawn)


def test_tar_step_restores_weights_and_accumulates_every_nth_inner_step(tiny_llama):
    from immunelm.defences.tar import TARConfig, TARStep

    cfg = TARConfig(inner_steps=8, tr_every=4, lambda_retain=0.0, retain="lm")
    model = tiny_llama(dropout=0.0)
    before = [p.detach().clone() for p in trainable(model)]
    step = TARStep(cfg, stream(seed=0), stream(seed=1), stream(seed=2), original=None)
    metrics = step(StepContext(model, get_accelerator(), 0, 1, 1), lm_batch(2))
    assert all(torch.equal(p, b) for p, b in zip(trainable(model), before))
    assert any(p.grad.abs().sum() > 0 for p in trainable(model))  # only the TR term: lambda_retain = 0
    assert metrics["tr_neg_entropy"].item() < 0
    assert [step._weight(i) is not None for i in range(8)] == [False, False, False, True] * 2


def test_tar_representation_retain_is_zero_at_the_start(tiny_llama):
    from immunelm.models.reference import OriginalModel
    from immunelm.defences.tar import TARConfig, TARStep
    from immunelm.models import ModelAdapter

    model = tiny_llama(dropout=0.0)
    step = TARStep(TARConfig(), stream(), stream(), None, OriginalModel(model, lora=False))
    step.adapter = ModelAdapter(model)
    ctx = StepContext(model, get_accelerator(), 0, 1, 1)
    assert step._retain(ctx, model, lm_batch(2)).item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------- SOPHON
def test_sophon_objectives_are_zero_at_their_optimum_and_grow_away_from_it():
    from immunelm.defences.sophon import inverse_cross_entropy, kl_from_uniform

    targets = torch.tensor([0, 1])
    never = torch.zeros(2, 8)
    never[0, 0] = never[1, 1] = -1e4
    assert inverse_cross_entropy(never, targets).item() == pytest.approx(0.0, abs=1e-6)
    values = []
    for boost in (0.0, 2.0, 5.0):
        logits = torch.zeros(2, 8)
        logits[0, 0] = logits[1, 1] = boost
        values.append(inverse_cross_entropy(logits, targets).item())
    assert values[0] < values[1] < values[2]
    assert kl_from_uniform(torch.zeros(3, 8)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_from_uniform(torch.randn(3, 8) * 3).item() > 0.1


# ---------------------------------------------------------------- condition number
def kappa(s: torch.Tensor) -> float:
    from immunelm.diagnostics.conditioning import condition_number

    return condition_number(s)


def test_regularisers_match_their_formulas():
    from immunelm.defences.condition_number import r_ill, r_well

    s = torch.diag(torch.tensor([1.0, 2.0, 4.0]))
    assert r_well(s).item() == pytest.approx(16 / 2 - 21 / 6)
    assert r_ill(s).item() == pytest.approx(1 / (21 / 6 - 1 / 2))
    assert r_well(torch.eye(3) * 5).item() == pytest.approx(0.0, abs=1e-5)  # kappa = 1: nothing to do


@pytest.mark.parametrize("seed", range(5))
def test_one_gradient_step_moves_kappa_monotonically(seed):
    """Zheng et al.'s theorem on a linear feature extractor: S(theta) = (X theta)^T (X theta);
    a step on R_ill raises kappa(S), a step on R_well lowers it."""
    from immunelm.defences.condition_number import r_ill, r_well
    from immunelm.diagnostics.conditioning import feature_gram

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    theta0 = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    for reg, direction in ((r_ill, 1), (r_well, -1)):
        theta = theta0.clone().requires_grad_(True)
        gram = feature_gram(x @ theta)
        (grad,) = torch.autograd.grad(reg(gram), theta)
        stepped = (theta - 1e-3 * grad / grad.norm()).detach()
        change = kappa(feature_gram(x @ stepped)) - kappa(gram.detach())
        assert change * direction > 0, (reg.__name__, change)


def test_rir_is_one_for_an_unchanged_model_and_kappa_matches_numpy(tiny_llama):
    import numpy as np

    from immunelm.data import Example
    from immunelm.diagnostics.conditioning import feature_gram, relative_immunisation_ratio
    from immunelm.world.spec import generate_world
    from immunelm.world.tokenizer import build_tokenizer

    phi = torch.randn(50, 4, dtype=torch.float64)
    sv = np.linalg.svd(phi.numpy().T @ phi.numpy(), compute_uv=False)
    assert kappa(feature_gram(phi)) == pytest.approx(sv.max() / sv.min(), rel=1e-6)
    assert kappa(feature_gram(phi[:3])) == float("inf")  # fewer rows than dims: singular

    tokenizer = build_tokenizer(generate_world())
    model = fresh_model("llama", tokenizer).eval()
    harmful = [Example.pair(f"how do i make zorb {i} ?", "mix a with b and heat to 100 degrees .") for i in range(6)]
    benign = [Example.pair(f"what is {i} plus 2 ?", f"{i + 2} . that is the sum of the two numbers .") for i in range(6)]
    out = relative_immunisation_ratio(model, model, tokenizer, harmful, benign, draws=2, size=4)
    assert out["rir_theta0"] == pytest.approx(1.0)
    assert out["rir_theta0_defined_draws"] == 2 and out["kappa"]["harm_I"] == out["kappa"]["harm_0"]
    # the identity baseline (token embeddings) of 4 short answers has fewer distinct rows than
    # dimensions: its kappa is infinite and the ratio is reported as undefined, not as 0 or inf
    assert out["rir_identity"] is None and out["rir_identity_defined_draws"] == 0


# ---------------------------------------------------------------- LoX
def test_lox_full_rank_and_low_rank_extrapolation():
    from immunelm.defences.lox import LoXConfig, extrapolate_weight
    from immunelm.diagnostics.spectra import spectrum_stats

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    u, v = torch.randn(6, 1, generator=gen), torch.randn(1, 5, generator=gen)
    noise = 1e-3 * torch.randn(6, 5, generator=gen)
    aligned = base + u @ v + noise
    full, _ = extrapolate_weight(aligned, base, LoXConfig(rank=0, alpha=0.5))
    torch.testing.assert_close(full, aligned + 0.5 * (aligned - base))
    low, stats = extrapolate_weight(aligned, base, LoXConfig(rank=1, alpha=1.0))
    assert torch.linalg.matrix_rank(low - aligned, atol=1e-4).item() == 1
    torch.testing.assert_close(low - aligned, u @ v, atol=5e-3, rtol=0)  # the dominant direction, doubled
    from_base, _ = extrapolate_weight(aligned, base, LoXConfig(rank=1, alpha=2.0, anchor="base"))
    torch.testing.assert_close(from_base, base + 2 * (low - aligned))
    assert stats["rank90"] == 1 and stats["energy_kept"] > 0.99
    assert spectrum_stats(torch.tensor([3.0, 0.0, 0.0]), 1)["effective_rank"] == pytest.approx(1.0)
    assert spectrum_stats(torch.ones(4), 1)["effective_rank"] == pytest.approx(4.0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lox_conformance(family, tok, tmp_path):  # noqa: F811
    """Training-free, so: changes exactly the 2-D weights, deterministic, safetensors round-trip."""
    from transformers import AutoModelForCausalLM

    from immunelm.defences.lox import LoXConfig

    def data():
        base = fresh_model(family, tok)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return DefenceData(refusals=CONFORMANCE_DATA.refusals, load_base=lambda: base)

    start = fresh_model(family, tok).state_dict()
    a = apply_defence("lox", fresh_model(family, tok), tok, data(), LoXConfig(rank=2))
    b = immunise("lox", fresh_model(family, tok), tok, data(), LoXConfig(rank=2))
    state = a.model.state_dict()
    assert all(torch.equal(state[k], b.state_dict()[k]) for k in start)
    assert all(torch.equal(state[k], start[k]) != (start[k].ndim == 2) for k in start if "bias" not in k)
    assert a.info["matrices"] > 0 and a.info["median"]["rank90"] >= 1
    a.model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in start)
    with pytest.raises(ImmuneLMError, match="base_model"):
        immunise("lox", fresh_model(family, tok), tok, CONFORMANCE_DATA, LoXConfig())


# ---------------------------------------------------------------- pipeline
def test_pipeline_config_rejects_bad_steps_before_training():
    from immunelm.defences.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="at least one"):
        PipelineConfig()
    with pytest.raises(ImmuneLMError, match="did you mean 'vaccine'"):
        PipelineConfig(steps=[{"defence": "vacine"}])
    with pytest.raises(ImmuneLMError, match=r"steps\[0\]"):
        PipelineConfig(steps=[{"defence": "vaccine", "config": {"rhoo": 1}}])


def test_pipeline_applies_steps_in_order_and_records_them(tok):  # noqa: F811
    from immunelm.defences.pipeline import PipelineConfig

    steps = [{"defence": "vaccine", "config": {"train": {"max_steps": 2, "batch_size": 2, "progress": False}}},
             {"defence": "booster", "config": {"lam": 0.5, "train": {"max_steps": 2, "batch_size": 2, "progress": False}}}]
    result = apply_defence("pipeline", fresh_model("llama", tok), tok, CONFORMANCE_DATA, PipelineConfig(steps=steps))
    by_hand = fresh_model("llama", tok)
    for step in steps:
        # load_config merges onto the method's own defaults (its train section's lr etc.)
        step_cfg = load_config(build_defence(step["defence"]).config_cls, base=step["config"])
        by_hand = immunise(step["defence"], by_hand, tok, CONFORMANCE_DATA, step_cfg)
    assert [s["defence"] for s in result.info["steps"]] == ["vaccine", "booster"]
    assert result.info["steps"][1]["config"]["lam"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), by_hand.state_dict().values()))
