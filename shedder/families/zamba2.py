"""Zamba2: Mamba-2 layers, and hybrid layers that also call one shared attention+MLP block.

The shared weights are never edited by a mask and never counted as freed: removing the shared block at one
hybrid layer (``attn`` there) zeroes that layer's own ``linear`` projection of the shared block's output (the
only per-layer weight on that path), so every other use of the shared block is untouched. Each hybrid layer
also owns one slot of the shared blocks' LoRA adapter lists; those count as freed with its block or attention.

On extraction the shared blocks are kept; each hybrid layer's adapter slots inside them are renumbered, and the
slots of a hybrid layer that is removed or becomes a Mamba layer (its ``attn`` removed) are dropped. With
several shared blocks (``num_mem_blocks`` > 1) the blocks are assigned to hybrid layers in turn, so a change
must keep that assignment.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ShedderError
from .base import HYBRID_TARGETS, Family, LayerParts, layers_of

if TYPE_CHECKING:
    from ..extraction.extract_layers import Layers

_HYBRID_ONLY = re.compile(r"^(linear|shared_transformer)\.")


def describe(model: nn.Module) -> list[LayerParts]:
    out = []
    layers = layers_of(model)
    # hybrid layers may hold distinct module objects whose weights are tied; counting dedupes weights
    shared_blocks = list({id(l.shared_transformer): l.shared_transformer
                          for l in layers if hasattr(l, "shared_transformer")}.values())
    hybrid_ordinal = 0
    for i, layer in enumerate(layers):
        if hasattr(layer, "shared_transformer"):  # hybrid layer
            parts = LayerParts(i, layer, ssm=layer.mamba_decoder.mamba, ssm_version=2)
            parts.attn = layer.shared_transformer
            parts.attn_out = [layer.linear]
            parts.attn_exclusive = [layer.linear]
            # the n-th hybrid layer's LoRA adapters sit in slot n of every shared block's adapter lists
            parts.own_inside_shared = [module for block in shared_blocks for name, module in block.named_modules()
                                       if name.endswith(f"_adapter_list.{hybrid_ordinal}")]
            hybrid_ordinal += 1
        else:
            parts = LayerParts(i, layer, ssm=layer.mamba, ssm_version=2)
        out.append(parts)
    return out


def slot_map(config, layers: Layers) -> dict[int, int]:
    """Old hybrid-layer number -> new one, for hybrid layers that stay hybrid."""
    hybrid = [i for i, t in enumerate(config.layers_block_type) if t == "hybrid"]
    kept = set(layers.kept) - layers.to_mamba
    survivors = [k for k, layer in enumerate(hybrid) if layer in kept]
    return {old: new for new, old in enumerate(survivors)}


def edit_config(data: dict, layers: Layers, config) -> None:
    """``layers_block_type`` and ``hybrid_layer_ids``."""
    types = ["mamba" if old in layers.to_mamba else config.layers_block_type[old] for old in layers.kept]
    data["layers_block_type"] = types
    data["hybrid_layer_ids"] = [i for i, t in enumerate(types) if t == "hybrid"]
    data["num_hidden_layers"] = len(types)
    blocks = config.num_mem_blocks
    moved = [(old, new) for old, new in slot_map(config, layers).items() if old % blocks != new % blocks]
    if moved:
        raise ShedderError(
            f"This Zamba2 model has {blocks} shared transformer blocks, assigned to its hybrid layers in turn; "
            "this removal would give the remaining hybrid layers other shared blocks than they use now. "
            f"Remove hybrid layers (or their attention) in runs of {blocks} (or none) to extract, or keep using masks."
        )


def key_as_mamba_layer(rest: str) -> str | None:
    """A hybrid layer's state-dict key (after ``layers.N.``) in the Mamba layer it becomes; None: dropped."""
    if _HYBRID_ONLY.match(rest):
        return None
    return rest.removeprefix("mamba_decoder.")


FAMILY = Family(
    ("zamba2",), describe, edit_config=edit_config, lora_targets=HYBRID_TARGETS,
    notes="`attn` at a hybrid layer is that layer's use of the shared attention+MLP block; "
    "shared weights are never counted as freed",
    attn_removal_leaves_mamba_layer=True, adapter_slots=slot_map, key_as_mamba_layer=key_as_mamba_layer,
)
