"""Mamba-1 (``mamba``) and Falcon-Mamba: every layer is one Mamba-1 mixer."""
from __future__ import annotations

from torch import nn

from .base import Family, LayerParts, layers_of


def describe(model: nn.Module) -> list[LayerParts]:
    return [LayerParts(i, layer, ssm=layer.mixer, ssm_version=1) for i, layer in enumerate(layers_of(model))]


FAMILY = Family(("mamba", "falcon_mamba"), describe)
