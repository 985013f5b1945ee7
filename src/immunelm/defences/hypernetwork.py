"""AntiDote's adversary: a hypernetwork that reads a model's activations and emits LoRA factors
(Sanyal et al. 2025, https://arxiv.org/abs/2509.08000). A small module of its own: it is trained
and saved with the defence's run, never shipped inside the immunised model.

For each target linear map x -> W x of the model (d_in -> d_out), H_phi reads the inputs X the map
saw on a batch (every token of every example), encodes them (Linear d_in -> m, GELU), mean-pools
over batch and tokens, passes the pooled vector through a residual MLP, and emits

    U in R^{r x d_in},  V in R^{d_out x r}   (one head pair per (d_in, d_out) shape, shared by the
                                             modules of that shape, as the official code shares
                                             heads per module type)

so the patched map is x -> W x + V U x. The official network puts multi-head attention over the
tokens before pooling (width 1024, 16 heads, rank 8); here an MLP encoder of width ``width``
(decision: the organism's 64-wide layers need no attention over tokens to be attacked).
V starts at zero, so a fresh hypernetwork patches nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from immunelm.models.adapter import linear_io


def shape_key(d_in: int, d_out: int) -> str:
    return f"{d_in}x{d_out}"


class LoRAHypernetwork(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, width: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.rank, self.shapes = rank, dict(shapes)
        kinds = {shape_key(*io): io for io in shapes.values()}
        self.encoders = nn.ModuleDict({k: nn.Linear(d_in, width) for k, (d_in, _) in kinds.items()})
        self.trunk = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.u_heads = nn.ModuleDict({k: nn.Linear(width, rank * d_in) for k, (d_in, _) in kinds.items()})
        self.v_heads = nn.ModuleDict({k: nn.Linear(width, d_out * rank) for k, (_, d_out) in kinds.items()})
        for head in self.v_heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def factors(self, name: str, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U [r, d_in], V [d_out, r]) for module ``name`` from its inputs [B, T, d_in] (mask [B, T])."""
        d_in, d_out = self.shapes[name]
        key = shape_key(d_in, d_out)
        weights = mask.unsqueeze(-1).to(inputs.dtype)
        encoded = torch.nn.functional.gelu(self.encoders[key](inputs.float()))
        pooled = (encoded * weights).sum(dim=(0, 1)) / weights.sum().clamp(min=1)
        hidden = pooled + self.trunk(pooled)
        return self.u_heads[key](hidden).view(self.rank, d_in), self.v_heads[key](hidden).view(d_out, self.rank)


def target_shapes(targets: dict[str, nn.Module]) -> dict[str, tuple[int, int]]:
    return {name: linear_io(module) for name, module in targets.items()}


@contextmanager
def recorded_inputs(targets: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """The input each target saw during the forward passes in this block (the latest)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
               for name, m in targets.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patched(targets: dict[str, nn.Module], factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Every target computes W x + V U x in this block."""
    def hook(module, args, output, name):
        u, v = factors[name]
        return output + (args[0].to(u.dtype) @ u.T @ v.T).to(output.dtype)

    handles = [m.register_forward_hook(lambda mod, args, out, name=name: hook(mod, args, out, name))
               for name, m in targets.items() if name in factors]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
