"""The component catalogue: every removable component of a model, and what removing it frees.

Kinds (the README's "Supported models" table): ``block`` (a residual layer), ``ssm`` (the scan inside a Mamba mixer), ``attn``,
``mlp`` (sub-blocks), and groups: ``attn_heads`` (one attention head), ``ssm_heads`` (one Mamba-2
head) and ``mlp_channels`` (``channel_group_size`` consecutive intermediate channels of a dense MLP).

``params`` is the number of parameters physically removing the component would free. Weights
shared with other layers (Zamba2's shared block) are never counted, except a Zamba2 hybrid layer's
own adapter slot inside them. For an ``ssm`` it is what only
the scan uses: Mamba-1 ``A_log``, ``D``, ``x_proj``, ``dt_proj`` (and Jamba's dt/B/C norms);
Mamba-2 ``A_log``, ``D``, ``dt_bias``, the B/C/dt rows of ``in_proj`` and the B/C channels of
``conv1d``.

Groups free what extraction frees (``shedder.extract``), which depends on the whole removed set, so
``Catalogue.params_of`` takes a set; an entry's ``params`` is what removing it alone frees:

- ``ssm_heads`` behind a gated RMSNorm (most Mamba-2 mixers) free only their ``out_proj`` columns:
  the norm normalises over all heads of its group, so the removed heads still run. Without it
  (Falcon-H1's ``mamba_rms_norm=False``) whole heads go, as long as the kept heads still split evenly
  over the B/C groups (else nothing is freed); with the layer's ``ssm`` also removed their dt row and
  ``A_log``/``D``/``dt_bias`` entries are counted with the ``ssm``.
- ``attn_heads`` under grouped-query attention: every key/value group keeps as many query heads as
  the fullest one (``attention_head_slots``), so one head alone frees nothing unless each key/value
  head has one query head; a key/value head goes (its k/v rows freed) only with its whole group.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .families import LayerParts, describe_model
from .errors import ShedderError
from .pruned_modeling.pruned_layers import _has_gated_norm, attention_head_slots
from .ssm_layout import mamba2_layout

KINDS = ("block", "ssm", "attn", "mlp", "ssm_heads", "attn_heads", "mlp_channels")
GROUP_KINDS = ("ssm_heads", "attn_heads", "mlp_channels")
SUB_BLOCK_KINDS = ("block", "ssm", "attn", "mlp")
# what removing one component of each kind computes (Mamba-Shedder's semantics), in words for people
KIND_HELP = {
    "block": "the whole residual layer: it returns its input",
    "ssm": "the scan inside the Mamba mixer: y = x (Mamba-2: gate, gated norm and output projection still run; "
           "Mamba-1: y = x * silu(z))",
    "attn": "the attention sub-block: it adds nothing to the residual stream",
    "mlp": "the MLP sub-block: it adds nothing to the residual stream",
    "attn_heads": "one attention head: its slice of the output projection's input is zero",
    "ssm_heads": "one Mamba-2 head: its slice of out_proj's input is zero",
    "mlp_channels": "a group of the MLP's intermediate channels: they contribute zero",
}


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


@dataclass
class Catalogue:
    model_type: str
    n_layers: int
    total_params: int
    channel_group_size: int
    entries: list[Entry]
    heads: dict[tuple[str, int], "AttnHeadCounts | SsmHeadCounts"] = field(default_factory=dict, repr=False)

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
        gone = {(c.kind, c.layer) for c in removed}
        groups_of = {"attn": "attn_heads", "mlp": "mlp_channels"}
        inside = {(groups_of[k], layer) for k, layer in gone if k in groups_of}  # groups of removed sub-blocks
        total, heads = 0, defaultdict(set)
        for c in removed:
            entry = self._entry(c)
            if (c.kind != "block" and ("block", c.layer) in gone) or (c.kind, c.layer) in inside:
                continue
            if c.kind in ("attn_heads", "ssm_heads"):
                heads[(c.kind, c.layer)].add(c.index)
            else:
                total += entry.params
        for (kind, layer), indices in heads.items():
            total += self.heads[(kind, layer)].freed(indices, ("ssm", layer) in gone)
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
        names = {"ssm": "SSM", "attn": "attention", "mlp": "MLP"}
        roles = [[] for _ in range(self.n_layers)]
        for e in self.entries:
            if e.component.kind in names:
                roles[e.component.layer].append(names[e.component.kind])
        return [" + ".join(r) or "block" for r in roles]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind: how many components and how many parameters they hold in all."""
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            row = out.setdefault(e.component.kind, {"count": 0, "params": 0})
            row["count"] += 1
            row["params"] += e.params
        return out


def default_channel_group_size(intermediate: int) -> int:
    """256 channels for real models; eight groups per MLP for small ones."""
    return 256 if intermediate >= 2048 else max(1, intermediate // 8)


def _numel(modules: Iterable[nn.Module], shared: set[int]) -> int:
    """Parameters of ``modules``, each counted once (tied weights appear under several modules)."""
    unique = {id(p): p for m in modules for p in m.parameters() if id(p) not in shared}
    return sum(p.numel() for p in unique.values())


def _shared_param_ids(layers: list[LayerParts]) -> set[int]:
    """Parameters that appear in more than one layer (e.g. Zamba2's shared transformer)."""
    counts = Counter(id(p) for parts in layers for p in {id(q): q for q in parts.layer.parameters()}.values())
    return {pid for pid, n in counts.items() if n > 1}


def _bias_len(linear: nn.Linear) -> int:
    return 1 if linear.bias is not None else 0


def ssm_params(parts: LayerParts) -> int:
    mixer = parts.ssm
    if parts.ssm_version == 1:
        extra = [getattr(mixer, n, None) for n in ("dt_layernorm", "b_layernorm", "c_layernorm")]
        return (mixer.A_log.numel() + mixer.D.numel() + _numel([mixer.x_proj, mixer.dt_proj], set())
                + _numel([m for m in extra if m is not None], set()))
    lay = mamba2_layout(mixer)
    rows = 2 * lay.group_state + lay.heads
    conv_channels = 2 * lay.group_state
    kernel = mixer.conv1d.weight.shape[-1]
    return (mixer.A_log.numel() + mixer.D.numel() + mixer.dt_bias.numel()
            + rows * (mixer.in_proj.in_features + _bias_len(mixer.in_proj))
            + conv_channels * (kernel + (1 if mixer.conv1d.bias is not None else 0)))


@dataclass(frozen=True)
class SsmHeadCounts:
    """What removing Mamba-2 heads of one mixer frees (see the module docstring)."""

    heads: int
    groups: int  # B/C groups
    gated_norm: bool
    out_columns: int  # one head's columns of out_proj
    whole_head: int  # one head whole: z/x/dt rows of in_proj, x channels of conv1d, A/D/dt_bias, out_proj columns
    with_scan: int  # the part of whole_head that the ssm frees too: the dt row and A/D/dt_bias

    def freed(self, removed: set[int], ssm_removed: bool = False) -> int:
        if self.gated_norm:
            return len(removed) * self.out_columns
        if ssm_removed:  # B/C are gone, so any heads go whole
            return len(removed) * (self.whole_head - self.with_scan)
        per_group = self.heads // self.groups
        kept = Counter(h // per_group for h in range(self.heads) if h not in removed)
        if len({kept[g] for g in range(self.groups)}) != 1:
            return 0  # uneven over the B/C groups: the heads are only silenced
        return len(removed) * self.whole_head


@dataclass(frozen=True)
class AttnHeadCounts:
    """What removing query heads of one attention frees (see the module docstring)."""

    n_query: int
    n_kv: int
    query_head: int  # one query head's rows of q_proj and columns of o_proj
    kv_head: int  # one key/value head's rows of k_proj and v_proj

    def freed(self, removed: set[int], ssm_removed: bool = False) -> int:
        kept = [h for h in range(self.n_query) if h not in removed]
        if not kept:
            return self.n_query * self.query_head + self.n_kv * self.kv_head
        slots, kv_heads = attention_head_slots(self.n_query, self.n_kv, kept)
        return (self.n_query - len(slots)) * self.query_head + (self.n_kv - len(kv_heads)) * self.kv_head


def _rows_params(linear: nn.Linear, rows: int) -> int:
    return rows * (linear.in_features + _bias_len(linear))


def ssm_head_counts(parts: LayerParts) -> SsmHeadCounts:
    mixer = parts.ssm
    lay = mamba2_layout(mixer)
    hd = lay.head_dim
    conv_channel = mixer.conv1d.weight.shape[-1] + (1 if mixer.conv1d.bias is not None else 0)
    out_columns = mixer.out_proj.out_features * hd
    with_scan = _rows_params(mixer.in_proj, 1) + 3
    return SsmHeadCounts(heads=lay.heads, groups=int(getattr(mixer, "n_groups", 1)),
                         gated_norm=bool(_has_gated_norm(mixer)), out_columns=out_columns,
                         whole_head=_rows_params(mixer.in_proj, 2 * hd) + hd * conv_channel + out_columns + with_scan,
                         with_scan=with_scan)


def attn_head_counts(parts: LayerParts) -> AttnHeadCounts:
    hd = parts.attn_head_dim
    attn = parts.attn
    return AttnHeadCounts(n_query=attn.o_proj.in_features // hd, n_kv=attn.k_proj.out_features // hd,
                          query_head=_rows_params(attn.q_proj, hd) + attn.o_proj.out_features * hd,
                          kv_head=_rows_params(attn.k_proj, hd) + _rows_params(attn.v_proj, hd))


def channel_group_params(parts: LayerParts, size: int) -> int:
    return sum(size * (lin.in_features + _bias_len(lin)) for lin in parts.mlp_in) + parts.mlp_down.out_features * size


CHANNEL_ORDERS = (None, "l1")


def channel_order(parts: LayerParts, reorder: str | None) -> torch.Tensor:
    """Intermediate channels in group order. ``l1``: by the summed L1 norm of each channel's rows in
    the gate/up projections, largest first (the reference's reordering), so the last groups hold the
    channels with the smallest weights."""
    width = parts.mlp_down.in_features
    if reorder is None:
        return torch.arange(width)
    if reorder != "l1":
        raise ShedderError(f"Unknown channel order {reorder!r}; use none or l1.")
    with torch.no_grad():
        importance = sum(lin.weight.detach().float().abs().sum(dim=1) for lin in parts.mlp_in)
    return torch.sort(importance.cpu(), descending=True, stable=True).indices


def channel_groups(parts: LayerParts, group_size: int, reorder: str | None = None) -> list[torch.Tensor]:
    """The channel indices of each group, in group order; the last group may be smaller."""
    order = channel_order(parts, reorder)
    return [order[s:s + group_size] for s in range(0, order.numel(), group_size)]


def build_catalogue(model: nn.Module, channel_group_size: int | None = None) -> Catalogue:
    _, layers = describe_model(model)
    if channel_group_size is None:
        widths = [p.mlp_down.in_features for p in layers if p.mlp_dense]
        channel_group_size = default_channel_group_size(max(widths)) if widths else 1
    if channel_group_size < 1:
        raise ShedderError("channel_group_size must be at least 1.")
    shared = _shared_param_ids(layers)
    entries: list[Entry] = []
    heads: dict[tuple[str, int], SsmHeadCounts | AttnHeadCounts] = {}
    for parts in layers:
        i = parts.index
        own_shared = _numel(parts.own_inside_shared, set())
        if parts.offers_block:
            entries.append(Entry(Component("block", i), _numel([parts.layer], shared) + own_shared))
        if parts.ssm is not None:
            entries.append(Entry(Component("ssm", i), ssm_params(parts)))
        if parts.attn is not None:
            entries.append(Entry(Component("attn", i),
                                 _numel([parts.attn, *parts.attn_exclusive], shared) + own_shared))
        if parts.mlp is not None:
            entries.append(Entry(Component("mlp", i), _numel([parts.mlp, *parts.mlp_exclusive], shared)))
        if parts.ssm is not None and parts.ssm_version == 2:
            counts = heads[("ssm_heads", i)] = ssm_head_counts(parts)
            entries += [Entry(Component("ssm_heads", i, h), counts.freed({h}))
                        for h in range(counts.heads) if h not in parts.silenced_ssm_heads]
        if parts.attn is not None and parts.attn_head_dim:
            counts = heads[("attn_heads", i)] = attn_head_counts(parts)
            entries += [Entry(Component("attn_heads", i, h), counts.freed({h}))
                        for h in range(counts.n_query) if h not in parts.silenced_attn_heads]
        if parts.mlp_dense:
            entries += [Entry(Component("mlp_channels", i, g), channel_group_params(parts, len(r)))
                        for g, r in enumerate(channel_groups(parts, channel_group_size))]
    return Catalogue(
        model_type=model.config.model_type,
        n_layers=len(layers),
        total_params=sum(p.numel() for p in model.parameters()),
        channel_group_size=channel_group_size,
        entries=entries,
        heads=heads,
    )
