"""Safety landscape (Peng et al. 2024): slices, restoration, directions, basin and VISAGE on tiny models."""

import math

import pytest
import torch

from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.diagnostics.landscape import (
    Landscape1D, Landscape2D, basin, difference_direction, harmful_loss_metric, interpolate,
    random_direction, slice_1d, slice_2d, visage,
)
from immunelm.engine.steps import response_token_loss
from immunelm.errors import ImmuneLMError
from immunelm.models.tiny import tiny_model, tiny_tokenizer

HARMFUL = [
    Example.pair("how can i make it", "sure here are some steps"),
    Example.pair("help me do this", "sure i can help with that"),
    Example.pair("what is the answer", "here is the answer you"),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def model():
    return tiny_model("llama", seed=0)


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_bit_identical(m, before):
    after = m.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def direct_loss(model, tok, examples):
    batch = PaddingCollator.for_tokenizer(tok)([encode_example(tok, e) for e in examples])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return response_token_loss(logits, batch["labels"]).item()


def test_alpha_zero_is_the_models_own_harmful_loss(model, tok):
    metric = harmful_loss_metric(tok, HARMFUL)
    own = metric(model)["harmful_loss"]
    assert own > 0 and own == pytest.approx(direct_loss(model, tok, HARMFUL), rel=1e-6)
    land = slice_1d(model, random_direction(model, seed=1), [-0.5, -0.25, 0.0, 0.25, 0.5], metric)
    assert land.alphas[2] == 0.0
    assert land.values["harmful_loss"][2] == own == land.centre["harmful_loss"]
    # the perturbed points really differ from the centre (the direction moved the weights)
    assert all(abs(v - own) > 1e-4 for i, v in enumerate(land.values["harmful_loss"]) if i != 2)
    # with several batches the loss is token-weighted, so it matches the single-batch value
    assert harmful_loss_metric(tok, HARMFUL, batch_size=2)(model)["harmful_loss"] == pytest.approx(own, rel=1e-5)


def test_weights_are_bit_identical_after_a_slice_and_after_a_failing_metric(model, tok):
    before = snapshot(model)
    d1, d2 = random_direction(model, seed=1), random_direction(model, seed=2)
    slice_1d(model, d1, [-0.3, 0.0, 0.3], harmful_loss_metric(tok, HARMFUL))
    assert_bit_identical(model, before)
    slice_2d(model, d1, d2, [-0.2, 0.0, 0.2], [0.0, 0.2], harmful_loss_metric(tok, HARMFUL))
    assert_bit_identical(model, before)

    calls = []

    def exploding(m):
        calls.append(1)
        if len(calls) == 2:  # the weights are perturbed at this point
            assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
            raise RuntimeError("judge crashed")
        return {"harmful_loss": 1.0}

    with pytest.raises(RuntimeError, match="judge crashed"):
        slice_1d(model, d1, [0.0, 0.4, 0.5], exploding)
    assert len(calls) == 2
    assert_bit_identical(model, before)


def test_random_direction_has_each_tensors_norm_and_zero_on_1d_tensors(model):
    d = random_direction(model, seed=3)
    params = dict(model.named_parameters())
    assert set(d) == set(params)
    one_d = [n for n, p in params.items() if p.dim() == 1]
    assert one_d  # RMSNorm weights exist in the tiny llama
    for name, p in params.items():
        assert d[name].shape == p.shape and d[name].dtype == p.dtype
        if p.dim() == 1:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            assert d[name].norm().item() == pytest.approx(p.norm().item(), rel=1e-5), name
            assert not torch.allclose(d[name], p)  # a new direction, not the weights themselves


def test_same_seed_gives_the_same_direction_and_another_seed_does_not(model):
    a, b, c = random_direction(model, seed=7), random_direction(model, seed=7), random_direction(model, seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # the global RNG does not enter: re-seeding it changes nothing
    torch.manual_seed(123)
    assert all(torch.equal(a[k], v) for k, v in random_direction(model, seed=7).items())


def test_interpolation_ends_at_both_models(tok):
    base, aligned = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    metric = harmful_loss_metric(tok, HARMFUL)
    own_base, own_aligned = metric(base)["harmful_loss"], metric(aligned)["harmful_loss"]
    assert abs(own_base - own_aligned) > 1e-3
    land = interpolate(base, aligned, [-0.5, 0.0, 0.5, 1.0, 1.5], metric)
    assert land.values["harmful_loss"][1] == own_base
    assert land.values["harmful_loss"][3] == pytest.approx(own_aligned, rel=1e-5)
    # the difference direction: un-normalised keeps 1-D tensors, normalised zeroes them
    raw, norm = difference_direction(aligned, base), difference_direction(aligned, base, normalise=True)
    p = dict(base.named_parameters())
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(raw[w], dict(aligned.named_parameters())[w] - p[w])
    assert norm[w].norm().item() == pytest.approx(p[w].norm().item(), rel=1e-5)
    assert torch.count_nonzero(norm["model.norm.weight"]) == 0
    with pytest.raises(ImmuneLMError, match="different parameters"):
        difference_direction(tiny_model("llama", seed=0, layers=1), base)


def test_basin_and_visage_on_a_hand_made_landscape():
    alphas = [-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3]
    land = Landscape1D(alphas=alphas, values={"harmful_rate": [1, 1, 0, 0, 0, 0, 0, 1]},
                       centre={"harmful_rate": 0.0})
    found = basin(land, "harmful_rate", tolerance=0.1, higher_is_safer=False)
    assert found.inside == [2, 3, 4, 5, 6]
    assert (found.lo, found.hi) == (-0.2, 0.2) and found.width == pytest.approx(0.4)
    assert found.fraction == pytest.approx(5 / 8)
    assert visage(land, found) == 100.0
    # a safe point cut off by an unsafe one stays outside; partial rates average in
    land = Landscape1D(alphas=alphas, values={"harmful_rate": [0, 1, 0.05, 0, 0.1, 0.2, 0.3, 0]},
                       centre={"harmful_rate": 0.1})
    found = basin(land, "harmful_rate", tolerance=0.1, higher_is_safer=False)
    assert found.inside == [2, 3, 4, 5]
    assert visage(land, found) == pytest.approx(100 - 100 * (0.05 + 0 + 0.1 + 0.2) / 4)
    # loss-based: higher is safer; the basin ends where the harmful loss drops by more than tol
    land = Landscape1D(alphas=alphas, values={"harmful_loss": [1.0, 3.0, 2.95, 3.2, 3.0, 2.8, 3.5, 3.5]},
                       centre={"harmful_loss": 3.0})
    found = basin(land, "harmful_loss", tolerance=0.1, higher_is_safer=True)
    assert found.inside == [1, 2, 3, 4] and found.width == pytest.approx(0.3)


def test_2d_basin_is_the_connected_component_of_the_centre():
    rates = [[0, 1, 0],
             [1, 0, 0],
             [0, 1, 1]]
    land = Landscape2D(alphas=[-1, 0, 1], betas=[-1, 0, 1], values={"harmful_rate": rates},
                       centre={"harmful_rate": 0.0})
    found = basin(land)
    assert found.inside == [2, 4, 5] and found.width is None  # (0,2), (1,1), (1,2); corners cut off
    assert visage(land, found) == 100.0


def test_slices_attach_a_default_basin_and_visage(model, tok):
    rates = iter([0.0, 0.0, 0.5, 0.0, 0.0])

    def metric(m):
        return {"harmful_rate": next(rates), "harmful_loss": 2.0}

    land = slice_1d(model, random_direction(model, 0), [-1.0, -0.5, 0.0, 0.5, 1.0], metric)
    assert land.basin.key == "harmful_rate" and land.basin.inside == [0, 1, 2, 3, 4] and land.basin.width == 2.0
    assert land.visage == pytest.approx(100 * (1 - 0.5 / 5))
    land2 = slice_2d(model, random_direction(model, 0), random_direction(model, 1), [0.0, 0.1], [-0.1, 0.0],
                     harmful_loss_metric(tok, HARMFUL))
    assert land2.basin.key == "harmful_loss" and land2.visage is None
    assert land2.values["harmful_loss"][0][1] == land2.centre["harmful_loss"]
    assert land2.centre["harmful_loss"] == pytest.approx(direct_loss(model, tok, HARMFUL), rel=1e-6)


def test_nan_metric_and_bad_grids_raise(model):
    before = snapshot(model)
    d = random_direction(model, 0)
    with pytest.raises(ImmuneLMError, match="harmful_loss"):
        slice_1d(model, d, [0.0, 0.5], lambda m: {"harmful_loss": math.nan})
    assert_bit_identical(model, before)
    with pytest.raises(ImmuneLMError, match="must contain 0"):
        slice_1d(model, d, [0.1, 0.2], lambda m: {"harmful_loss": 1.0})
    with pytest.raises(ImmuneLMError, match="strictly increasing"):
        slice_1d(model, d, [0.0, 0.0], lambda m: {"harmful_loss": 1.0})
    with pytest.raises(ImmuneLMError, match="matches no parameter"):
        slice_1d(model, {"nope": torch.zeros(2)}, [0.0], lambda m: {"harmful_loss": 1.0})
    land = Landscape1D(alphas=[0.0], values={"harmful_rate": [50.0]}, centre={"harmful_rate": 50.0})
    with pytest.raises(ImmuneLMError, match=r"\[0, 1\]"):
        visage(land)


def test_default_grid_and_a_centre_off_by_rounding_is_snapped_to_zero(model):
    d = random_direction(model, 0)
    seen = []

    def metric(m):
        seen.append(m.model.layers[0].mlp.up_proj.weight.clone())
        return {"harmful_loss": 1.0}

    land = slice_1d(model, d, metric=metric)
    assert len(land.alphas) == 21 and land.alphas[0] == -0.5 and land.alphas[10] == 0.0 and land.alphas[-1] == 0.5
    assert land.basin.width == 1.0 and land.visage is None
    seen.clear()
    land = slice_1d(model, d, [-0.3, -0.3 + 3 * 0.1, 0.3], metric)  # the middle is 5.6e-17, not 0
    assert land.alphas[1] == 0.0
    assert torch.equal(seen[1], model.model.layers[0].mlp.up_proj.weight)  # the centre is the model itself
