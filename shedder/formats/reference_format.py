"""The Mamba-Shedder reference code's pruning-config format, both ways.

The reference writes ``{"pruned_mamba_block_idx": [...], "pruned_ssm_idx": [...], "pruned_mha_idx": [...],
"pruned_mlp_idx": [...], "pruned_mlp_channels": {"<mlp>": kept_width, ...}}``; each kind names its key
(``Kind.reference_key``). A family whose reference script uses other keys names them (``Family.reference_keys``
and ``reference_export``; Hymba: ``pruned_hymba_block_idx``, ``pruned_self_attn_idx``, ``pruned_ssm_idx``,
``pruned_moe_idx``), and one entry may stand for several kinds at a layer (Hymba's whole mixer: ``attn`` +
``ssm``). Indices count the layers that hold that kind, in order (for Mamba and Mamba-2 that is the layer index; for Zamba2's attention, the
n-th hybrid layer). ``pruned_mlp_channels`` gives, per MLP, the number of intermediate channels that
*remain*; the removed ones are the tail (after the optional L1 reordering), i.e. our last groups.
The format has no head groups and no removal order across kinds; imports list blocks, attention,
MLPs, channel groups, then SSMs (the paper's hybrid stage order).
"""
from __future__ import annotations

from torch import nn

from ..errors import ShedderError
from ..families import describe_model
from ..kinds import KINDS
from ..kinds.mlp_channels import channel_groups
from ..model.identity import model_fingerprint
from ..plan import Plan
from ..removal.catalogue import Catalogue, Component, catalogue_of

# the names other families' reference scripts use for the same kinds, read on any model
IMPORT_ALIASES = {"pruned_hymba_block_idx": ("block",), "pruned_self_attn_idx": ("attn",), "pruned_moe_idx": ("mlp",)}
CHANNELS_KEY = "pruned_mlp_channels"
# the order imports list their components in (the paper's hybrid stage order)
IMPORT_ORDER = ("block", "attn", "mlp", "mlp_channels", "ssm")


def import_keys(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Each reference key this model's family reads, and the kinds (at one layer) an entry of it stands for."""
    family, _ = describe_model(model)
    if family.reference_keys is not None:
        return dict(family.reference_keys)
    own = {KINDS[name].reference_key: (name,) for name in IMPORT_ORDER if KINDS[name].reference_key}
    return {**own, **{k: v for k, v in IMPORT_ALIASES.items() if k not in own}}


def export_keys(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Per kind, the reference keys a removed component of it is written under."""
    family, _ = describe_model(model)
    if family.reference_export is not None:
        return dict(family.reference_export)
    return {name: (KINDS[name].reference_key,) for name in IMPORT_ORDER if KINDS[name].reference_key}


def is_reference_config(data: object) -> bool:
    keys = {*(k.reference_key for k in KINDS.values() if k.reference_key), *IMPORT_ALIASES, CHANNELS_KEY}
    return isinstance(data, dict) and any(k in data for k in keys)


def _layers_holding(catalogue: Catalogue, kinds: tuple[str, ...]) -> list[int]:
    """Layers that hold every one of ``kinds`` (the n-th of them is entry n of a key)."""
    held = [{c.layer for c in catalogue.components([kind])} for kind in kinds]
    return sorted(set.intersection(*held))


def _dense_mlp_groups(model: nn.Module, catalogue: Catalogue, channel_reorder: str | None) -> dict[int, list[int]]:
    """Layer of each dense MLP -> channel count of each of its groups."""
    _, layers = describe_model(model)
    return {layer: [len(g) for g in channel_groups(layers[layer], catalogue.channel_group_size, channel_reorder)]
            for layer in _layers_holding(catalogue, ("mlp_channels",))}


def _indices(data: dict, key: str) -> list[int]:
    """The list under ``key``: distinct whole numbers, or a ShedderError that says what is there instead."""
    if key not in data:
        return []
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ShedderError(f"{key} must be a list of whole numbers such as [0, 3], not {str(value)[:80]}.")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise ShedderError(f"{key} lists {', '.join(map(str, twice))} more than once.")
    return value


def _kept_widths(data: dict) -> dict[str, int]:
    value = data.get(CHANNELS_KEY)
    if CHANNELS_KEY in data and not (isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values())):
        raise ShedderError(f"{CHANNELS_KEY} must map MLP numbers to kept channel counts, such as {{\"0\": 1536}}, "
                           f"not {str(value)[:80]}.")
    return value or {}


def _mapped(data: dict, model: nn.Module, grouping: Plan) -> tuple[Catalogue, list[tuple[str, str, list[Component]]]]:
    """Each entry of a reference config and the components of ``model`` it stands for: (key, entry, components)."""
    if not isinstance(data, dict):
        raise ShedderError("A reference pruning config is a JSON object such as {\"pruned_ssm_idx\": [3, 7]}.")
    catalogue = catalogue_of(model, grouping.channel_group_size)
    keys = import_keys(model)
    unknown = [k for k in data if k not in keys and k != CHANNELS_KEY]
    if unknown:
        raise ShedderError(f"Unknown key(s) in the reference config: {', '.join(map(str, unknown))[:200]}.")
    mapped: list[tuple[str, str, list[Component]]] = []
    for key, kinds in keys.items():
        holders = _layers_holding(catalogue, kinds)
        kind = "+".join(kinds)
        for ordinal in _indices(data, key):
            if not holders:
                raise ShedderError(f"{key}: this {catalogue.model_type} model has no '{kind}' components.")
            if not 0 <= ordinal < len(holders):
                raise ShedderError(f"{key}: {ordinal!r} is not one of the model's {len(holders)} '{kind}' "
                                   f"components (0..{len(holders) - 1}).")
            mapped.append((key, str(ordinal), [Component(k, holders[ordinal]) for k in kinds]))
    groups = _dense_mlp_groups(model, catalogue, grouping.channel_reorder)
    mlp_layers = list(groups)
    for ordinal, kept in _kept_widths(data).items():
        if not str(ordinal).isdigit() or int(ordinal) >= len(mlp_layers):
            raise ShedderError(f"{CHANNELS_KEY}: MLP {ordinal!r} does not exist (this model has {len(mlp_layers)} "
                               "MLPs with channel groups).")
        layer = mlp_layers[int(ordinal)]
        sizes = groups[layer]
        if not 0 < kept <= sum(sizes):
            raise ShedderError(f"{CHANNELS_KEY}: MLP {ordinal} has {sum(sizes)} channels; the channels kept must be "
                               f"from 1 to {sum(sizes)}, not {kept}.")
        to_remove, index, gone = sum(sizes) - int(kept), len(sizes), []
        while to_remove > 0 and index > 0:
            index -= 1
            to_remove -= sizes[index]
            gone.append(Component("mlp_channels", layer, index))
        if to_remove != 0 or int(kept) <= 0:
            raise ShedderError(f"{CHANNELS_KEY}: keeping {kept} of {sum(sizes)} channels in MLP {ordinal} is not a "
                               f"whole number of groups of {catalogue.channel_group_size}; pass the group size the "
                               "config was made with (--channel-group-size).")
        mapped.append((CHANNELS_KEY, str(ordinal), gone))
    seen: dict[Component, str] = {}
    for key, ordinal, components in mapped:
        for c in components:
            if c in seen:
                raise ShedderError(f"{key} {ordinal} and {seen[c]} both name {c}; list each component once.")
            seen[c] = f"{key} {ordinal}"
    return catalogue, mapped


def from_reference(data: dict, model: nn.Module, grouping: Plan | None = None) -> Plan:
    """A plan for ``model`` from a reference pruning config (channel groups as ``grouping``, a plan, groups them)."""
    grouping = grouping or Plan()
    catalogue, mapped = _mapped(data, model, grouping)
    removed = [c for kind in IMPORT_ORDER for _, _, components in mapped for c in components if c.kind == kind]
    return Plan(removed, catalogue.model_type, catalogue.n_layers, model_fingerprint(model),
                catalogue.channel_group_size, grouping.channel_reorder)


def describe_mapping(data: dict, model: nn.Module, grouping: Plan | None = None) -> str:
    """One line: which of ``model``'s components each entry of a reference config became, e.g.
    ``pruned_ssm_idx 0 -> ssm@0, 1 -> ssm@2``. The format names no model, so the same file means other
    layers on another hybrid layout."""
    catalogue, mapped = _mapped(data, model, grouping or Plan())
    parts: dict[str, list[str]] = {}
    for key, ordinal, components in mapped:
        if key == CHANNELS_KEY:
            indices = sorted(c.index for c in components)
            target = f"mlp_channels@{components[0].layer}[{indices[0]}..{indices[-1]}]" if indices else "nothing"
        else:
            target = "+".join(map(str, components))
        parts.setdefault(key, []).append(f"{ordinal} -> {target}")
    text = "; ".join(f"{key} {', '.join(items)}" for key, items in parts.items()) or "nothing removed"
    return f"{text} (on this {catalogue.model_type} with {catalogue.n_layers} layers)"


def plan_from_data(data: object, model: nn.Module, grouping: Plan | None = None,
                   allow_other_weights: bool = False) -> tuple[Plan, str | None]:
    """The plan in a file's JSON, ours or a reference config, checked against ``model``, and for a reference
    config the mapping it was read with (the format carries no model identity), else None. ``grouping`` (a
    plan) groups MLP channels for a reference config; ours carries its own."""
    if is_reference_config(data):
        return from_reference(data, model, grouping), describe_mapping(data, model, grouping)
    plan = Plan.from_dict(data)
    plan.check(model, strict_weights=not allow_other_weights)
    return plan, None


def to_reference(plan: Plan, model: nn.Module) -> dict:
    """The reference config for ``plan``; refuses what the format cannot express."""
    plan.check(model)
    catalogue = catalogue_of(model, plan.channel_group_size)
    keys, exported = import_keys(model), export_keys(model)
    out: dict = {key: [] for kind, names in exported.items() if catalogue.components([kind]) for key in names}
    removed_groups: dict[int, set[int]] = {}
    for c in plan.removed:
        if c.kind in exported:
            for key in exported[c.kind]:
                out[key].append(_layers_holding(catalogue, keys[key]).index(c.layer))
        elif KINDS[c.kind].grouped:
            removed_groups.setdefault(c.layer, set()).add(c.index)
        else:
            raise ShedderError(f"{c}: the reference format cannot express {c.kind}; export our format instead.")
    if removed_groups:
        groups = _dense_mlp_groups(model, catalogue, plan.channel_reorder)
        kept = {}
        for ordinal, (layer, sizes) in enumerate(groups.items()):
            gone = removed_groups.get(layer, set())
            if gone != set(range(len(sizes) - len(gone), len(sizes))):
                raise ShedderError(f"Layer {layer}: removed channel groups {sorted(gone)} are not the last groups; "
                                   "the reference format only removes channels from the end.")
            kept[str(ordinal)] = sum(sizes) - sum(sizes[i] for i in gone)
        out[CHANNELS_KEY] = kept
    return out
