"""Named hook points on decoder blocks, in the spirit of TransformerLens.

A hook point is ``blocks.{i}.hook_{kind}`` with four kinds:

* ``resid_pre``  -- the residual stream entering block i (the block's hidden-state input),
* ``resid_post`` -- the residual stream leaving block i (the block's output),
* ``attn_out``   -- the output of block i's attention module (before any post-attention norm
  that families such as gemma2 apply, and before it is added to the residual),
* ``mlp_out``    -- the output of block i's MLP module.

Short aliases are accepted: ``block`` = ``resid_post``, ``attn`` = ``attn_out``,
``mlp`` = ``mlp_out``; so ``"blocks.3.attn"`` and ``"blocks.3.hook_attn_out"`` are the same point.

Modules return either a tensor or a tuple whose first item is the hidden state, depending on the
module and the transformers version (in transformers 5.x decoder blocks and MLPs return a tensor,
attention modules return ``(output, weights)``). :func:`split_output` hides that difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from immunelm.errors import ImmuneLMError

KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
KIND_ALIASES = {
    "block": "resid_post",
    "resid": "resid_post",
    "attn": "attn_out",
    "mlp": "mlp_out",
    **{kind: kind for kind in KINDS},
}
_NAME = re.compile(r"^blocks\.(-?\d+)\.(?:hook_)?(\w+)$")

#: A function given the hidden state at a hook point; it returns a replacement or None (read only).
HiddenFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class HookPoint:
    """One place in the network: block ``layer`` and canonical ``kind`` (see module docstring)."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"


def canonical_kind(kind: str) -> str:
    """``"attn"`` -> ``"attn_out"`` etc.; ImmuneLMError for unknown kinds."""
    try:
        return KIND_ALIASES[kind]
    except KeyError:
        raise ImmuneLMError(
            f"unknown hook kind '{kind}'; expected one of {', '.join(sorted(KIND_ALIASES))}"
        ) from None


def parse_point(key: int | str, kind: str, num_layers: int) -> HookPoint:
    """A hook point from a layer index (with ``kind``) or a name like ``"blocks.3.hook_mlp_out"``.

    Negative layer indices count from the end, as in Python lists.
    """
    if isinstance(key, str):
        match = _NAME.match(key)
        if match is None:
            raise ImmuneLMError(
                f"hook point '{key}': expected 'blocks.<layer>.hook_<kind>' (e.g. blocks.3.hook_resid_post)"
            )
        layer, kind = int(match.group(1)), match.group(2)
    elif isinstance(key, int) and not isinstance(key, bool):
        layer = key
    else:
        raise ImmuneLMError(f"hook point {key!r}: expected a layer index or a hook point name")
    if not -num_layers <= layer < num_layers:
        raise ImmuneLMError(f"hook point {key!r}: layer {layer} out of range for {num_layers} blocks")
    return HookPoint(layer % num_layers, canonical_kind(kind))


def split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """(hidden state, function that rebuilds the module output around a new hidden state)."""
    if isinstance(output, torch.Tensor):
        return output, lambda hidden: hidden
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        rest = output[1:]
        return output[0], lambda hidden: (hidden, *rest)
    raise ImmuneLMError(
        f"cannot hook a module output of type {type(output).__name__}; expected a tensor or a tuple "
        "whose first item is the hidden state"
    )


def _output_hook(fn: HiddenFn):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden, rebuild = split_output(output)
        new = fn(hidden)
        return None if new is None else rebuild(new)

    return hook


def _input_hook(fn: HiddenFn):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        if "hidden_states" not in kwargs:
            raise ImmuneLMError(
                f"{type(module).__name__} was called without a hidden-state argument; cannot hook resid_pre"
            )
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return hook


def install(module: nn.Module, on_input: bool, fn: HiddenFn) -> RemovableHandle:
    """Register ``fn`` on ``module``'s first positional input (or ``hidden_states``) or output."""
    if on_input:
        return module.register_forward_pre_hook(_input_hook(fn), with_kwargs=True)
    return module.register_forward_hook(_output_hook(fn))


def add_delta(hidden: torch.Tensor, delta: torch.Tensor | Callable, where: str) -> torch.Tensor:
    """``hidden + delta``, where ``delta`` is a tensor broadcast over batch/sequence (last dim =
    hidden size) or a callable(hidden) -> such a tensor (for edits that depend on the input)."""
    value = delta(hidden) if callable(delta) else delta
    if not isinstance(value, torch.Tensor):
        raise ImmuneLMError(f"{where}: the edit must be a tensor or return one, got {type(value).__name__}")
    if value.shape[-1:] != hidden.shape[-1:]:
        raise ImmuneLMError(
            f"{where}: edit of shape {tuple(value.shape)} does not match hidden state {tuple(hidden.shape)}"
        )
    return hidden + value.to(dtype=hidden.dtype, device=hidden.device)
