"""Bamba and Jamba: each layer is a Mamba mixer or attention, then a feed-forward (MLP or MoE).

Bamba lists its attention layers (``attn_layer_indices``); Jamba places attention and expert layers
periodically (``attn_layer_period/offset``, ``expert_layer_period/offset``) and accepts no per-layer list, so
a removal whose remaining layers are not periodic cannot be extracted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import ShedderError
from .base import HYBRID_TARGETS, Family, LayerParts, add_attention, add_mlp, layers_of, same_layers_config

if TYPE_CHECKING:
    from ..extraction.extract_layers import Layers


def describe_with(ssm_version: int):
    def describe(model: nn.Module) -> list[LayerParts]:
        out = []
        for i, layer in enumerate(layers_of(model)):
            parts = LayerParts(i, layer)
            if getattr(layer, "self_attn", None) is not None:
                add_attention(parts, layer.self_attn, layer.input_layernorm)
            else:
                parts.ssm, parts.ssm_version = layer.mamba, ssm_version
            add_mlp(parts, layer.feed_forward, layer.pre_ff_layernorm)
            out.append(parts)
        return out
    return describe


def bamba_config(data: dict, layers: Layers, config) -> None:
    same_layers_config(data, layers, config)
    attn = set(config.attn_layer_indices or [])
    new = layers.new_index
    data["attn_layer_indices"] = [new[old] for old in sorted(attn) if old in new] or None


def periodic(flags: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with ``flags[i] == (i % period == offset)``, or None."""
    n = len(flags)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(flag == (i % period == offset) for i, flag in enumerate(flags)):
                return period, offset
    return None


def jamba_config(data: dict, layers: Layers, config) -> None:
    data["num_hidden_layers"] = len(layers.kept)
    attn = [t == "attention" for t in layers.keep(list(config.layers_block_type))]
    experts = [n > 1 for n in layers.keep(list(config.layers_num_experts))]
    for name, flags in (("attn", attn), ("expert", experts)):
        fit = periodic(flags)
        if fit is None:
            where = [i for i, flag in enumerate(flags) if flag]
            raise ShedderError(
                f"After this removal the Jamba {name} layers would sit at {where}, which Jamba's config cannot "
                f"describe ({name}_layer_period/{name}_layer_offset only place them periodically, and it accepts "
                "no per-layer list). Choose blocks whose removal keeps the pattern periodic, or keep using masks."
            )
        data[f"{name}_layer_period"], data[f"{name}_layer_offset"] = fit


BAMBA = Family(("bamba",), describe_with(2), block_output=lambda hidden: (hidden, None), edit_config=bamba_config,
               mlp_width_field="intermediate_size", lora_targets=HYBRID_TARGETS)
JAMBA = Family(("jamba",), describe_with(1), edit_config=jamba_config, lora_targets=HYBRID_TARGETS)
