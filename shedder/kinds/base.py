"""What a component kind is: the record every kind module fills in, and the small values they share.

A :class:`Kind` says, for one kind of removable component, everything shedder does with it: which
components a described layer (:class:`~shedder.families.base.LayerParts`) offers and what removing each
frees (``entries``), how a mask removes one (``mask``), which operations extraction applies to the smaller
model (``ops``), which output-projection columns a group writes through (``columns``, the weight-magnitude
proxy), the reference format's key, and the help text shown to people.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import nn

from ..errors import ShedderError

if TYPE_CHECKING:
    from ..families.base import LayerParts
    from .edits import Edits


@dataclass(frozen=True)
class Component:
    """One removable component: ``index`` is the group number for group kinds, else None."""

    kind: str
    layer: int
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}@{self.layer}" + (f"[{self.index}]" if self.index is not None else "")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Component":
        """``{"kind": "ssm", "layer": 7}`` (plus ``"index"`` for groups); whole numbers only (not 1.7, not true)."""
        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if (not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not whole(data.get("layer"))
                or not (data.get("index") is None or whole(data["index"]))):
            raise ShedderError(f"Not a component: {str(data)[:200]} (need a kind name, a whole layer number and, "
                               "for groups, a whole index).")
        return cls(kind=data["kind"], layer=data["layer"], index=data.get("index"))


@dataclass(frozen=True)
class Entry:
    component: Component
    params: int  # parameters freed by physical removal


@dataclass(frozen=True)
class Grouping:
    """How MLP channels form groups: ``size`` channels each, in channel order or (``"l1"``) by weight L1 norm."""

    size: int
    reorder: str | None = None


@dataclass
class Counting:
    """What enumerating one model's components shares across layers: parameters used by several layers
    (never counted as freed), the channel grouping, and per (kind, layer) the head counts of head kinds."""

    shared: set[int]
    grouping: Grouping
    heads: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MaskSetting:
    """What a mask needs besides the layer: the channel grouping, and what a skipped layer returns."""

    grouping: Grouping
    block_output: Callable


Entries = Callable[["LayerParts", Counting], list[tuple[int | None, int]]]  # (index, params freed alone)
Mask = Callable[["Edits", "LayerParts", int | None, MaskSetting], None]
Ops = Callable[["LayerParts", list[int | None], Grouping], list[dict]]
Columns = Callable[["LayerParts", int, Grouping], torch.Tensor]


@dataclass(frozen=True)
class Kind:
    name: str
    help: str  # what removing one computes (Mamba-Shedder's semantics), in words for people
    entries: Entries
    mask: Mask
    ops: Ops | None = None  # extraction's operations on a kept layer (None: the layer is dropped instead)
    columns: Columns | None = None  # group kinds: the output-projection columns one group writes through
    contains: tuple[str, ...] = ()  # kinds in the same layer that removing this one makes moot
    part: str | None = None  # the layer part it is, in words for strips ("SSM", "attention", "MLP")
    reference_key: str | None = None  # the reference pruning config's key, where the format has one
    grouped: bool = False  # its components depend on the channel grouping (size and order)

    @property
    def group(self) -> bool:
        return self.columns is not None


# --- counting helpers the kinds share -------------------------------------------------------------

def numel(modules: Iterable[nn.Module], shared: set[int]) -> int:
    """Parameters of ``modules``, each counted once (tied weights appear under several modules)."""
    unique = {id(p): p for m in modules for p in m.parameters() if id(p) not in shared}
    return sum(p.numel() for p in unique.values())


def shared_param_ids(layers: list[LayerParts]) -> set[int]:
    """Parameters that appear in more than one layer (e.g. Zamba2's shared transformer)."""
    counts = Counter(id(p) for parts in layers for p in {id(q): q for q in parts.layer.parameters()}.values())
    return {pid for pid, n in counts.items() if n > 1}


def bias_len(linear: nn.Module) -> int:
    return 1 if getattr(linear, "bias", None) is not None else 0


def rows_params(linear: nn.Linear, rows: int) -> int:
    return rows * (linear.in_features + bias_len(linear))


def path_in(layer: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``layer`` (what an extraction operation names)."""
    for name, candidate in layer.named_modules():
        if candidate is module and name:
            return name
    raise RuntimeError(f"{type(module).__name__} is not inside {type(layer).__name__}.")


def kept(count: int, removed: set[int], what: str, layer: int, instead: str) -> list[int]:
    """The indices of ``count`` that stay; refuses removing all of them (the sub-block is the same function)."""
    left = [i for i in range(count) if i not in removed]
    if not left:
        raise ShedderError(f"The plan removes every {what} of layer {layer}; remove its {instead} instead "
                           "(the same function, and extractable).")
    return left
