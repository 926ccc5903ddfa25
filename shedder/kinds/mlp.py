"""``mlp``: the MLP (or MoE) sub-block; it contributes exactly zero (its output projections are zeroed).
Extraction replaces it by a module that returns zeros and its own pre-norm by an identity."""
from __future__ import annotations

from .base import Kind, numel, path_in


def entries(parts, counting):
    return [] if parts.mlp is None else [(None, numel([parts.mlp, *parts.mlp_exclusive], counting.shared))]


def mask(edits, parts, index, setting) -> None:
    for param in parts.mlp_output_params():
        edits.zero_all(param)


def _sub_modules(layer, module) -> list:
    """``module`` itself if it sits in ``layer``, else its parts (a family's ad-hoc ModuleList, e.g. Granite's
    MoE and shared MLP)."""
    if any(candidate is module for _, candidate in layer.named_modules()):
        return [module]
    return list(module.children())


def ops(parts, indices, grouping) -> list[dict]:
    return ([{"op": "zero", "module": path_in(parts.layer, m)} for m in _sub_modules(parts.layer, parts.mlp)]
            + [{"op": "identity", "module": path_in(parts.layer, norm)} for norm in parts.mlp_exclusive])


KIND = Kind("mlp", "the MLP sub-block: it adds nothing to the residual stream", entries, mask, ops,
            contains=("mlp_channels",), part="MLP", reference_key="pruned_mlp_idx")
