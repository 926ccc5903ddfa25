"""Llama (a plain Transformer, for comparison): attention then a gated MLP in every layer."""
from __future__ import annotations

from torch import nn

from .base import ATTENTION_TARGETS, MLP_TARGETS, Family, LayerParts, add_attention, add_mlp, layers_of


def describe(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer)
        add_attention(parts, layer.self_attn, layer.input_layernorm)
        add_mlp(parts, layer.mlp, layer.post_attention_layernorm)
        out.append(parts)
    return out


FAMILY = Family(("llama",), describe, mlp_width_field="intermediate_size", lora_targets=ATTENTION_TARGETS + MLP_TARGETS)
