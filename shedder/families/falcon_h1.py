"""Falcon-H1: attention and a Mamba-2 mixer run in parallel on the same input (hybrid heads), then an MLP."""
from __future__ import annotations

from torch import nn

from .base import HYBRID_TARGETS, Family, LayerParts, add_attention, add_mlp, layers_of


def describe(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer, ssm=layer.mamba, ssm_version=2)
        add_attention(parts, layer.self_attn, None)  # input_layernorm also feeds the mixer
        add_mlp(parts, layer.feed_forward, layer.pre_ff_layernorm)
        out.append(parts)
    return out


FAMILY = Family(("falcon_h1",), describe, block_output=lambda hidden: (hidden,), mlp_width_field="intermediate_size",
                lora_targets=HYBRID_TARGETS)
