"""``attn``: the attention sub-block; it contributes exactly zero (its output projection, or for a parallel
branch the norm before the average, is zeroed). Extraction replaces it by a module that returns zeros and its
own pre-norm by an identity."""
from __future__ import annotations

from .base import Kind, numel, path_in


def entries(parts, counting):
    if parts.attn is None:
        return []
    if "attn" in parts.freed:
        return [(None, parts.freed["attn"])]
    own_shared = numel(parts.own_inside_shared, set())
    return [(None, numel([parts.attn, *parts.attn_exclusive], counting.shared) + own_shared)]


def mask(edits, parts, index, setting) -> None:
    for module in parts.attn_out:
        edits.zero_module(module)


def ops(parts, indices, grouping) -> list[dict]:
    return ([{"op": "zero_attention", "module": path_in(parts.layer, parts.attn)}]
            + [{"op": "identity", "module": path_in(parts.layer, norm)} for norm in parts.attn_exclusive])


KIND = Kind("attn", "the attention sub-block: it adds nothing to the residual stream (Hymba: to the average)",
            entries, mask, ops, contains=("attn_heads",), part="attention", reference_key="pruned_mha_idx")
