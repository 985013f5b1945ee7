"""Choosing a block by index or by fraction of depth, so one config fits a 4-layer organism and a
30-layer SmolLM2 (attacks that read the residual stream, RMU, E.T.)."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from immunelm.errors import ImmuneLMError

#: A layer index, or a fraction of the depth in [0, 1) (0.5 = the middle block).
LayerChoice = Union[Annotated[int, Field(ge=0, le=4095)], Annotated[float, Field(ge=0, lt=1)]]


def resolve_layer(layer: LayerChoice, num_layers: int) -> int:
    """An index as given (checked against the depth), or a fraction of the depth."""
    if isinstance(layer, float):
        return min(int(layer * num_layers), num_layers - 1)
    if layer >= num_layers:
        raise ImmuneLMError(f"layer {layer} out of range: the model has {num_layers} blocks (0..{num_layers - 1})")
    return layer
