"""NemotronH: each block is a norm plus one mixer (Mamba-2, attention, MLP or MoE). Attention and MLP blocks
are offered as ``attn`` / ``mlp``, not as ``block``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .base import HYBRID_TARGETS, Family, LayerParts, add_attention, add_mlp, layers_of

if TYPE_CHECKING:
    from ..extraction.extract_layers import Layers


def describe(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, block in enumerate(layers_of(model)):
        kind = block.block_type
        if kind in ("mamba", "linear_attention"):
            parts = LayerParts(i, block, ssm=block.mixer, ssm_version=2)
        elif kind in ("attention", "full_attention"):
            parts = LayerParts(i, block, offers_block=False)
            add_attention(parts, block.mixer, block.norm)
        else:  # mlp or moe
            parts = LayerParts(i, block, offers_block=False)
            add_mlp(parts, block.mixer, block.norm)
        out.append(parts)
    return out


def edit_config(data: dict, layers: Layers, config) -> None:
    """``layers_block_type`` (``hybrid_override_pattern`` and the layer count are derived from it)."""
    data["layers_block_type"] = layers.keep(list(config.layers_block_type))
    data.pop("hybrid_override_pattern", None)
    data.pop("num_hidden_layers", None)


FAMILY = Family(("nemotron_h",), describe, edit_config=edit_config, mlp_width_field="intermediate_size",
                lora_targets=HYBRID_TARGETS, notes="attention and MLP layers are removed as `attn` / `mlp`")
