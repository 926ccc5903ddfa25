"""Hymba (``nvidia/Hymba-1.5B-Base`` / ``-Instruct``, model code shipped with the checkpoint): each layer's
hybrid-head mixer (``mamba``) runs attention heads and a Mamba-1 scan in parallel on one input projection,
normalises each branch (``pre_avg_layernorm1`` / ``2``), averages them and projects back; then an MLP
(``moe.experts.0``). Meta tokens, sliding-window attention outside ``global_attn_idx``, and key-value sharing
(``kv_reuse_group``: the later layers of a group reuse the first one's keys and values).

As the reference code (Hymba-Pruning) prunes it: the attention branch (``attn``) and the SSM branch (``ssm``)
each stop contributing to the average (their pre-average norm is zeroed; the average keeps its divisor of 2),
the MLP and its channel groups as in other families, and whole blocks only where no later layer reuses the
block's keys and values: the last layer of each key-value group and the global-attention layers. Heads are
not offered: both branches are normalised over all heads before ``out_proj``, so one head is not separable.
The reference's ``pruned_hymba_block_idx`` (the whole mixer) reads as ``attn`` + ``ssm`` of that layer (the
same function, ``out_proj`` having no bias).

Extraction writes whole-block removals and a uniform MLP width as a Hymba folder with the checkpoint's own
code (loaded with ``trust_remote_code=True``); removed branches and partial MLPs are kept as masks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..kinds.base import numel, rows_params
from .base import HYBRID_TARGETS, Family, LayerParts, add_mlp, layers_of, same_layers_config

if TYPE_CHECKING:
    from ..extraction.extract_layers import Layers


def block_candidates(config) -> set[int]:
    """Layers whose keys and values no later layer reuses (the reference's rule for whole blocks)."""
    groups = [list(g) for g in (getattr(config, "kv_reuse_group", None) or [])]
    grouped = {layer for g in groups for layer in g}
    free = {g[-1] for g in groups} | set(getattr(config, "global_attn_idx", None) or [])
    return free | (set(range(config.num_hidden_layers)) - grouped)


def kv_producer(config, layer: int) -> int:
    """The layer whose keys and values ``layer`` reuses (itself when it makes its own)."""
    for group in getattr(config, "kv_reuse_group", None) or []:
        if layer in group[1:]:
            return group[0]
    return layer


def _ssm_branch_params(mixer: nn.Module) -> int:
    """The SSM branch alone: its x and gate rows of ``in_proj``, the conv, the scan's parameters and norm."""
    own = [mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D, mixer.pre_avg_layernorm2]
    own += [m for m in (mixer.dt_layernorm, mixer.B_layernorm, mixer.C_layernorm) if m is not None]
    return rows_params(mixer.in_proj, 2 * mixer.intermediate_size) + numel(own, set())


def _attn_branch_params(mixer: nn.Module, keeps_kv: bool) -> int:
    """The attention branch alone: its query rows of ``in_proj`` (and key/value rows unless a later layer reuses
    them) and its norm."""
    rows = mixer.attn_hidden_size
    if not mixer.reuse_kv and not keeps_kv:
        rows += mixer.k_hidden_size + mixer.v_hidden_size
    return rows_params(mixer.in_proj, rows) + numel([mixer.pre_avg_layernorm1], set())


def describe(model: nn.Module) -> list[LayerParts]:
    blocks = block_candidates(model.config)
    out = []
    for i, layer in enumerate(layers_of(model)):
        mixer = layer.mamba
        parts = LayerParts(i, layer, offers_block=i in blocks, ssm=mixer, ssm_version=1, attn=mixer.self_attn,
                           ssm_out=[mixer.pre_avg_layernorm2], attn_out=[mixer.pre_avg_layernorm1])
        parts.freed = {"ssm": _ssm_branch_params(mixer), "attn": _attn_branch_params(mixer, i not in blocks)}
        add_mlp(parts, layer.moe.experts[0], layer.pre_moe_layernorm)
        out.append(parts)
    return out


def edit_config(data: dict, layers: Layers, config) -> None:
    """Layer count, and the per-layer lists renumbered: global attention layers, key-value groups."""
    same_layers_config(data, layers, config)
    new = layers.new_index
    data["global_attn_idx"] = [new[old] for old in config.global_attn_idx or [] if old in new]
    if getattr(config, "kv_reuse_group", None):
        groups = [[new[old] for old in group if old in new] for group in config.kv_reuse_group]
        data["kv_reuse_group"] = [g for g in groups if g]
    if isinstance(data.get("conv_dim"), dict):  # per layer, keyed by the layer number
        data["conv_dim"] = {str(new[int(old)]): v for old, v in data["conv_dim"].items() if int(old) in new}
    if isinstance(data.get("layer_type"), list) and len(data["layer_type"]) == layers.n_layers:
        data["layer_type"] = layers.keep(data["layer_type"])


FAMILY = Family(
    ("hymba",), describe, block_output=lambda hidden: (hidden, None), edit_config=edit_config,
    mlp_width_field="intermediate_size", lora_targets=HYBRID_TARGETS,
    notes="hybrid heads: `attn` and `ssm` are the mixer's parallel branches; blocks only where no later layer "
          "reuses their keys and values",
    reference_keys={"pruned_hymba_block_idx": ("attn", "ssm"), "pruned_self_attn_idx": ("attn",),
                    "pruned_ssm_idx": ("ssm",), "pruned_moe_idx": ("mlp",)},
    reference_export={"block": ("pruned_hymba_block_idx", "pruned_moe_idx"), "attn": ("pruned_self_attn_idx",),
                      "ssm": ("pruned_ssm_idx",), "mlp": ("pruned_moe_idx",)},
    pruned_layout=False, reads_from=kv_producer,
)
