"""From a plan to what extraction does: which layers go, and per kept layer which modules shrink.

Whole layers go when the plan removes their block, or every sub-block of a layer without a Mamba
mixer (e.g. attention and MLP of a Llama layer; a NemotronH attention or MLP layer). A Zamba2 hybrid
layer whose ``attn`` (its call of the shared transformer) is removed becomes a plain Mamba layer.
Everything else becomes operations on the kept layers' modules (``shedder.extraction.pruned_modeling.pruned_layers``):
``remove_ssm``, ``ssm_heads``, ``attn_heads``, ``mlp_channels``, and for removed attention / MLP
sub-blocks ``zero_attention`` / ``zero`` plus ``identity`` for the norm that fed them.
"""
from __future__ import annotations

from collections import defaultdict

from torch import nn

from ..errors import ShedderError
from ..families import LayerParts, describe_model, family_for
from ..kinds import EXTRACTION_ORDER, KINDS, Grouping
from ..removal.catalogue import Component
from .extract_layers import Layers


def by_layer(removed: list[Component]) -> dict[int, list[Component]]:
    out: dict[int, list[Component]] = defaultdict(list)
    for c in removed:
        out[c.layer].append(c)
    return out


def plan_layers(model: nn.Module, removed: list[Component]) -> Layers:
    """The layers that stay, and the Zamba2 hybrid layers that become Mamba layers."""
    family, parts_list = describe_model(model)
    per_layer = by_layer(removed)
    dropped, to_mamba = set(), set()
    for parts in parts_list:
        kinds = {c.kind for c in per_layer.get(parts.index, [])}
        sub_blocks = {k for k, present in (("attn", parts.attn), ("mlp", parts.mlp)) if present is not None}
        if "block" in kinds or (parts.ssm is None and sub_blocks and sub_blocks <= kinds):
            dropped.add(parts.index)
        elif family.attn_removal_leaves_mamba_layer and "attn" in kinds:
            to_mamba.add(parts.index)
    kept = tuple(i for i in range(len(parts_list)) if i not in dropped)
    if not kept:
        raise ShedderError("The plan removes every layer; keep at least one to extract a model.")
    layers = Layers(len(parts_list), kept, frozenset(to_mamba))
    _check_attention_kept(model, parts_list, layers)
    return layers


def _check_attention_kept(model: nn.Module, parts_list: list[LayerParts], layers: Layers) -> None:
    """Stock transformers cannot run a hybrid left without attention layers with a cache (``generate``)."""
    with_attn = [p.index for p in parts_list if p.attn is not None]
    still = set(layers.kept) - layers.to_mamba
    if with_attn and not set(with_attn) & still:
        raise ShedderError(
            f"The plan removes every attention layer ({', '.join(map(str, with_attn))}) of this "
            f"{model.config.model_type} model; transformers cannot run such a hybrid with a cache (generate "
            "fails), so it is not extracted. Keep at least one attention layer, or keep using masks."
        )


def plan_ops(small: nn.Module, layers: Layers, removed: list[Component], grouping: Grouping) -> dict[int, list[dict]]:
    """Per layer of ``small`` (the stock model of the kept layers): the operations that finish the job, each
    kind's own (``Kind.ops``), skipping kinds that a removed part of the same layer contains."""
    _, small_parts = describe_model(small)
    new_index = layers.new_index
    out: dict[int, list[dict]] = {}
    for old, components in sorted(by_layer(removed).items()):
        if old not in new_index:
            continue
        parts = small_parts[new_index[old]]
        indices: dict[str, list[int | None]] = defaultdict(list)
        for c in components:
            indices[c.kind].append(c.index)
        if old in layers.to_mamba:  # the attention went with the layer's hybrid half
            indices.pop("attn")
        moot = {inner for name in indices for inner in KINDS[name].contains}
        ops = [op for name in EXTRACTION_ORDER if name in indices and name not in moot
               for op in KINDS[name].ops(parts, indices[name], grouping)]
        if ops:
            out[new_index[old]] = ops
    return out


def uniform_mlp_width(small: nn.Module, ops: dict[int, list[dict]]) -> dict[str, int]:
    """When the only change to the kept layers is every dense MLP narrowed to one width, the config
    field that says so (then the stock config describes the model); else nothing."""
    field = family_for(small.config.model_type).mlp_width_field
    if field is None or not ops or any(op["op"] != "mlp_channels" for layer_ops in ops.values() for op in layer_ops):
        return {}
    dense = {parts.index for parts in describe_model(small)[1] if parts.mlp_dense}
    widths = {len(op["kept"]) for layer_ops in ops.values() for op in layer_ops}
    if set(ops) != dense or len(widths) != 1:
        return {}
    return {field: widths.pop()}
