"""Component kinds: one module per kind, each declaring a :class:`~shedder.kinds.base.Kind` (what a layer
offers of it, what removing one frees, its mask, its extraction operations, its proxy columns, its reference
key and its help text). The catalogue, masks, search, scoring, extraction, the cost model, the reference format,
the command line and the dashboard ask ``KINDS``; adding a kind is one module here and its line below.
"""
from __future__ import annotations

from typing import Iterable

from ..errors import ShedderError
from . import attn, attn_heads, block, mlp, mlp_channels, ssm, ssm_heads
from .base import Component, Counting, Entry, Grouping, Kind, MaskSetting

# catalogue order: within a layer, whole parts before groups
KINDS: dict[str, Kind] = {k.name: k for k in (block.KIND, ssm.KIND, attn.KIND, mlp.KIND, ssm_heads.KIND,
                                                attn_heads.KIND, mlp_channels.KIND)}
KIND_NAMES = tuple(KINDS)
GROUP_KINDS = tuple(name for name, k in KINDS.items() if k.group)
SUB_BLOCK_KINDS = tuple(name for name, k in KINDS.items() if not k.group)
KIND_HELP = {name: k.help for name, k in KINDS.items()}
# the order extraction applies a kept layer's operations in (a removed scan before narrowing its heads)
EXTRACTION_ORDER = ("ssm", "ssm_heads", "attn", "attn_heads", "mlp", "mlp_channels")


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ShedderError(f"Unknown component kind {name!r}; choose from {', '.join(KIND_NAMES)}.") from None


def implied_by(removed: Iterable[Component]) -> set[tuple[str, int]]:
    """(kind, layer) pairs that earlier removals already make moot (what a removed part contains)."""
    return {(inner, c.layer) for c in removed for inner in KINDS[c.kind].contains}


def parts_of_kinds(kinds: Iterable[str]) -> list[str]:
    """The layer parts (e.g. "SSM", "MLP") that ``kinds`` belong to, each once."""
    return list(dict.fromkeys(KINDS[k].part for k in kinds if KINDS[k].part))


__all__ = ["Component", "Counting", "EXTRACTION_ORDER", "Entry", "GROUP_KINDS", "Grouping", "KINDS", "KIND_HELP",
           "KIND_NAMES", "Kind", "MaskSetting", "SUB_BLOCK_KINDS", "implied_by", "kind"]
