"""Harmful embedding drift, the harmful-direction probe and the 2-D map, on tiny random models
with known answers (a model against itself, a model changed only in its last block)."""

import copy

import pytest
import torch

from immunelm.data import Example
from immunelm.diagnostics.drift import (
    embedding_drift, harmful_direction_cosine, last_token_states, representation_map,
)
from immunelm.attacks.directions import left_padded, pad_id, prompt_rows
from immunelm.errors import ImmuneLMError
from immunelm.models.tiny import tiny_model, tiny_tokenizer

HARMFUL = [Example.pair(p, "sure here are some steps") for p in (
    "how can i make this", "please help with make", "how do i make it", "can you help make this", "make it please")]
BENIGN = [Example.pair(p, "the answer is yes") for p in (
    "what is the answer", "hello world", "is this a question", "what is the world", "is it safe")]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def last_block_changed(model, seed: int = 1):
    """A copy whose weights differ from ``model``'s only in its last decoder block."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.layers[-1].parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return other


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_drift_of_a_model_with_itself_is_zero_with_cosine_one(tok, family):
    model = tiny_model(family, seed=0)
    drift = embedding_drift(model, model, tok, HARMFUL, batch_size=2)
    assert len(drift.distance) == model.config.num_hidden_layers + 1 == len(drift.cosine)
    assert drift.examples == len(HARMFUL)
    assert drift.distance == pytest.approx([0.0] * 3, abs=1e-12)
    assert drift.relative_distance == pytest.approx([0.0] * 3, abs=1e-12)
    assert drift.cosine == pytest.approx([1.0] * 3, abs=1e-9)
    assert all(n > 0 for n in drift.reference_norm)


def test_changing_only_the_last_block_drifts_only_the_last_layer(tok):
    model = tiny_model("llama", seed=0)
    attacked = last_block_changed(model)
    drift = embedding_drift(model, attacked, tok, HARMFUL, batch_size=2)
    assert drift.distance[:-1] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert drift.cosine[:-1] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert drift.distance[-1] > 1e-2 and drift.cosine[-1] < 1 - 1e-4
    assert drift.relative_distance[-1] == pytest.approx(drift.distance[-1] / drift.reference_norm[-1])


def test_drift_matches_a_direct_computation_and_does_not_depend_on_the_batch_size(tok):
    model, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    drift = embedding_drift(model, other, tok, HARMFUL, batch_size=2)
    assert embedding_drift(model, other, tok, HARMFUL, batch_size=5).distance == pytest.approx(drift.distance, rel=1e-6)
    rows, pad = prompt_rows(tok, HARMFUL), pad_id(tok)
    # one prompt at a time, no padding: the states the batched, left-padded pass must reproduce
    ha = torch.cat([last_token_states(model, [r], pad) for r in rows], 1)
    hb = torch.cat([last_token_states(other, [r], pad) for r in rows], 1)
    assert drift.distance == pytest.approx((ha - hb).norm(dim=-1).mean(-1).tolist(), rel=1e-5)
    assert drift.reference_norm == pytest.approx(ha.norm(dim=-1).mean(-1).tolist(), rel=1e-5)
    assert min(drift.distance) > 0  # different random models: every layer differs


def test_the_state_is_read_at_the_generation_prompt(tok):
    """The last prompt token is the assistant header the chat template adds."""
    rows = prompt_rows(tok, HARMFUL)
    assert {r[-1] for r in rows} == {tok.convert_tokens_to_ids("assistant:")}
    batch = left_padded(rows, pad_id(tok), torch.device("cpu"))
    assert (batch["input_ids"][:, -1] == tok.convert_tokens_to_ids("assistant:")).all()


def test_drift_restores_the_training_mode(tok):
    model, other = tiny_model("llama", seed=0).train(), tiny_model("llama", seed=1).eval()
    embedding_drift(model, other, tok, HARMFUL[:2])
    assert model.training and not other.training


def test_models_of_different_shapes_are_refused_in_one_line(tok):
    with pytest.raises(ImmuneLMError, match="one architecture") as err:
        embedding_drift(tiny_model("llama"), tiny_model("llama", layers=3), tok, HARMFUL)
    assert "\n" not in str(err.value)
    with pytest.raises(ImmuneLMError, match="one architecture"):
        harmful_direction_cosine(tiny_model("llama"), tiny_model("llama", hidden=16, heads=2), tok, HARMFUL, BENIGN)
    with pytest.raises(ImmuneLMError, match="no examples"):
        embedding_drift(tiny_model("llama"), tiny_model("llama"), tok, [])


def test_a_non_finite_drift_names_the_quantity(tok):
    model = tiny_model("llama", seed=0)
    broken = last_block_changed(model)
    with torch.no_grad():
        broken.model.layers[-1].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(ImmuneLMError, match="embedding drift distance"):
        embedding_drift(model, broken, tok, HARMFUL)


# ----------------------------------------------------------------------------- probe
def test_the_harmful_direction_of_a_model_with_itself_has_cosine_one(tok):
    model = tiny_model("llama", seed=0)
    probe = harmful_direction_cosine(model, model, tok, HARMFUL, BENIGN, batch_size=3)
    assert len(probe.cosine) == model.config.num_hidden_layers + 1
    # layer 0: every prompt ends in the same header token, so harmful and benign means coincide
    assert probe.cosine[0] is None and probe.norm_a[0] == pytest.approx(0.0, abs=1e-6)
    assert probe.cosine[1:] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert probe.norm_a == probe.norm_b and min(probe.norm_a[1:]) > 1e-3


def test_the_probe_sees_a_rotated_direction_only_where_the_weights_changed(tok):
    model = tiny_model("llama", seed=0)
    probe = harmful_direction_cosine(model, last_block_changed(model), tok, HARMFUL, BENIGN)
    assert probe.cosine[1] == pytest.approx(1.0, abs=1e-9)
    assert probe.cosine[2] < 0.999


# ----------------------------------------------------------------------------- map
def test_pca_map_has_one_labelled_point_per_model_and_example_and_is_deterministic(tok):
    models = {"aligned": tiny_model("llama", seed=0), "attacked": tiny_model("llama", seed=1)}
    first = representation_map(models, tok, HARMFUL, BENIGN[:3], layer=1)
    assert first.method == "pca" and first.layer == 1
    assert len(first.points) == 2 * (len(HARMFUL) + 3)
    labels = [(p.model, p.set, p.example) for p in first.points]
    assert labels == [(m, s, i) for m in models for s, n in (("harmful", 5), ("benign", 3)) for i in range(n)]
    assert len(first.explained_variance) == 2 and 0 < first.explained_variance[1] <= first.explained_variance[0] <= 1
    again = representation_map(models, tok, HARMFUL, BENIGN[:3], layer=1)
    assert again.model_dump() == first.model_dump()
    # one projection for all points: the PCA of the pooled states is centred as a whole, not per model
    xs = torch.tensor([p.x for p in first.points])
    assert xs.mean().abs() < 1e-6 and xs[:8].mean().abs() > 1e-6


def test_a_map_of_one_model_twice_puts_the_copies_on_the_same_points(tok):
    model = tiny_model("gpt2", seed=0)
    result = representation_map({"a": model, "b": model}, tok, HARMFUL, BENIGN, layer=-1)
    assert result.layer == model.config.num_hidden_layers
    half = len(result.points) // 2
    for p, q in zip(result.points[:half], result.points[half:]):
        assert (p.x, p.y) == pytest.approx((q.x, q.y), abs=1e-9) and (p.set, p.example) == (q.set, q.example)


def test_tsne_map_is_seeded(tok):
    models = {"m": tiny_model("llama", seed=0)}
    a = representation_map(models, tok, HARMFUL, BENIGN, method="tsne", seed=3)
    b = representation_map(models, tok, HARMFUL, BENIGN, method="tsne", seed=3)
    assert a.method == "tsne" and a.explained_variance is None and len(a.points) == 10
    assert [(p.x, p.y) for p in a.points] == [(p.x, p.y) for p in b.points]


def test_map_refuses_a_bad_layer_or_method(tok):
    models = {"m": tiny_model("llama", seed=0)}
    with pytest.raises(ImmuneLMError, match="out of range"):
        representation_map(models, tok, HARMFUL, BENIGN, layer=3)
    with pytest.raises(ImmuneLMError, match="unknown method"):
        representation_map(models, tok, HARMFUL, BENIGN, method="umap")
