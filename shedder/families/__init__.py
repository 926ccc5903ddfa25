"""Model families: one module per architecture, each declaring a :class:`~shedder.families.base.Family`.

``family_for(model_type)`` finds a family by transformers' ``config.model_type``; ``describe_model(model)``
turns a loaded model into one :class:`LayerParts` per residual layer, a plain description the catalogue, the
masks and extraction work from, so none of them needs to know any family. Adding a family is one module here
and its line in ``FAMILIES``.

A model extracted with a pruned layout (``shedder extract``; loaded, its model type is
``shedder_pruned_<family>``) is described by its family, less what is gone or what the smaller modules no
longer let us describe: a mixer without its scan offers no ``ssm``/``ssm_heads``, a removed attention or MLP
(a module without weights) is not offered, a mixer whose heads were narrowed behind its gated norm offers
neither ``ssm`` nor ``ssm_heads``, and heads silenced to keep grouped-query attention's groups equal (zero
output columns) are not offered again.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..errors import ShedderError
from . import falcon_h1, granitemoehybrid, hymba, llama, mamba, mamba2, mixer_then_ffn, nemotron_h, zamba2
from .base import Family, LayerParts, layers_of

PRUNED_PREFIX = "shedder_pruned_"  # model type of a loaded model that shedder extract wrote with a pruned layout

FAMILIES: dict[str, Family] = {
    model_type: family
    for family in (mamba.FAMILY, mamba2.FAMILY, llama.FAMILY, mixer_then_ffn.BAMBA, mixer_then_ffn.JAMBA,
                   granitemoehybrid.FAMILY, nemotron_h.FAMILY, falcon_h1.FAMILY, zamba2.FAMILY, hymba.FAMILY)
    for model_type in family.model_types
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family_for(model_type: str) -> Family:
    """The family of ``model_type``; for ``shedder_pruned_<family>`` the family's, describing what is left."""
    name = model_type.removeprefix(PRUNED_PREFIX)
    if name not in FAMILIES:
        raise ShedderError(
            f"Architecture {model_type!r} is not supported. Supported model types: "
            f"{', '.join(supported_model_types())} (and models extracted from them, {PRUNED_PREFIX}<type>)."
        )
    family = FAMILIES[name]
    if name == model_type:
        return family
    return replace(family, model_types=(model_type,), describe=_pruned(family.describe),
                   notes=f"pruned from {name}; only what is left is offered. {family.notes}".strip())


def describe_model(model: nn.Module) -> tuple[Family, list[LayerParts]]:
    family = family_for(model.config.model_type)
    return family, family.describe(model)


def _silenced(linear: nn.Linear, count: int, width: int) -> frozenset[int]:
    """Groups of ``width`` input columns of ``linear`` that are all zero."""
    with torch.no_grad():
        zero = (linear.weight.reshape(linear.out_features, count, width) == 0).all(dim=2).all(dim=0)
    return frozenset(int(i) for i in torch.nonzero(zero).flatten())


def _prune_parts(parts: LayerParts) -> LayerParts:
    """What is left to describe of one layer of a pruned model (see the module docstring)."""
    from ..model.ssm_layout import mamba1_layout, mamba2_layout

    if parts.ssm is not None:
        try:  # a mixer without its scan has no A_log; one narrowed behind its gated norm has no Mamba-2 layout
            layout = (mamba1_layout if parts.ssm_version == 1 else mamba2_layout)(parts.ssm)
        except (AttributeError, ShedderError):
            parts.ssm = parts.ssm_version = None
        else:
            if parts.ssm_version == 2:
                parts.silenced_ssm_heads = _silenced(parts.ssm.out_proj, layout.heads, layout.head_dim)
    if parts.attn is not None and parts.attn_head_dim:
        o_proj = parts.attn.o_proj
        parts.silenced_attn_heads = _silenced(o_proj, o_proj.in_features // parts.attn_head_dim, parts.attn_head_dim)
    return parts


def _pruned(describe: Callable[[nn.Module], list[LayerParts]]) -> Callable[[nn.Module], list[LayerParts]]:
    return lambda model: [_prune_parts(parts) for parts in describe(model)]


__all__ = ["FAMILIES", "PRUNED_PREFIX", "Family", "LayerParts", "describe_model", "family_for", "layers_of",
           "supported_model_types"]
