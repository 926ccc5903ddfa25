"""Granite 4 (``granitemoehybrid``): a Mamba-2 mixer or attention, then an MoE and a shared MLP (one sub-block)."""
from __future__ import annotations

from torch import nn

from .base import HYBRID_TARGETS, Family, LayerParts, add_attention, has_weights, layers_of


def describe(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer)
        if getattr(layer, "mamba", None) is not None:
            parts.ssm, parts.ssm_version = layer.mamba, 2
        else:
            add_attention(parts, layer.self_attn, layer.input_layernorm)
        ffn = nn.ModuleList([m for m in (getattr(layer, "block_sparse_moe", None), layer.shared_mlp)
                             if m is not None and has_weights(m)])
        if len(ffn):
            parts.mlp, parts.mlp_exclusive = ffn, [layer.post_attention_layernorm]
        out.append(parts)
    return out


FAMILY = Family(("granitemoehybrid",), describe, lora_targets=HYBRID_TARGETS)
