"""One interface over Hugging Face causal LMs of any supported family, with or without peft.

Defences (representation-level losses, weight edits) and diagnostics (probes, steering) need
the decoder blocks, their attention/MLP projections and the residual stream. :class:`ModelAdapter`
finds those by structure (see :mod:`immunelm.models.layout`) and exposes hook points by name
(see :mod:`immunelm.models.hooks`), so that code above it never touches family-specific paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from immunelm.errors import ImmuneLMError
from immunelm.models.hooks import KINDS, HookPoint, add_delta, install, parse_point
from immunelm.models.layout import Layout, resolve_layout, unwrap_peft

#: Module types treated as linear projections. GPT-2's ``Conv1D`` is a linear layer with its
#: weight stored transposed (``[in, out]`` instead of ``[out, in]``); use :func:`linear_io`
#: rather than reading ``weight.shape`` directly.
LINEAR_TYPES = (nn.Linear, Conv1D)

PointKey = int | str
Edit = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def linear_io(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or GPT-2 ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise ImmuneLMError(f"{type(module).__name__} is not a linear layer")


def find_linears(module: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """Linear layers under ``module`` by qualified name (``"self_attn.q_proj"``).

    A peft tuner layer (e.g. ``lora.Linear``) is reported under its own name as its frozen
    ``base_layer``; the adapter's own ``lora_A``/``lora_B`` matrices are not projections of the
    model and are skipped.
    """
    found: dict[str, nn.Module] = {}
    tuner_prefixes: list[str] = []
    for name, sub in module.named_modules(prefix=prefix):
        if any(name.startswith(p + ".") for p in tuner_prefixes):
            continue
        base = getattr(sub, "base_layer", None)
        if isinstance(base, LINEAR_TYPES) and not isinstance(sub, LINEAR_TYPES):
            found[name] = base
            tuner_prefixes.append(name)
        elif isinstance(sub, LINEAR_TYPES):
            found[name] = sub
    return found


class ModelAdapter:
    """Family-independent view of a causal LM (optionally wrapped in a peft ``PeftModel``).

    ``model`` is what you passed (run forward passes through it, so adapters stay active);
    ``hf_model`` is the unwrapped Hugging Face model the modules were found on.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hf_model = unwrap_peft(model)
        config = getattr(self.hf_model, "config", None)
        if config is None:
            raise ImmuneLMError(f"{type(model).__name__} has no .config; expected a Hugging Face causal LM")
        self.family: str = getattr(config, "model_type", "") or type(self.hf_model).__name__
        self.layout: Layout = resolve_layout(self.hf_model, self.family)
        self.blocks: list[nn.Module] = list(self.hf_model.get_submodule(self.layout.blocks))
        self.final_norm: nn.Module = self.hf_model.get_submodule(self.layout.final_norm)
        self.embedding: nn.Module = self._required(self.hf_model.get_input_embeddings(), "input embedding")
        self.unembedding: nn.Module = self._required(
            self.hf_model.get_output_embeddings(), "output embedding (lm_head)"
        )
        self.hidden_size: int = int(getattr(config, "hidden_size", 0) or self.embedding.weight.shape[1])

    def _required(self, module: nn.Module | None, what: str) -> nn.Module:
        if module is None:
            raise ImmuneLMError(f"{type(self.hf_model).__name__} ({self.family}) has no {what}")
        return module

    def __repr__(self) -> str:
        return f"ModelAdapter(family={self.family!r}, num_layers={self.num_layers}, hidden_size={self.hidden_size})"

    # ----------------------------------------------------------------- structure
    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block(self, i: int) -> nn.Module:
        return self.blocks[self._layer(i)]

    def attention(self, i: int) -> nn.Module:
        return getattr(self.block(i), self.layout.attention)

    def mlp(self, i: int) -> nn.Module:
        return getattr(self.block(i), self.layout.mlp)

    def linear_layers(self, i: int) -> dict[str, nn.Module]:
        """Attention and MLP projections of block ``i`` by name relative to the block
        (``"self_attn.q_proj"``, ``"mlp.down_proj"``; ``"attn.c_attn"`` for GPT-2's Conv1D)."""
        return {
            **find_linears(self.attention(i), self.layout.attention),
            **find_linears(self.mlp(i), self.layout.mlp),
        }

    def _layer(self, i: int) -> int:
        if not -self.num_layers <= i < self.num_layers:
            raise ImmuneLMError(f"layer {i} out of range for {self.num_layers} blocks")
        return i % self.num_layers

    # ----------------------------------------------------------------- hook points
    def hook_points(self) -> list[str]:
        """Every hook point name, e.g. ``"blocks.0.hook_resid_post"``."""
        return [HookPoint(i, kind).name for i in range(self.num_layers) for kind in KINDS]

    def point(self, key: PointKey, kind: str = "resid_post") -> HookPoint:
        """Parse a layer index (with ``kind``) or a hook point name."""
        return parse_point(key, kind, self.num_layers)

    def _module_for(self, point: HookPoint) -> tuple[nn.Module, bool]:
        """(module to hook, whether the hook is on its input)."""
        if point.kind == "attn_out":
            return self.attention(point.layer), False
        if point.kind == "mlp_out":
            return self.mlp(point.layer), False
        return self.block(point.layer), point.kind == "resid_pre"

    @contextmanager
    def hooked(self, fns: Iterable[tuple[HookPoint, Callable]]) -> Iterator[None]:
        """Run ``fn(hidden) -> replacement | None`` at each point during forward passes in this
        block, in the order given (after hooks installed earlier). Hooks are removed on exit,
        also when the block raises."""
        handles = []
        try:
            for point, fn in fns:
                module, on_input = self._module_for(point)
                handles.append(install(module, on_input, fn))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def read_outputs(
        self,
        points: PointKey | Iterable[PointKey] | None = None,
        kind: str = "resid_post",
        *,
        detach: bool = False,
    ) -> Iterator[dict[PointKey, torch.Tensor]]:
        """Record hidden states ``[batch, seq, hidden]`` at ``points`` (layer indices with
        ``kind``, or names; None = every layer) into the yielded dict, keyed as passed.

        The dict holds the latest forward pass (during ``generate`` that is the last step).
        Tensors keep their autograd graph unless ``detach=True``, so representation losses can
        be built from them.
        """
        keys = self._keys(points)
        recorded: dict[PointKey, torch.Tensor] = {}

        def recorder(key: PointKey) -> Callable[[torch.Tensor], None]:
            def fn(hidden: torch.Tensor) -> None:
                recorded[key] = hidden.detach() if detach else hidden

            return fn

        with self.hooked([(self.point(key, kind), recorder(key)) for key in keys]):
            yield recorded

    @contextmanager
    def add_to_outputs(self, edits: Mapping[PointKey, Edit], kind: str = "resid_post") -> Iterator[None]:
        """Add a tensor (broadcast over batch/sequence) or ``callable(hidden) -> delta`` to the
        hidden state at each point (layer index with ``kind``, or name) during this block."""
        fns = []
        for key, edit in edits.items():
            point = self.point(key, kind)
            fns.append((point, lambda hidden, edit=edit, where=point.name: add_delta(hidden, edit, where)))
        with self.hooked(fns):
            yield

    def read_residual(
        self, layers: int | Iterable[int] | None = None, *, detach: bool = False
    ) -> AbstractContextManager[dict[int, torch.Tensor]]:
        """Record the residual stream after the given blocks (``blocks.i.hook_resid_post``).

        Block i's output equals ``output_hidden_states[i + 1]`` except for the last block, whose
        ``hidden_states[-1]`` transformers reports *after* the final norm.
        """
        return self.read_outputs(layers, "resid_post", detach=detach)

    def add_to_residual(self, edits: Mapping[int, Edit]) -> AbstractContextManager[None]:
        """Add to the residual stream after the given blocks (steering, perturbation)."""
        return self.add_to_outputs(edits, "resid_post")

    def _keys(self, points: PointKey | Iterable[PointKey] | None) -> list[PointKey]:
        if points is None:
            return list(range(self.num_layers))
        if isinstance(points, (int, str)):
            return [points]
        return list(points)
