"""From a plan to what extraction does: which layers go, and per kept layer which modules shrink.

Whole layers go when the plan removes their block, or every sub-block of a layer without a Mamba
mixer (e.g. attention and MLP of a Llama layer; a NemotronH attention or MLP layer). A Zamba2 hybrid
layer whose ``attn`` (its call of the shared transformer) is removed becomes a plain Mamba layer.
Everything else becomes operations on the kept layers' modules (``shedder.pruned_modeling.pruned_layers``):
``remove_ssm``, ``ssm_heads``, ``attn_heads``, ``mlp_channels``, and for removed attention / MLP
sub-blocks ``zero_attention`` / ``zero`` plus ``identity`` for the norm that fed them.
"""
from __future__ import annotations

from collections import defaultdict

from torch import nn

from .families import LayerParts, describe_model, family_for
from .catalogue import Component, channel_groups
from .errors import ShedderError
from .extract_layers import Layers
from .ssm_layout import mamba2_layout


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


def _path(layer: nn.Module, module: nn.Module) -> str:
    for name, candidate in layer.named_modules():
        if candidate is module and name:
            return name
    raise RuntimeError(f"{type(module).__name__} is not inside {type(layer).__name__}.")


def _sub_modules(layer: nn.Module, module: nn.Module) -> list[nn.Module]:
    """``module`` itself if it sits in ``layer``, else its parts (a family's ad-hoc ModuleList, e.g. Granite's MoE and shared MLP)."""
    if any(candidate is module for _, candidate in layer.named_modules()):
        return [module]
    return list(module.children())


def _kept(count: int, removed: set[int], what: str, layer: int, instead: str) -> list[int]:
    kept = [i for i in range(count) if i not in removed]
    if not kept:
        raise ShedderError(f"The plan removes every {what} of layer {layer}; remove its {instead} instead "
                           "(the same function, and extractable).")
    return kept


def _ssm_ops(parts: LayerParts, kinds: dict[str, list[Component]]) -> list[dict]:
    ops = []
    mixer = _path(parts.layer, parts.ssm)
    if "ssm" in kinds:
        ops.append({"op": "remove_ssm", "module": mixer})
    if "ssm_heads" in kinds:
        heads = mamba2_layout(parts.ssm).heads
        kept = _kept(heads, {c.index for c in kinds["ssm_heads"]}, "SSM head", parts.index, "block")
        ops.append({"op": "ssm_heads", "module": mixer, "kept": kept})
    return ops


def _attn_ops(parts: LayerParts, kinds: dict[str, list[Component]]) -> list[dict]:
    if "attn" in kinds:
        return ([{"op": "zero_attention", "module": _path(parts.layer, parts.attn)}]
                + [{"op": "identity", "module": _path(parts.layer, norm)} for norm in parts.attn_exclusive])
    if "attn_heads" in kinds:
        n_heads = parts.attn.o_proj.in_features // parts.attn_head_dim
        kept = _kept(n_heads, {c.index for c in kinds["attn_heads"]}, "attention head", parts.index, "attn")
        return [{"op": "attn_heads", "module": _path(parts.layer, parts.attn), "kept": kept}]
    return []


def _mlp_ops(parts: LayerParts, kinds: dict[str, list[Component]], group_size: int, reorder: str | None) -> list[dict]:
    if "mlp" in kinds:
        return ([{"op": "zero", "module": _path(parts.layer, m)} for m in _sub_modules(parts.layer, parts.mlp)]
                + [{"op": "identity", "module": _path(parts.layer, norm)} for norm in parts.mlp_exclusive])
    if "mlp_channels" in kinds:
        groups = channel_groups(parts, group_size, reorder)
        removed = {int(ch) for c in kinds["mlp_channels"] for ch in groups[c.index]}
        kept = _kept(parts.mlp_down.in_features, removed, "MLP channel", parts.index, "mlp")
        return [{"op": "mlp_channels", "module": _path(parts.layer, parts.mlp),
                 "inputs": [_path(parts.mlp, lin) for lin in parts.mlp_in], "output": _path(parts.mlp, parts.mlp_down),
                 "kept": kept}]
    return []


def plan_ops(small: nn.Module, layers: Layers, removed: list[Component], group_size: int,
             reorder: str | None) -> dict[int, list[dict]]:
    """Per layer of ``small`` (the stock model of the kept layers): the operations that finish the job."""
    _, small_parts = describe_model(small)
    new_index = layers.new_index
    out: dict[int, list[dict]] = {}
    for old, components in sorted(by_layer(removed).items()):
        if old not in new_index:
            continue
        parts = small_parts[new_index[old]]
        kinds: dict[str, list[Component]] = defaultdict(list)
        for c in components:
            kinds[c.kind].append(c)
        if old in layers.to_mamba:
            kinds.pop("attn")
        ops = _ssm_ops(parts, kinds) if parts.ssm is not None else []
        ops += _attn_ops(parts, kinds) + _mlp_ops(parts, kinds, group_size, reorder)
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
