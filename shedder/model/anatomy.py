"""The anatomy of one layer of a loaded model, for teaching: its parts (SSM, attention, MLP and what they
share), the modules in each with their parameter counts, and what each removal kind deletes or bypasses.

Built from the model's real modules (``shedder.families``) and the catalogue's parameter counts, so the
diagram of a Mamba-1, Mamba-2 or hybrid layer is the loaded model's own.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..families import LayerParts, describe_model
from ..kinds import KIND_HELP
from ..removal.catalogue import Catalogue, Component

SCAN_ONLY = {"A_log", "D", "dt_bias", "x_proj", "dt_proj", "dt_layernorm", "b_layernorm", "c_layernorm"}


@dataclass(frozen=True)
class ModuleRow:
    name: str  # inside the layer, e.g. "mixer.in_proj"
    params: int
    scan_only: bool = False  # removed with the ssm (Mamba-2's in_proj and conv1d lose only some rows)


@dataclass(frozen=True)
class Part:
    """One removable part of a layer (or what the layer keeps around them)."""

    kind: str  # "ssm", "attn", "mlp", or "rest" (norms and modules no kind removes alone)
    title: str
    modules: tuple[ModuleRow, ...]
    params: int  # all parameters of its modules
    freed: int | None  # what removing this kind here frees (catalogue); None for "rest"
    groups: tuple[str, int] | None = None  # ("heads", 8) or ("channel groups", 6): finer removals inside
    help: str = ""


@dataclass(frozen=True)
class LayerAnatomy:
    layer: int
    structure: str  # e.g. "Mamba-2 mixer + MLP"
    parts: tuple[Part, ...]
    params: int
    block_freed: int | None  # what removing the whole block frees (None where blocks are not offered)


def _modules_of(inside: list[nn.Module], layer: nn.Module, seen: set[int]) -> list[ModuleRow]:
    """One row per module inside ``inside`` (weight and bias together; a bare parameter such as ``A_log``
    is its own row), named from the layer; parameters already listed under another part are skipped."""
    names = {id(m): n for n, m in layer.named_modules()}
    rows: list[ModuleRow] = []
    for module in inside:
        prefix = names.get(id(module), type(module).__name__)
        for name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            owner, _, attr = name.rpartition(".")
            row = ".".join(p for p in (prefix, owner if attr in ("weight", "bias") else name) if p)
            rows.append(ModuleRow(row, param.numel(), bool(set(row.split(".")) & SCAN_ONLY)))
    return _merged(rows)


def _merged(modules: list[ModuleRow]) -> list[ModuleRow]:
    """One row per module (weight and bias together)."""
    rows: dict[str, ModuleRow] = {}
    for m in modules:
        old = rows.get(m.name)
        rows[m.name] = m if old is None else ModuleRow(m.name, old.params + m.params, old.scan_only or m.scan_only)
    return list(rows.values())


def _count(cat: Catalogue, kind: str, layer: int) -> int:
    return len([c for c in cat.components([kind]) if c.layer == layer])


def _freed(cat: Catalogue, kind: str, layer: int) -> int | None:
    """What removing ``kind`` at ``layer`` frees; None where it is not offered (a NemotronH attention layer
    as a block)."""
    component = Component(kind, layer)
    return cat.params_of(component) if component in cat else None


def structure_of(parts: LayerParts) -> str:
    words = []
    if parts.ssm is not None:
        words.append(f"Mamba-{parts.ssm_version} mixer")
    if parts.attn is not None:
        words.append("attention" if parts.attn_head_dim else "shared attention+MLP block")
    if parts.mlp is not None:
        words.append("MLP" if parts.mlp_dense else "MoE / MLP")
    return " + ".join(words) or "empty layer"


def distinct_layers(model: nn.Module) -> list[int]:
    """The first layer of each distinct structure (e.g. a hybrid's first Mamba layer and first attention layer)."""
    seen: dict[str, int] = {}
    for parts in describe_model(model)[1]:
        seen.setdefault(structure_of(parts), parts.index)
    return sorted(seen.values())


def layer_anatomy(model: nn.Module, cat: Catalogue, layer: int) -> LayerAnatomy:
    parts = describe_model(model)[1][layer]
    seen: set[int] = set()
    out = []
    if parts.ssm is not None:
        modules = _modules_of([parts.ssm], parts.layer, seen)
        heads = _count(cat, "ssm_heads", layer)
        out.append(Part("ssm", f"Mamba-{parts.ssm_version} mixer", tuple(modules), sum(m.params for m in modules),
                        _freed(cat, "ssm", layer), ("heads", heads) if heads else None, KIND_HELP["ssm"]))
    if parts.attn is not None:
        modules = _modules_of([parts.attn, *parts.attn_exclusive], parts.layer, seen)
        heads = _count(cat, "attn_heads", layer)
        title = "attention" if parts.attn_head_dim else "shared attention+MLP block (this layer's use of it)"
        out.append(Part("attn", title, tuple(modules), sum(m.params for m in modules), _freed(cat, "attn", layer),
                        ("heads", heads) if heads else None, KIND_HELP["attn"]))
    if parts.mlp is not None:
        modules = _modules_of([parts.mlp, *parts.mlp_exclusive], parts.layer, seen)
        groups = _count(cat, "mlp_channels", layer)
        out.append(Part("mlp", "MLP" if parts.mlp_dense else "MoE / MLP", tuple(modules),
                        sum(m.params for m in modules), _freed(cat, "mlp", layer),
                        ("channel groups", groups) if groups else None, KIND_HELP["mlp"]))
    rest = _modules_of([parts.layer], parts.layer, seen)
    if rest:
        out.append(Part("rest", "kept with the layer (norms, shared parts)", tuple(rest),
                        sum(m.params for m in rest), None))
    total = sum(p.numel() for p in parts.layer.parameters())
    block = _freed(cat, "block", layer) if parts.offers_block else None
    return LayerAnatomy(layer, structure_of(parts), tuple(out), total, block)
