"""Architecture adapters: where each family keeps its layers, Mamba mixers, attention and MLPs.

One adapter per transformers ``config.model_type``, in ``ADAPTERS``. An adapter turns a loaded model
into a list of :class:`LayerParts`, a plain description the catalogue and the masks work from, so
neither needs to know any family.

Zamba2 shares its transformer blocks between several hybrid layers. The shared weights are never
edited by a mask and never counted as freed: removing the shared block at one hybrid layer
zeroes that layer's own ``linear`` projection of the shared block's output (the only per-layer
weight on that path), so every other invocation of the shared block is untouched. Each hybrid layer
also owns one slot of the shared blocks' LoRA adapter lists; those count as freed with its block
or attention.

A model extracted with a pruned layout (``shedder extract``; model type ``shedder_pruned_<family>``)
is described by its family's adapter, less what is gone or what the smaller modules no longer let
us describe (``_pruned``): a mixer without its scan offers no ``ssm``/``ssm_heads``, a removed
attention or MLP (a module without weights) is not offered, a mixer whose heads were narrowed behind
its gated norm offers neither ``ssm`` nor ``ssm_heads``, and heads silenced to keep grouped-query
attention's groups equal (zero output columns) are not offered again.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from .errors import ShedderError

OUTPUT_PARAM_NAMES = {"down_proj", "output_linear", "fc2_latent_proj"}


@dataclass
class LayerParts:
    """The removable parts of one residual layer, as module references."""

    index: int
    layer: nn.Module
    offers_block: bool = True
    ssm: nn.Module | None = None  # a Mamba mixer
    ssm_version: int | None = None  # 1: Mamba (x_proj, dt_proj); 2: Mamba-2 (heads, fused in_proj)
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


@dataclass(frozen=True)
class Adapter:
    """How to find the parts of one model family."""

    model_type: str
    describe: Callable[[nn.Module], list[LayerParts]]
    block_output: Callable[[torch.Tensor], object] = lambda hidden: hidden  # what a layer's forward returns
    notes: str = ""


def _backbone(model: nn.Module) -> nn.Module:
    for name in ("backbone", "model"):
        inner = getattr(model, name, None)
        if inner is not None and hasattr(inner, "layers"):
            return inner
    if hasattr(model, "layers"):
        return model
    raise ShedderError(f"Cannot find the layers of {type(model).__name__}.")


def layers_of(model: nn.Module) -> nn.ModuleList:
    return _backbone(model).layers


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _llama_like_mlp(parts: LayerParts, mlp: nn.Module, norm: nn.Module | None) -> None:
    """Fill the MLP fields for a gated (gate/up/down) or plain (up/down) MLP, or an MoE block."""
    if not _has_weights(mlp):  # a removed MLP of a pruned model
        return
    parts.mlp = mlp
    parts.mlp_exclusive = [norm] if norm is not None else []
    down = getattr(mlp, "down_proj", None)
    ins = [getattr(mlp, n) for n in ("gate_proj", "up_proj") if isinstance(getattr(mlp, n, None), nn.Linear)]
    if isinstance(down, nn.Linear) and ins:
        parts.mlp_dense, parts.mlp_in, parts.mlp_down = True, ins, down


def _attention(parts: LayerParts, attn: nn.Module, norm: nn.Module | None) -> None:
    if not isinstance(getattr(attn, "o_proj", None), nn.Linear):  # a removed attention of a pruned model
        return
    parts.attn = attn
    parts.attn_out = [attn.o_proj]
    parts.attn_exclusive = [norm] if norm is not None else []
    parts.attn_head_dim = attn.head_dim


def _mamba1(model: nn.Module) -> list[LayerParts]:
    return [LayerParts(i, layer, ssm=layer.mixer, ssm_version=1) for i, layer in enumerate(layers_of(model))]


def _mamba2(model: nn.Module) -> list[LayerParts]:
    return [LayerParts(i, layer, ssm=layer.mixer, ssm_version=2) for i, layer in enumerate(layers_of(model))]


def _llama(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer)
        _attention(parts, layer.self_attn, layer.input_layernorm)
        _llama_like_mlp(parts, layer.mlp, layer.post_attention_layernorm)
        out.append(parts)
    return out


def _mixer_then_ffn(model: nn.Module, ssm_version: int) -> list[LayerParts]:
    """Bamba and Jamba: each layer is (Mamba mixer | attention) then a feed-forward (MLP or MoE)."""
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer)
        if getattr(layer, "self_attn", None) is not None:
            _attention(parts, layer.self_attn, layer.input_layernorm)
        else:
            parts.ssm, parts.ssm_version = layer.mamba, ssm_version
        _llama_like_mlp(parts, layer.feed_forward, layer.pre_ff_layernorm)
        out.append(parts)
    return out


def _granitemoehybrid(model: nn.Module) -> list[LayerParts]:
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer)
        if getattr(layer, "mamba", None) is not None:
            parts.ssm, parts.ssm_version = layer.mamba, 2
        else:
            _attention(parts, layer.self_attn, layer.input_layernorm)
        ffn = nn.ModuleList([m for m in (getattr(layer, "block_sparse_moe", None), layer.shared_mlp)
                             if m is not None and _has_weights(m)])
        if len(ffn):
            parts.mlp, parts.mlp_exclusive = ffn, [layer.post_attention_layernorm]
        out.append(parts)
    return out


def _nemotron_h(model: nn.Module) -> list[LayerParts]:
    """Each NemotronH block is a norm plus one mixer: Mamba-2, attention, MLP or MoE."""
    out = []
    for i, block in enumerate(layers_of(model)):
        kind = block.block_type
        if kind in ("mamba", "linear_attention"):
            parts = LayerParts(i, block, ssm=block.mixer, ssm_version=2)
        elif kind in ("attention", "full_attention"):
            parts = LayerParts(i, block, offers_block=False)
            _attention(parts, block.mixer, block.norm)
        else:  # mlp or moe
            parts = LayerParts(i, block, offers_block=False)
            _llama_like_mlp(parts, block.mixer, block.norm)
        out.append(parts)
    return out


def _falcon_h1(model: nn.Module) -> list[LayerParts]:
    """Falcon-H1 runs attention and a Mamba-2 mixer in parallel (hybrid heads), then an MLP."""
    out = []
    for i, layer in enumerate(layers_of(model)):
        parts = LayerParts(i, layer, ssm=layer.mamba, ssm_version=2)
        _attention(parts, layer.self_attn, None)  # input_layernorm also feeds the mixer
        _llama_like_mlp(parts, layer.feed_forward, layer.pre_ff_layernorm)
        out.append(parts)
    return out


def _zamba2(model: nn.Module) -> list[LayerParts]:
    out = []
    layers = layers_of(model)
    # hybrid layers may hold distinct module objects whose weights are tied; counting dedupes weights
    shared_blocks = list({id(l.shared_transformer): l.shared_transformer
                          for l in layers if hasattr(l, "shared_transformer")}.values())
    hybrid_ordinal = 0
    for i, layer in enumerate(layers):
        if hasattr(layer, "shared_transformer"):  # hybrid layer
            parts = LayerParts(i, layer, ssm=layer.mamba_decoder.mamba, ssm_version=2)
            parts.attn = layer.shared_transformer
            parts.attn_out = [layer.linear]
            parts.attn_exclusive = [layer.linear]
            # the n-th hybrid layer's LoRA adapters sit in slot n of every shared block's adapter lists
            parts.own_inside_shared = [module for block in shared_blocks for name, module in block.named_modules()
                                       if name.endswith(f"_adapter_list.{hybrid_ordinal}")]
            hybrid_ordinal += 1
        else:
            parts = LayerParts(i, layer, ssm=layer.mamba, ssm_version=2)
        out.append(parts)
    return out


ADAPTERS: dict[str, Adapter] = {
    a.model_type: a
    for a in [
        Adapter("mamba", _mamba1),
        Adapter("falcon_mamba", _mamba1),
        Adapter("mamba2", _mamba2),
        Adapter("llama", _llama),
        Adapter("bamba", lambda m: _mixer_then_ffn(m, 2), block_output=lambda h: (h, None)),
        Adapter("jamba", lambda m: _mixer_then_ffn(m, 1)),
        Adapter("granitemoehybrid", _granitemoehybrid),
        Adapter("nemotron_h", _nemotron_h, notes="attention and MLP layers are removed as `attn` / `mlp`"),
        Adapter("falcon_h1", _falcon_h1, block_output=lambda h: (h,)),
        Adapter(
            "zamba2",
            _zamba2,
            notes="`attn` at a hybrid layer is that layer's use of the shared attention+MLP block; "
            "shared weights are never counted as freed",
        ),
    ]
}


PRUNED_PREFIX = "shedder_pruned_"  # model type of a folder written by shedder extract with a pruned layout


def _silenced(linear: nn.Linear, count: int, width: int) -> frozenset[int]:
    """Groups of ``width`` input columns of ``linear`` that are all zero."""
    with torch.no_grad():
        zero = (linear.weight.reshape(linear.out_features, count, width) == 0).all(dim=2).all(dim=0)
    return frozenset(int(i) for i in torch.nonzero(zero).flatten())


def _prune_parts(parts: LayerParts) -> LayerParts:
    """What is left to describe of one layer of a pruned model (see the module docstring)."""
    from .ssm_layout import mamba1_layout, mamba2_layout

    if parts.ssm is not None:
        try:  # a mixer without its scan has no A_log; one narrowed behind its gated norm has no Mamba-2 layout
            layout = (mamba1_layout if parts.ssm_version == 1 else mamba2_layout)(parts.ssm)
        except (AttributeError, ShedderError):
            parts.ssm = parts.ssm_version = None
        else:
            if parts.ssm_version == 2:
                parts.silenced_ssm_heads = _silenced(parts.ssm.out_proj, layout.heads, layout.head_dim)
    if parts.attn is not None and parts.attn_head_dim:
        o_proj = parts.attn.o_proj
        parts.silenced_attn_heads = _silenced(o_proj, o_proj.in_features // parts.attn_head_dim, parts.attn_head_dim)
    return parts


def _pruned(describe: Callable[[nn.Module], list[LayerParts]]) -> Callable[[nn.Module], list[LayerParts]]:
    return lambda model: [_prune_parts(parts) for parts in describe(model)]


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_type: str) -> Adapter:
    """The family's adapter; for ``shedder_pruned_<family>`` the family's, describing what is left."""
    family = model_type.removeprefix(PRUNED_PREFIX)
    if family not in ADAPTERS:
        raise ShedderError(
            f"Architecture {model_type!r} is not supported. Supported model types: "
            f"{', '.join(supported_model_types())} (and models extracted from them, {PRUNED_PREFIX}<type>)."
        )
    adapter = ADAPTERS[family]
    if family == model_type:
        return adapter
    return replace(adapter, model_type=model_type, describe=_pruned(adapter.describe),
                   notes=f"pruned from {family}; only what is left is offered. {adapter.notes}".strip())


def describe_model(model: nn.Module) -> tuple[Adapter, list[LayerParts]]:
    adapter = adapter_for(model.config.model_type)
    return adapter, adapter.describe(model)
