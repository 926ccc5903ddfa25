"""Which layers an extracted model keeps, and the stock config and weights that describe only those.

``Layers`` says which source layers survive (``kept[new] = old``) and which Zamba2 hybrid layers lose
their shared-transformer call and become plain Mamba layers (``to_mamba``). ``build_smaller`` makes
a stock model of the same class from a rewritten config and copies the kept weights in, renumbered.

How each family's config describes its layer layout (the fields rewritten here):

- mamba, falcon_mamba, mamba2, llama, falcon_h1: every layer is alike; ``num_hidden_layers``
  (plus a stored ``layer_types`` list, where a config has one).
- bamba: ``attn_layer_indices``.
- granitemoehybrid: ``layer_types``.
- nemotron_h: ``layers_block_type`` (``hybrid_override_pattern`` is derived from it).
- zamba2: ``layers_block_type`` and ``hybrid_layer_ids``. The shared transformer blocks are kept;
  each hybrid layer's own adapter slots inside them are renumbered, and the slots of a hybrid layer
  that is removed or becomes a Mamba layer are dropped. With several shared blocks
  (``num_mem_blocks`` > 1) the blocks are assigned to hybrid layers in turn, so a change must keep
  that assignment.
- jamba: attention and expert layers are placed periodically (``attn_layer_period/offset``,
  ``expert_layer_period/offset``), with no per-layer list the config accepts; a removal whose
  remaining layers are not periodic is refused.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ShedderError

_LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")
_ADAPTER_SLOT = re.compile(r"(_adapter_list)\.(\d+)\.")
_ZAMBA2_HYBRID_ONLY = re.compile(r"^(linear|shared_transformer)\.")


@dataclass(frozen=True)
class Layers:
    """Which layers of the source model survive (``kept[new] = old``), and which Zamba2 hybrid layers
    become plain Mamba layers (source numbers)."""

    n_layers: int
    kept: tuple[int, ...]
    to_mamba: frozenset[int] = frozenset()

    @property
    def new_index(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}

    def keep(self, per_layer: list) -> list:
        return [per_layer[old] for old in self.kept]

    @property
    def removed(self) -> list[int]:
        return sorted(set(range(self.n_layers)) - set(self.kept))


# --- configs ------------------------------------------------------------------------------------

ConfigEdit = Callable[[dict, Layers, object], None]


def _plain(data: dict, layers: Layers, config) -> None:
    """Families whose layers are all alike: the layer count, and any stored per-layer type list."""
    data["num_hidden_layers"] = len(layers.kept)
    for key in ("layer_types", "layers_block_type"):
        if isinstance(data.get(key), list) and len(data[key]) == layers.n_layers:
            data[key] = layers.keep(data[key])


def _bamba(data: dict, layers: Layers, config) -> None:
    _plain(data, layers, config)
    attn = set(config.attn_layer_indices or [])
    new = layers.new_index
    data["attn_layer_indices"] = [new[old] for old in sorted(attn) if old in new] or None


def _nemotron_h(data: dict, layers: Layers, config) -> None:
    data["layers_block_type"] = layers.keep(list(config.layers_block_type))
    data.pop("hybrid_override_pattern", None)
    data.pop("num_hidden_layers", None)


def _zamba2(data: dict, layers: Layers, config) -> None:
    types = ["mamba" if old in layers.to_mamba else config.layers_block_type[old] for old in layers.kept]
    data["layers_block_type"] = types
    data["hybrid_layer_ids"] = [i for i, t in enumerate(types) if t == "hybrid"]
    data["num_hidden_layers"] = len(types)
    blocks = config.num_mem_blocks
    moved = [(old, new) for old, new in zamba2_slot_map(config, layers).items() if old % blocks != new % blocks]
    if moved:
        raise ShedderError(
            f"This Zamba2 model has {blocks} shared transformer blocks, assigned to its hybrid layers in turn; "
            "this removal would give the remaining hybrid layers other shared blocks than they use now. "
            f"Remove hybrid layers (or their attention) in runs of {blocks} (or none) to extract, or keep using masks."
        )


def zamba2_slot_map(config, layers: Layers) -> dict[int, int]:
    """Old hybrid-layer number -> new one, for hybrid layers that stay hybrid."""
    hybrid = [i for i, t in enumerate(config.layers_block_type) if t == "hybrid"]
    kept = set(layers.kept) - layers.to_mamba
    survivors = [k for k, layer in enumerate(hybrid) if layer in kept]
    return {old: new for new, old in enumerate(survivors)}


def _periodic(flags: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with ``flags[i] == (i % period == offset)``, or None."""
    n = len(flags)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(flag == (i % period == offset) for i, flag in enumerate(flags)):
                return period, offset
    return None


def _jamba(data: dict, layers: Layers, config) -> None:
    data["num_hidden_layers"] = len(layers.kept)
    attn = [t == "attention" for t in layers.keep(list(config.layers_block_type))]
    experts = [n > 1 for n in layers.keep(list(config.layers_num_experts))]
    for name, flags in (("attn", attn), ("expert", experts)):
        fit = _periodic(flags)
        if fit is None:
            where = [i for i, flag in enumerate(flags) if flag]
            raise ShedderError(
                f"After this removal the Jamba {name} layers would sit at {where}, which Jamba's config cannot "
                f"describe ({name}_layer_period/{name}_layer_offset only place them periodically, and it accepts "
                "no per-layer list). Choose blocks whose removal keeps the pattern periodic, or keep using masks."
            )
        data[f"{name}_layer_period"], data[f"{name}_layer_offset"] = fit


CONFIG_EDITS: dict[str, ConfigEdit] = {
    "mamba": _plain,
    "falcon_mamba": _plain,
    "mamba2": _plain,
    "llama": _plain,
    "falcon_h1": _plain,
    "granitemoehybrid": _plain,
    "bamba": _bamba,
    "nemotron_h": _nemotron_h,
    "zamba2": _zamba2,
    "jamba": _jamba,
}


def smaller_config(config, layers: Layers):
    """A config of the same class describing only the kept layers (re-validated by the class)."""
    model_type = config.model_type
    if model_type not in CONFIG_EDITS:
        raise ShedderError(f"Extraction is not implemented for {model_type!r} yet; masks still work for it.")
    data = copy.deepcopy(config.to_dict())
    CONFIG_EDITS[model_type](data, layers, config)
    new = type(config).from_dict(data)
    if new.num_hidden_layers != len(layers.kept):
        raise RuntimeError(f"{model_type}: the new config has {new.num_hidden_layers} layers, "
                           f"expected {len(layers.kept)}.")
    return new


# --- weights ------------------------------------------------------------------------------------

def _renamer(config, layers: Layers) -> Callable[[str], str | None]:
    """Maps a source state-dict key to its key in the smaller model, or None to drop it."""
    new_layer = layers.new_index
    slots = zamba2_slot_map(config, layers) if config.model_type == "zamba2" else None

    def rename(key: str) -> str | None:
        match = _LAYER_KEY.search(key)
        if match is None:
            return key
        old = int(match.group(2))
        if old not in new_layer:
            return None
        head, rest = f"{key[:match.start(2)]}{new_layer[old]}.", key[match.end(2) + 1:]
        if old in layers.to_mamba:  # a Zamba2 hybrid layer without its shared-transformer call
            if _ZAMBA2_HYBRID_ONLY.match(rest):
                return None
            return head + rest.removeprefix("mamba_decoder.")
        key = head + rest
        if slots is not None:
            slot = _ADAPTER_SLOT.search(key)
            if slot is not None:
                k = int(slot.group(2))
                if k not in slots:
                    return None
                key = f"{key[:slot.start(2)]}{slots[k]}{key[slot.end(2):]}"
        return key

    return rename


def build_smaller(model: nn.Module, layers: Layers) -> nn.Module:
    """A new stock model from the smaller config holding the kept weights, in the source dtype, on the CPU."""
    from transformers import AutoModelForCausalLM

    config = model.config
    new_config = smaller_config(config, layers)
    dtype = next(model.parameters()).dtype
    small = AutoModelForCausalLM.from_config(new_config, dtype=dtype)
    rename = _renamer(config, layers)
    weights = {}
    for key, tensor in model.state_dict().items():
        new_key = rename(key)
        if new_key is not None:
            weights[new_key] = tensor
    expected = set(small.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise RuntimeError(f"Extraction of {config.model_type} does not map the weights one to one: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}.")
    with torch.no_grad():
        small.load_state_dict(weights, strict=True)
    return small.eval()
