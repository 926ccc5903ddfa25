"""Which layers an extracted model keeps, and the stock config and weights that describe only those.

``Layers`` says which source layers survive (``kept[new] = old``) and which Zamba2 hybrid layers lose
their shared-transformer call and become plain Mamba layers (``to_mamba``). ``build_smaller`` makes
a stock model of the same class from a config its family rewrote for the kept layers
(``Family.edit_config``, in ``shedder.families``) and copies the kept weights in, renumbered.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ShedderError
from ..families import FAMILIES

_LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")
_ADAPTER_SLOT = re.compile(r"(_adapter_list)\.(\d+)\.")


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

def smaller_config(config, layers: Layers):
    """A config of the same class describing only the kept layers (re-validated by the class)."""
    model_type = config.model_type
    if model_type not in FAMILIES:
        raise ShedderError(f"Extraction is not implemented for {model_type!r} yet; masks still work for it.")
    new = type(config).from_dict(FAMILIES[model_type].smaller_config_dict(config, layers))
    if new.num_hidden_layers != len(layers.kept):
        raise RuntimeError(f"{model_type}: the new config has {new.num_hidden_layers} layers, "
                           f"expected {len(layers.kept)}.")
    return new


# --- weights ------------------------------------------------------------------------------------

def _renamer(config, layers: Layers) -> Callable[[str], str | None]:
    """Maps a source state-dict key to its key in the smaller model, or None to drop it."""
    new_layer = layers.new_index
    family = FAMILIES[config.model_type]
    slots = family.adapter_slots(config, layers) if family.adapter_slots is not None else None

    def rename(key: str) -> str | None:
        match = _LAYER_KEY.search(key)
        if match is None:
            return key
        old = int(match.group(2))
        if old not in new_layer:
            return None
        head, rest = f"{key[:match.start(2)]}{new_layer[old]}.", key[match.end(2) + 1:]
        if old in layers.to_mamba:  # a hybrid layer without its shared-transformer call
            rest = family.key_as_mamba_layer(rest)
            return None if rest is None else head + rest
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
    if getattr(config, "auto_map", None):  # a model that ships its own code: the same (already loaded) class
        small = type(model)._from_config(new_config, dtype=dtype)
    else:
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
