"""What a model family is, and the pieces the families' descriptions are built from.

A :class:`Family` is everything shedder knows about one architecture: how to find its removable parts
(``describe``, giving one :class:`LayerParts` per residual layer), what a skipped layer returns, how its
config is rewritten when layers are extracted, which config field sets its MLP width, which projections
LoRA trains, and its own rules (Zamba2's shared block).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from torch import nn

from ..errors import ShedderError

if TYPE_CHECKING:
    from ..extraction.extract_layers import Layers

OUTPUT_PARAM_NAMES = {"down_proj", "output_linear", "fc2_latent_proj"}

# LoRA targets (short module names) by what they belong to
SSM_TARGETS = ("in_proj", "out_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "input_linear", "output_linear")
HYBRID_TARGETS = SSM_TARGETS + ATTENTION_TARGETS + MLP_TARGETS


@dataclass
class LayerParts:
    """The removable parts of one residual layer, as module references."""

    index: int
    layer: nn.Module
    offers_block: bool = True
    ssm: nn.Module | None = None  # a Mamba mixer
    ssm_version: int | None = None  # 1: Mamba (x_proj, dt_proj); 2: Mamba-2 (heads, fused in_proj)
    ssm_out: list[nn.Module] = field(default_factory=list)  # a parallel SSM branch: zeroing these removes it
    freed: dict[str, int] = field(default_factory=dict)  # kind -> parameters freed, where the family counts them
    attn: nn.Module | None = None  # attention module (heads live in its o_proj)
    attn_out: list[nn.Linear] = field(default_factory=list)  # zeroing these zeroes attention's contribution
    attn_exclusive: list[nn.Module] = field(default_factory=list)  # modules freed with the attention
    attn_head_dim: int | None = None  # None: heads are not offered (e.g. a shared block)
    mlp: nn.Module | None = None
    mlp_exclusive: list[nn.Module] = field(default_factory=list)  # e.g. the MLP's own pre-norm
    mlp_dense: bool = False  # a plain MLP with an up side and one down projection: channel groups offered
    mlp_in: list[nn.Linear] = field(default_factory=list)  # gate/up projections (channels are rows)
    mlp_down: nn.Linear | None = None  # down projection (channels are columns)
    own_inside_shared: list[nn.Module] = field(default_factory=list)  # Zamba2: this layer's adapters in shared blocks
    silenced_ssm_heads: frozenset[int] = frozenset()  # pruned models: heads already silenced, not offered
    silenced_attn_heads: frozenset[int] = frozenset()

    def mlp_output_params(self) -> list[nn.Parameter]:
        """Parameters whose zeroing makes the MLP (or MoE) contribute exactly zero."""
        params = []
        for name, param in self.mlp.named_parameters():
            if any(part in OUTPUT_PARAM_NAMES for part in name.split(".")):
                params.append(param)
        if not params:
            raise ShedderError(f"Layer {self.index}: no output projection found in {type(self.mlp).__name__}.")
        return params


ConfigEdit = Callable[[dict, "Layers", object], None]


def same_layers_config(data: dict, layers: Layers, config) -> None:
    """Config edit for families whose layers are all alike: the layer count, and any stored per-layer type
    list."""
    data["num_hidden_layers"] = len(layers.kept)
    for key in ("layer_types", "layers_block_type"):
        if isinstance(data.get(key), list) and len(data[key]) == layers.n_layers:
            data[key] = layers.keep(data[key])


@dataclass(frozen=True)
class Family:
    """One architecture (``config.model_type`` values it covers) and everything shedder knows about it."""

    model_types: tuple[str, ...]
    describe: Callable[[nn.Module], list[LayerParts]]
    block_output: Callable = lambda hidden: hidden  # what a layer's forward returns when the layer is skipped
    edit_config: ConfigEdit = same_layers_config  # rewrites the config dict for the kept layers on extraction
    mlp_width_field: str | None = None  # the config field that sets every dense MLP's width, if one does
    lora_targets: tuple[str, ...] = SSM_TARGETS
    notes: str = ""
    # Zamba2: removing a hybrid layer's attention leaves a Mamba layer; its adapter slots are renumbered
    attn_removal_leaves_mamba_layer: bool = False
    adapter_slots: Callable[[object, Layers], dict[int, int]] | None = None
    key_as_mamba_layer: Callable[[str], str | None] | None = None
    # the reference code's own keys for this family: key -> kinds (at one layer) an entry stands for, and
    # kind -> the keys a removed component of it is written under (None: the kinds' own keys)
    reference_keys: dict[str, tuple[str, ...]] | None = None
    reference_export: dict[str, tuple[str, ...]] | None = None
    pruned_layout: bool = True  # whether extraction can write layers smaller than the config describes
    # (config, layer) -> the earliest layer whose work that layer reads besides its input (Hymba's key-value
    # sharing); a changed layer is recomputed from there
    reads_from: Callable[[object, int], int] = lambda config, layer: layer

    @property
    def name(self) -> str:
        return self.model_types[0]

    def smaller_config_dict(self, config, layers: Layers) -> dict:
        data = copy.deepcopy(config.to_dict())
        self.edit_config(data, layers, config)
        return data


def backbone(model: nn.Module) -> nn.Module:
    for name in ("backbone", "model"):
        inner = getattr(model, name, None)
        if inner is not None and hasattr(inner, "layers"):
            return inner
    if hasattr(model, "layers"):
        return model
    raise ShedderError(f"Cannot find the layers of {type(model).__name__}.")


def layers_of(model: nn.Module) -> nn.ModuleList:
    return backbone(model).layers


def has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def add_mlp(parts: LayerParts, mlp: nn.Module, norm: nn.Module | None) -> None:
    """Fill the MLP fields for a gated (gate/up/down) or plain (up/down) MLP, or an MoE block."""
    if not has_weights(mlp):  # a removed MLP of a pruned model
        return
    parts.mlp = mlp
    parts.mlp_exclusive = [norm] if norm is not None else []
    down = getattr(mlp, "down_proj", None)
    ins = [getattr(mlp, n) for n in ("gate_proj", "up_proj") if isinstance(getattr(mlp, n, None), nn.Linear)]
    if isinstance(down, nn.Linear) and ins:
        parts.mlp_dense, parts.mlp_in, parts.mlp_down = True, ins, down


def add_attention(parts: LayerParts, attn: nn.Module, norm: nn.Module | None) -> None:
    if not isinstance(getattr(attn, "o_proj", None), nn.Linear):  # a removed attention of a pruned model
        return
    parts.attn = attn
    parts.attn_out = [attn.o_proj]
    parts.attn_exclusive = [norm] if norm is not None else []
    parts.attn_head_dim = attn.head_dim
