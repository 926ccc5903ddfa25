"""Smaller building blocks for pruned models. Self-contained: needs only torch and transformers.

This file is copied next to the weights of every model ``shedder extract`` writes with a pruned
layout, together with ``modeling_shedder_pruned.py``, so that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` rebuilds the model without
shedder installed. Shedder uses the very same functions to build the smaller model in memory.

A pruned layout (``config.pruned_layout``) lists, per layer, operations on the stock model's modules::

    {"layers": {"2": [{"op": "remove_ssm", "module": "mixer"},
                      {"op": "ssm_heads", "module": "mixer", "kept": [0, 1, 3]}]}}

``module`` is a dotted path inside the layer. Each operation takes the stock module and returns the
module that replaces it, slicing the stock weights. Loading applies the layout to a freshly built
(still empty) stock model, where only the resulting shapes matter; the checkpoint then fills in the
weights. The operations, and the function each one keeps:

- ``remove_ssm``: a Mamba / Mamba-2 mixer without its scan. The scan output ``y`` is its input ``x``
  (Mamba-2: then the gate, gated norm and ``out_proj`` as before; Mamba-1: ``y = x * silu(z)``), so
  ``A_log``, ``D``, ``dt_bias``/``dt_proj``, ``x_proj`` and the B/C/dt rows of ``in_proj`` and the
  B/C channels of ``conv1d`` are dropped.
- ``ssm_heads`` (``kept``: head numbers): where a gated RMSNorm precedes ``out_proj``, the norm's
  output keeps only the kept heads' channels and ``out_proj`` only their columns; the removed heads
  still run, because the norm normalises over all heads of its group (dropping their activations
  would change the others' outputs). Without that norm (Falcon-H1's default) the heads go whole:
  their rows of ``in_proj`` (z, x, dt), ``conv1d`` channels, ``A_log``/``D``/``dt_bias`` entries and
  ``out_proj`` columns, as long as the kept heads still split evenly over the B/C groups.
- ``attn_heads`` (``kept``: query heads): the removed heads' rows of ``q_proj`` and columns of
  ``o_proj`` go, and key/value heads left without query heads. Grouped-query attention needs equal
  groups, so where the kept heads split unevenly over the key/value heads, each group keeps as many
  query heads as the fullest one, the gaps filled by removed heads whose ``o_proj`` columns are zero
  (``attention_head_slots``); the key/value cache stays as small as the dense model's.
- ``mlp_channels`` (``inputs``, ``output``: projection names; ``kept`` channels, or on disk ``width``):
  rows of the gate/up projections and columns of the down projection.
- ``zero_attention`` / ``zero``: a removed attention / MLP sub-block, which contributes 0;
  ``identity``: the norm that fed it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transformers.activations import ACT2FN


# --- small helpers --------------------------------------------------------------------------------

def _index(indices: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(indices), dtype=torch.long, device=device)


def _parameter(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor.detach())


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear holding exactly ``weight`` and ``bias``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = _parameter(weight)
    if bias is not None:
        linear.bias = _parameter(bias)
    return linear


def linear_rows(linear: nn.Linear, rows: Sequence[int]) -> nn.Linear:
    """``linear`` keeping only output rows ``rows``."""
    idx = _index(rows, linear.weight.device)
    bias = None if linear.bias is None else linear.bias.index_select(0, idx)
    return _linear(linear.weight.index_select(0, idx), bias)


def linear_columns(linear: nn.Linear, columns: Sequence[int]) -> nn.Linear:
    """``linear`` keeping only input columns ``columns``."""
    idx = _index(columns, linear.weight.device)
    return _linear(linear.weight.index_select(1, idx), linear.bias)


def conv_channels(conv: nn.Conv1d, channels: Sequence[int]) -> nn.Conv1d:
    """A depthwise ``conv`` keeping only ``channels``."""
    idx = _index(channels, conv.weight.device)
    n = len(idx)
    new = nn.Conv1d(n, n, conv.kernel_size[0], groups=n, padding=conv.padding[0], bias=conv.bias is not None,
                    device="meta")
    new.weight = _parameter(conv.weight.index_select(0, idx))
    if conv.bias is not None:
        new.bias = _parameter(conv.bias.index_select(0, idx))
    return new


def _head_rows(heads: Sequence[int], head_dim: int) -> list[int]:
    """Channel numbers of ``heads`` in a layout of consecutive heads."""
    return [h * head_dim + i for h in heads for i in range(head_dim)]


class _CachedIndex:
    """A list of indices, as a tensor on the device where it is needed (built once per device)."""

    def _index_on(self, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_index_cache", {})
        if device not in cache:
            cache[device] = _index(self.indices, device)
        return cache[device]


class SelectChannels(_CachedIndex, nn.Module):
    """Runs ``inner`` and keeps channels ``indices`` of its output (the last dimension)."""

    def __init__(self, inner: nn.Module, indices: Sequence[int]):
        super().__init__()
        self.inner = inner
        self.indices = list(indices)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.inner(*args, **kwargs)
        return out.index_select(-1, self._index_on(out.device))

    def __getattr__(self, name: str):
        # the stock mixers read their norm's ``weight`` / ``variance_epsilon`` (for fused training kernels)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)


# --- removed sub-blocks ---------------------------------------------------------------------------

class ZeroAttention(nn.Module):
    """A removed attention sub-block: contributes 0.

    With a cache it still appends one number per token to its layer's slot, because the model reads
    the number of tokens seen (positions, mask sizes) from the first attention layer's slot."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, **kwargs):
        if past_key_values is not None and hasattr(past_key_values, "update"):
            marker = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(marker, marker, self.layer_idx)
        return hidden_states.new_zeros(()), None


class ZeroOutput(nn.Module):
    """A removed MLP (or MoE) sub-block: contributes 0."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states.new_zeros(())


# --- SSM mixers without their scan ------------------------------------------------------------------

def _mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padded positions, as the stock mixers do (2-D masks only)."""
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] == hidden_states.shape[1]:
        return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    return hidden_states


class _Rows(_CachedIndex):
    def __init__(self, indices: Sequence[int]):
        self.indices = list(indices)


# Older transformers 5.x caches lack get_conv_state / is_recording_past; read their layer fields instead.
def _conv_state(cache, layer_idx: int):
    if hasattr(cache, "get_conv_state"):
        return cache.get_conv_state(layer_idx)
    layer = cache.layers[layer_idx]
    return layer.conv_states[0] if layer.has_previous_state[0] else None


def _recording_past(cache, layer_idx: int) -> bool:
    if hasattr(cache, "is_recording_past"):
        return cache.is_recording_past(layer_idx)
    return bool(cache.layers[layer_idx].record_past)


class _ShortConv(nn.Module):
    """The depthwise causal conv of a Mamba mixer, with the conv state kept in the model's cache."""

    def _conv(self, x: torch.Tensor, cache_params) -> tuple[torch.Tensor, bool]:
        """``x``: (batch, channels, length). Returns the activated conv output and whether it was one decode step."""
        seq_len = x.shape[-1]
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        state = _conv_state(cache_params, self.layer_idx) if cache_params is not None else None
        if state is not None and seq_len == 1 and not _recording_past(cache_params, self.layer_idx):
            window = torch.cat([state, x], dim=-1).to(weight.dtype)
            state.copy_(window[:, :, -state.shape[-1]:])
            out = F.conv1d(window, weight.unsqueeze(1), bias, groups=weight.shape[0])[:, :, -1:]
            return self.act(out).to(x.dtype), True
        if cache_params is not None:
            x = cache_params.update_conv_state(x, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                       groups=weight.shape[0])[:, :, :x.shape[-1]]
        return self.act(out[:, :, -seq_len:]).to(x.dtype), False


class SsmFreeMamba2Mixer(_ShortConv):
    """A Mamba-2 mixer whose scan was removed: ``y = x``, then the gated norm and ``out_proj``."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        d_inner = mixer.A_log.shape[0] * mixer.head_dim
        self.layer_idx = mixer.layer_idx
        self.head_dim = mixer.head_dim
        self.d_inner = d_inner
        self.conv_kernel_size = mixer.conv1d.kernel_size[0]
        self.act = getattr(mixer, "act", None) or ACT2FN[mixer.activation]
        self.in_proj = linear_rows(mixer.in_proj, range(2 * d_inner))  # [z, x]
        self.conv1d = conv_channels(mixer.conv1d, range(d_inner))
        self.norm = mixer.norm
        self.out_proj = mixer.out_proj
        # Falcon-H1: multipliers on the mixer input and on in_proj's output, and an optional norm
        self.in_multiplier = getattr(mixer, "ssm_in_multiplier", None)
        self.gated_norm = has_gated_norm(mixer)
        if hasattr(mixer, "mup_vector"):  # kept whole, so the family's own weight init can refill it on load
            self.register_buffer("mup_vector", mixer.mup_vector, persistent=False)
            self.mup = _Rows(range(2 * d_inner))  # the entries of mup_vector that in_proj's rows use

    def keep_heads(self, kept: Sequence[int]) -> None:
        """Drop whole heads (only exact without a gated norm: then each channel only feeds out_proj)."""
        channels = _head_rows(kept, self.head_dim)
        rows = channels + [self.d_inner + c for c in channels]
        self.in_proj = linear_rows(self.in_proj, rows)
        self.conv1d = conv_channels(self.conv1d, channels)
        self.out_proj = linear_columns(self.out_proj, channels)
        if hasattr(self, "mup"):
            self.mup = _Rows([self.mup.indices[r] for r in rows])
        self.d_inner = len(channels)

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        dtype = hidden_states.dtype
        hidden_states = _mask_padding(hidden_states, attention_mask)
        if self.in_multiplier is not None:
            hidden_states = hidden_states * self.in_multiplier
        projected = self.in_proj(hidden_states)
        if hasattr(self, "mup_vector"):
            projected = projected * self.mup_vector.index_select(-1, self.mup._index_on(projected.device))
        gate, x = projected.split([self.d_inner, self.d_inner], dim=-1)
        x, one_step = self._conv(x.transpose(1, 2), cache_params)
        x = _mask_padding(x.transpose(1, 2), attention_mask)
        y = x if one_step else x.float()  # the stock scan returns float32 outside single decode steps
        y = self.norm(y, gate) if self.gated_norm else y * F.silu(gate)
        return self.out_proj(y.to(dtype))


class SsmFreeMambaMixer(_ShortConv):
    """A Mamba (v1) mixer whose scan was removed: ``y = x * silu(z)``, then ``out_proj``."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.layer_idx = mixer.layer_idx
        self.conv_kernel_size = mixer.conv1d.kernel_size[0]
        self.act = getattr(mixer, "act", None) or ACT2FN[mixer.activation]
        self.in_proj = mixer.in_proj  # [x, z]
        self.conv1d = mixer.conv1d
        self.out_proj = mixer.out_proj

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        dtype = hidden_states.dtype
        hidden_states = _mask_padding(hidden_states, attention_mask)
        x, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        x, one_step = self._conv(x, cache_params)
        x = _mask_padding(x.transpose(1, 2), attention_mask).transpose(1, 2)
        y = (x if one_step else x.float()) * F.silu(gate)
        return self.out_proj(y.transpose(1, 2).to(dtype))


def remove_ssm(mixer: nn.Module) -> nn.Module:
    if hasattr(mixer, "x_proj"):
        return SsmFreeMambaMixer(mixer)
    return SsmFreeMamba2Mixer(mixer)


# --- groups -----------------------------------------------------------------------------------------

def has_gated_norm(mixer: nn.Module) -> bool:
    if isinstance(mixer, SsmFreeMamba2Mixer):
        return mixer.gated_norm
    return getattr(mixer, "mamba_rms_norm", True) and not isinstance(getattr(mixer, "norm", None), nn.Identity)


def _slice_heads(mixer: nn.Module, kept: Sequence[int]) -> bool:
    """Remove whole heads from a Mamba-2 mixer without a gated norm (Falcon-H1's default), in place.
    Only when the kept heads still split evenly over the B/C groups; returns whether it did."""
    heads, groups, head_dim = mixer.num_heads, mixer.n_groups, mixer.head_dim
    per_group = heads // groups
    counts = {g: sum(1 for h in kept if h // per_group == g) for g in range(groups)}
    if len(set(counts.values())) != 1:
        return False
    d_inner, bc = mixer.intermediate_size, 2 * groups * mixer.ssm_state_size
    channels = _head_rows(kept, head_dim)
    rows = (channels + [d_inner + c for c in channels] + list(range(2 * d_inner, 2 * d_inner + bc))
            + [2 * d_inner + bc + h for h in kept])  # [z, x, B, C, dt]
    mixer.in_proj = linear_rows(mixer.in_proj, rows)
    mixer.conv1d = conv_channels(mixer.conv1d, channels + list(range(d_inner, d_inner + bc)))
    for name in ("A_log", "D", "dt_bias"):
        setattr(mixer, name, _parameter(getattr(mixer, name).index_select(0, _index(kept, mixer.A_log.device))))
    mixer.out_proj = linear_columns(mixer.out_proj, channels)
    if hasattr(mixer, "mup_vector"):  # saved with the weights, so the family's init does not refill it full-length
        sliced = mixer.mup_vector.index_select(-1, _index(rows, mixer.mup_vector.device))
        del mixer.mup_vector
        mixer.register_buffer("mup_vector", sliced, persistent=True)
    mixer.num_heads, mixer.intermediate_size = len(kept), len(kept) * head_dim
    mixer.conv_dim = mixer.intermediate_size + bc
    return True


@torch.no_grad()
def _zero_columns(linear: nn.Linear, columns: Sequence[int]) -> None:
    if columns and linear.weight.device.type != "meta":
        linear.weight.index_fill_(1, _index(columns, linear.weight.device), 0.0)


def ssm_heads(mixer: nn.Module, kept: Sequence[int]) -> nn.Module:
    head_dim = mixer.head_dim
    channels = _head_rows(kept, head_dim)
    if not has_gated_norm(mixer):
        if isinstance(mixer, SsmFreeMamba2Mixer):
            mixer.keep_heads(kept)
            return mixer
        if _slice_heads(mixer, kept):
            return mixer
        # uneven over the B/C groups: keep every head, silence the removed ones (as the masks do)
        removed = sorted(set(range(mixer.out_proj.in_features // head_dim)) - set(kept))
        _zero_columns(mixer.out_proj, _head_rows(removed, head_dim))
        return mixer
    mixer.norm = SelectChannels(mixer.norm, channels)
    mixer.out_proj = linear_columns(mixer.out_proj, channels)
    return mixer


def attention_head_slots(n_query: int, n_kv: int, kept: Sequence[int]) -> tuple[list[int], list[int]]:
    """The query heads and key/value heads that stay physically for ``kept`` query heads.

    Key/value heads left without query heads go. The others keep as many query heads as the fullest
    of them keeps (grouped-query attention needs equal groups): removed heads fill the gaps, silenced."""
    per_kv = n_query // n_kv
    groups = {k: [h for h in kept if h // per_kv == k] for k in range(n_kv)}
    kv_heads = [k for k, heads in groups.items() if heads]
    width = max(len(groups[k]) for k in kv_heads)
    slots = []
    for k in kv_heads:
        fill = [h for h in range(k * per_kv, (k + 1) * per_kv) if h not in groups[k]][:width - len(groups[k])]
        slots += sorted(groups[k] + fill)
    return slots, kv_heads


def attn_heads(attn: nn.Module, kept: Sequence[int]) -> nn.Module:
    head_dim = attn.head_dim
    n_query, n_kv = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
    slots, kv_heads = attention_head_slots(n_query, n_kv, kept)
    rows = _head_rows(slots, head_dim)
    attn.q_proj = linear_rows(attn.q_proj, rows)
    attn.o_proj = linear_columns(attn.o_proj, rows)
    _zero_columns(attn.o_proj, [c for i, h in enumerate(slots) if h not in set(kept)
                                for c in range(i * head_dim, (i + 1) * head_dim)])
    if len(kv_heads) < n_kv:
        kv_rows = _head_rows(kv_heads, head_dim)
        attn.k_proj, attn.v_proj = linear_rows(attn.k_proj, kv_rows), linear_rows(attn.v_proj, kv_rows)
    attn.num_key_value_groups = len(slots) // len(kv_heads)
    for name, value in (("num_heads", len(slots)), ("num_attention_heads", len(slots)),
                        ("num_key_value_heads", len(kv_heads))):
        if isinstance(getattr(attn, name, None), int):
            setattr(attn, name, value)
    return attn


def mlp_channels(mlp: nn.Module, inputs: Sequence[str], output: str, kept: Sequence[int]) -> nn.Module:
    for name in inputs:
        setattr(mlp, name, linear_rows(getattr(mlp, name), kept))
    setattr(mlp, output, linear_columns(getattr(mlp, output), kept))
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(kept)
    return mlp


# --- applying a layout ------------------------------------------------------------------------------

def apply_op(layer: nn.Module, op: dict) -> None:
    """Replace the module ``op["module"]`` of ``layer`` by its pruned version."""
    path = op["module"]
    parent_path, _, name = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    module = getattr(parent, name)
    kind = op["op"]
    if kind == "remove_ssm":
        new = remove_ssm(module)
    elif kind == "ssm_heads":
        new = ssm_heads(module, op["kept"])
    elif kind == "attn_heads":
        new = attn_heads(module, op["kept"])
    elif kind == "mlp_channels":
        new = mlp_channels(module, op["inputs"], op["output"], op.get("kept") or range(op["width"]))
    elif kind == "zero_attention":
        new = ZeroAttention(getattr(module, "layer_idx", op.get("layer_idx", 0)))
    elif kind == "zero":
        new = ZeroOutput()
    elif kind == "identity":
        new = nn.Identity()
    else:
        raise ValueError(f"Unknown pruning operation {kind!r} (this file is older than the model?)")
    setattr(parent, name, new)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for name in ("backbone", "model"):
        inner = getattr(model, name, None)
        if inner is not None and hasattr(inner, "layers"):
            return inner.layers
    return model.layers


def apply_layout(model: nn.Module, layout: dict) -> None:
    """Apply a pruned layout (see the module docstring) to ``model`` in place."""
    layers = decoder_layers(model)
    for index, ops in sorted((layout or {}).get("layers", {}).items(), key=lambda item: int(item[0])):
        for op in ops:
            apply_op(layers[int(index)], op)
