"""ModelAdapter over every supported family: structure, linear layers, hook points, peft.

One parametrised table (in the style of peft's test_custom_models.py): each family gets a tiny
random model, and every check runs on each of them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from immunelm.errors import ImmuneLMError
from immunelm.models import (
    KNOWN_LAYOUTS,
    LINEAR_TYPES,
    TINY_FAMILIES,
    ModelAdapter,
    discover_layout,
    linear_io,
    tiny_model,
)
from immunelm.models.layout import resolve_layout

HIDDEN = 32
INPUT_IDS = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 13, 14]])
# Not a constant vector: LayerNorm (gpt2, gpt_neox) subtracts the mean, so adding torch.ones
# to the residual is exactly invisible to every later layer.
STEER = torch.linspace(-1.0, 1.0, HIDDEN)



@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return tiny_model(family, hidden=HIDDEN, layers=3)


@pytest.fixture(scope="module")
def adapter(model) -> ModelAdapter:
    return ModelAdapter(model)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def logits(model, **kwargs) -> torch.Tensor:
    return model(INPUT_IDS, **kwargs).logits


# ------------------------------------------------------------------ structure
def test_structure(family, model, adapter):
    assert adapter.family == family
    assert adapter.num_layers == model.config.num_hidden_layers == 3
    assert adapter.hidden_size == HIDDEN
    listed = model.get_submodule(adapter.layout.blocks)
    assert all(a is b for a, b in zip(adapter.blocks, listed, strict=True))
    assert adapter.embedding is model.get_input_embeddings()
    assert adapter.unembedding is model.get_output_embeddings()
    assert "norm" in type(adapter.final_norm).__name__.lower()
    for i in range(adapter.num_layers):
        assert adapter.attention(i) in list(adapter.blocks[i].children())
        assert adapter.mlp(i) in list(adapter.blocks[i].children())


def test_structure_discovery_agrees_with_table(family, model):
    """The generic fallback finds the same modules as the hand-written table."""
    assert discover_layout(model) == KNOWN_LAYOUTS[family]
    assert resolve_layout(model, "some_future_family") == KNOWN_LAYOUTS[family]


def test_linear_layers(adapter):
    for i in range(adapter.num_layers):
        linears = adapter.linear_layers(i)
        attn = {n: m for n, m in linears.items() if n.startswith(adapter.layout.attention + ".")}
        mlp = {n: m for n, m in linears.items() if n.startswith(adapter.layout.mlp + ".")}
        assert len(attn) >= 2 and len(mlp) >= 2 and len(attn) + len(mlp) == len(linears)
        for module in linears.values():
            assert isinstance(module, LINEAR_TYPES)
            assert HIDDEN in linear_io(module)
        # the attention output projection and the MLP down projection write back to the residual
        assert any(linear_io(m)[1] == HIDDEN and linear_io(m)[0] != HIDDEN * 3 for m in attn.values())
        assert any(linear_io(m)[1] == HIDDEN for m in mlp.values())


# ------------------------------------------------------------------ reading
def test_read_residual_matches_output_hidden_states(adapter, model):
    """Block i's output is hidden_states[i + 1]; the last one is reported after the final norm."""
    with torch.no_grad(), adapter.read_residual() as resid:
        hidden_states = model(INPUT_IDS, output_hidden_states=True).hidden_states
    last = adapter.num_layers - 1
    assert sorted(resid) == list(range(adapter.num_layers))
    for i in range(last):
        assert resid[i].shape == (*INPUT_IDS.shape, HIDDEN)
        torch.testing.assert_close(resid[i], hidden_states[i + 1])
    torch.testing.assert_close(adapter.final_norm(resid[last]), hidden_states[last + 1])


def test_resid_pre_is_previous_resid_post(adapter, model):
    with torch.no_grad(), adapter.read_outputs([0, 1], "resid_pre") as pre, adapter.read_residual(0) as post:
        hidden_states = model(INPUT_IDS, output_hidden_states=True).hidden_states
    torch.testing.assert_close(pre[0], hidden_states[0])
    torch.testing.assert_close(pre[1], post[0])


@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_read_component_outputs(adapter, model, kind):
    name = f"blocks.1.hook_{kind}_out"
    with torch.no_grad(), adapter.read_outputs([1, -1], kind) as by_index, adapter.read_outputs(name) as by_name:
        model(INPUT_IDS)
    assert by_index[1].shape == (*INPUT_IDS.shape, HIDDEN)
    torch.testing.assert_close(by_index[1], by_name[name])
    assert -1 in by_index and not torch.equal(by_index[-1], by_index[1])


def test_recorded_tensors_keep_or_drop_the_graph(adapter, model):
    with adapter.read_residual(0) as kept, adapter.read_residual(0, detach=True) as detached:
        model(INPUT_IDS)
    assert kept[0].requires_grad and not detached[0].requires_grad
    kept[0].pow(2).mean().backward()
    assert adapter.embedding.weight.grad is not None
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ editing
def test_add_to_residual(adapter, model):
    base = logits(model)
    with adapter.add_to_residual({1: torch.zeros(HIDDEN)}):
        torch.testing.assert_close(logits(model), base)
    with adapter.add_to_residual({1: STEER}):
        assert not torch.allclose(logits(model), base, atol=1e-4)
    with adapter.add_to_residual({0: lambda hidden: STEER * hidden}):
        assert not torch.allclose(logits(model), base, atol=1e-4)
    torch.testing.assert_close(logits(model), base)


@pytest.mark.parametrize("point", ["blocks.0.attn", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"])
def test_add_to_named_points(adapter, model, point):
    base = logits(model)
    with adapter.add_to_outputs({point: STEER.view(1, 1, HIDDEN)}):
        assert not torch.allclose(logits(model), base, atol=1e-4)
    torch.testing.assert_close(logits(model), base)


def test_reading_inside_an_edit_sees_the_edit(adapter, model):
    delta = torch.full((HIDDEN,), 3.0)
    with torch.no_grad(), adapter.read_residual(0) as before:
        model(INPUT_IDS)
    with torch.no_grad(), adapter.add_to_residual({0: delta}), adapter.read_residual(0) as after:
        model(INPUT_IDS)
    torch.testing.assert_close(after[0], before[0] + delta)


def test_hooks_removed_after_context_and_on_exceptions(adapter, model):
    before = hook_count(model)
    with adapter.read_outputs(None, "attn"), adapter.add_to_residual({0: torch.zeros(HIDDEN)}):
        assert hook_count(model) == before + adapter.num_layers + 1
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.read_residual(), adapter.add_to_outputs({"blocks.0.mlp": torch.zeros(HIDDEN)}):
            raise RuntimeError("boom")
    assert hook_count(model) == before
    with pytest.raises(ImmuneLMError, match="does not match"):
        with adapter.add_to_residual({0: torch.zeros(HIDDEN + 1)}):
            model(INPUT_IDS)
    assert hook_count(model) == before


def test_hook_point_names(adapter):
    names = adapter.hook_points()
    assert len(names) == 4 * adapter.num_layers and "blocks.2.hook_resid_post" in names
    assert adapter.point("blocks.-1.mlp").name == f"blocks.{adapter.num_layers - 1}.hook_mlp_out"
    assert adapter.point(0, "block").name == "blocks.0.hook_resid_post"
    for bad in ("blocks.9.attn", "layers.0.attn", "blocks.0.hook_nope"):
        with pytest.raises(ImmuneLMError):
            adapter.point(bad)
    with pytest.raises(ImmuneLMError):
        adapter.attention(adapter.num_layers)


# ------------------------------------------------------------------ peft
def test_through_lora_wrapper(family):
    from peft import LoraConfig, get_peft_model

    plain = ModelAdapter(tiny_model(family, hidden=HIDDEN, layers=3))
    targets = sorted({name.rsplit(".", 1)[-1] for name in plain.linear_layers(0)})
    model = tiny_model(family, hidden=HIDDEN, layers=3)
    config = LoraConfig(r=2, target_modules=targets, init_lora_weights=False, fan_in_fan_out=family == "gpt2")
    peft_model = get_peft_model(model, config)
    adapter = ModelAdapter(peft_model)
    assert adapter.family == family and adapter.num_layers == 3
    assert adapter.hf_model is model and adapter.model is peft_model
    assert set(adapter.linear_layers(0)) == set(plain.linear_layers(0))
    assert all(isinstance(m, LINEAR_TYPES) for m in adapter.linear_layers(0).values())

    base = logits(peft_model)
    with torch.no_grad(), adapter.read_residual(0) as resid:
        hidden_states = peft_model(INPUT_IDS, output_hidden_states=True).hidden_states
    torch.testing.assert_close(resid[0], hidden_states[1])
    with adapter.add_to_residual({1: STEER}):
        assert not torch.allclose(logits(peft_model), base, atol=1e-4)
    torch.testing.assert_close(logits(peft_model), base)


# ------------------------------------------------------------------ unrecognised models
def test_unrecognised_structure_is_a_clear_error():
    class Toy(nn.Module):
        config = SimpleNamespace(model_type="toy")

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ImmuneLMError, match="toy.*supported families"):
        ModelAdapter(Toy())
    with pytest.raises(ImmuneLMError, match="no .config"):
        ModelAdapter(nn.Linear(2, 2))
