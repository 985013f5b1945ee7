"""The model as a method found it, for losses that compare against it (Circuit Breakers' h_orig,
TAR's representation retain loss, NPO's and GRPO's pi_ref, RMU's retain activations): a frozen
copy under full fine-tuning, or, under LoRA, the same network with its adapters disabled (no
second copy in memory)."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from immunelm.models.adapter import ModelAdapter


def hidden_states(model, adapter: ModelAdapter, batch: dict[str, torch.Tensor], layers: list[int]) -> list[torch.Tensor]:
    """Residual stream after each of ``layers`` for ``batch`` (with autograd graph)."""
    with adapter.read_outputs(layers) as hidden:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return [hidden[layer] for layer in layers]


class OriginalModel:
    def __init__(self, model, lora: bool) -> None:
        self.frozen = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
        self.adapter = ModelAdapter(self.frozen) if self.frozen is not None else None  # set on first use under LoRA

    def _net(self, trained):
        """(network to run, context): the frozen copy, or ``trained`` with its adapters off."""
        if self.frozen is not None:
            return self.frozen, nullcontext()
        self.adapter = self.adapter or ModelAdapter(trained)
        return trained, trained.disable_adapter()

    def logits(self, trained, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The original model's logits for ``batch``, without grad (NPO's pi_ref)."""
        net, context = self._net(trained)
        with torch.no_grad(), context:
            return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def hidden_states(self, trained, batch: dict[str, torch.Tensor], layers: list[int]) -> list[torch.Tensor]:
        """Hidden states of the original model at ``layers``, without grad. ``trained`` is the
        (peft) model being trained; under LoRA its adapters are switched off for this pass."""
        net, context = self._net(trained)
        with torch.no_grad(), context:
            return hidden_states(net, self.adapter, batch, layers)
