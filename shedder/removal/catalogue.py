"""The component catalogue: every removable component of a model, and what removing it frees.

Kinds (``shedder.kinds``, one module each; the README's "Supported models" table): ``block`` (a residual
layer), ``ssm`` (the scan inside a Mamba mixer), ``attn``, ``mlp`` (sub-blocks), and groups: ``attn_heads``
(one attention head), ``ssm_heads`` (one Mamba-2 head) and ``mlp_channels`` (``channel_group_size``
consecutive intermediate channels of a dense MLP).

``params`` is the number of parameters physically removing the component would free (each kind's module says
what that is). Weights shared with other layers (Zamba2's shared block) are never counted, except a Zamba2
hybrid layer's own adapter slot inside them.

Groups free what extraction frees (``shedder.extraction.extract``), which depends on the whole removed set, so
``Catalogue.params_of`` takes a set; an entry's ``params`` is what removing it alone frees.
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from ..errors import ShedderError
from ..families import describe_model
from ..kinds import GROUP_KINDS, KIND_HELP, KINDS, SUB_BLOCK_KINDS, Component, Counting, Entry, Grouping
from ..kinds.base import shared_param_ids
from ..kinds.mlp_channels import default_channel_group_size


@dataclass
class Catalogue:
    model_type: str
    n_layers: int
    total_params: int
    channel_group_size: int
    entries: list[Entry]
    # (kind, layer) -> what removing several of its heads frees together (the head kinds' counts)
    heads: dict[tuple[str, int], object] = field(default_factory=dict, repr=False)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def components(self, kinds: Iterable[str] | None = None) -> list[Component]:
        wanted = set(KINDS if kinds is None else kinds)
        return [e.component for e in self.entries if e.component.kind in wanted]

    def present(self, kinds: Iterable[str]) -> list[str]:
        """Those of ``kinds`` this model has; a ShedderError that names what it has when it has none of them."""
        kinds = list(kinds)
        have = {e.component.kind for e in self.entries}
        found = [k for k in kinds if k in have]
        if not found:
            raise ShedderError(f"This {self.model_type} model has no {', '.join(kinds) or 'such'} components; it has "
                               f"{', '.join(k for k in KINDS if k in have)}.")
        return found

    def params_of(self, removed: Component | Iterable[Component]) -> int:
        """Parameters physical removal frees: of one component alone, or of a whole removed set (parts
        inside removed parts counted once; head groups counted together, as extraction slices them)."""
        if isinstance(removed, Component):
            return self._entry(removed).params
        removed = list(dict.fromkeys(removed))
        inside = {(inner, c.layer) for c in removed for inner in KINDS[c.kind].contains}
        kinds_at: dict[int, set[str]] = defaultdict(set)
        for c in removed:
            kinds_at[c.layer].add(c.kind)
        total, heads = 0, defaultdict(set)
        for c in removed:
            entry = self._entry(c)
            if (c.kind, c.layer) in inside:
                continue
            if (c.kind, c.layer) in self.heads:
                heads[(c.kind, c.layer)].add(c.index)
            else:
                total += entry.params
        for (kind, layer), indices in heads.items():
            total += self.heads[(kind, layer)].freed(indices, frozenset(kinds_at[layer]))
        return total

    def _entry(self, component: Component) -> Entry:
        try:
            return self._by_component()[component]
        except KeyError:
            raise ShedderError(f"{component} is not a component of this {self.model_type} model.") from None

    def __contains__(self, component: Component) -> bool:
        return component in self._by_component()

    def _by_component(self) -> dict[Component, Entry]:
        if not hasattr(self, "_index"):
            self._index = {e.component: e for e in self.entries}
        return self._index

    def layer_roles(self) -> list[str]:
        """What each layer holds, e.g. "SSM + MLP" or "attention", for architecture strips."""
        roles = [[] for _ in range(self.n_layers)]
        for e in self.entries:
            kind = KINDS[e.component.kind]
            if not kind.group and kind.part:
                roles[e.component.layer].append(kind.part)
        return [" + ".join(r) or "block" for r in roles]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind: how many components and how many parameters they hold in all."""
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            row = out.setdefault(e.component.kind, {"count": 0, "params": 0})
            row["count"] += 1
            row["params"] += e.params
        return out


def build_catalogue(model: nn.Module, channel_group_size: int | None = None) -> Catalogue:
    _, layers = describe_model(model)
    if channel_group_size is None:
        widths = [p.mlp_down.in_features for p in layers if p.mlp_dense]
        channel_group_size = default_channel_group_size(max(widths)) if widths else 1
    if channel_group_size < 1:
        raise ShedderError("channel_group_size must be at least 1.")
    counting = Counting(shared_param_ids(layers), Grouping(channel_group_size))
    entries = [Entry(Component(name, parts.index, index), params)
               for parts in layers for name, kind in KINDS.items() for index, params in kind.entries(parts, counting)]
    return Catalogue(
        model_type=model.config.model_type,
        n_layers=len(layers),
        total_params=sum(p.numel() for p in model.parameters()),
        channel_group_size=channel_group_size,
        entries=entries,
        heads=counting.heads,
    )


_catalogues: "weakref.WeakKeyDictionary[nn.Module, dict[int | None, Catalogue]]" = weakref.WeakKeyDictionary()


def catalogue_of(model: nn.Module, channel_group_size: int | None = None) -> Catalogue:
    """The model's catalogue, built once per model and group size."""
    per_model = _catalogues.setdefault(model, {})
    if channel_group_size not in per_model:
        per_model[channel_group_size] = build_catalogue(model, channel_group_size)
    return per_model[channel_group_size]


def validate(model: nn.Module, removed: Iterable[Component], channel_group_size: int | None = None) -> list[Component]:
    """Check every component exists in this model; explain the first that does not."""
    catalogue = catalogue_of(model, channel_group_size)
    components = [c if isinstance(c, Component) else Component.from_dict(c) for c in removed]
    seen: set[Component] = set()
    for c in components:
        if c in seen:
            raise ShedderError(f"{c} is listed twice.")
        seen.add(c)
        if c in catalogue:
            continue
        if not 0 <= c.layer < catalogue.n_layers:
            raise ShedderError(f"{c}: the model has layers 0..{catalogue.n_layers - 1}.")
        here = sorted({e.component.kind for e in catalogue if e.component.layer == c.layer})
        if c.kind not in here:
            raise ShedderError(f"{c}: layer {c.layer} of this {catalogue.model_type} model has no {c.kind!r}; "
                               f"it has {', '.join(here)}.")
        count = sum(1 for e in catalogue if e.component.layer == c.layer and e.component.kind == c.kind)
        raise ShedderError(f"{c}: layer {c.layer} has {c.kind} groups 0..{count - 1}.")
    return components


__all__ = ["GROUP_KINDS", "KINDS", "KIND_HELP", "SUB_BLOCK_KINDS", "Catalogue", "Component", "Entry",
           "build_catalogue", "catalogue_of", "validate"]
