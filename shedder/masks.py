"""Reversible removal of components, through one context manager: ``with masked(model, removed): ...``.

Semantics (Mamba-Shedder; the README's "Supported models" table), and how each is realised on this model instance only:

- ``block``: the layer returns its input. The layer's ``forward`` is overridden on the instance, so
  nothing is computed; when a cache object is passed (``generate``), the original forward still
  runs and its output is dropped, which keeps every cache's bookkeeping (sequence length, conv
  and SSM states) exactly as in the unmasked model.
- ``ssm``: the scan output ``y`` becomes its input ``x``. The scan computes ``y = C.h + D*x``;
  zeroing the conv1d channels that produce C (Mamba-2; the activation maps 0 to 0) or the x_proj
  rows that produce C (Mamba-1) makes ``C.h`` exactly 0, and ``D = 1`` leaves ``y = x``. The gate,
  gated norm and out_proj run unchanged; for Mamba-1 the gate gives ``y = x * silu(z)``. This
  runs the library's own code on every path (chunked, recurrent, kernels), so caches stay right.
- ``attn`` / ``mlp``: the sub-block's output projection(s) are zeroed, so it contributes exactly 0.
- ``attn_heads`` / ``ssm_heads`` / ``mlp_channels``: the group's columns of the output projection
  (o_proj, out_proj, down_proj) are zeroed, so the group's slice contributes exactly 0.

Every change is recorded before it is made and undone in reverse order on exit, also after an
exception, which restores bit-identical weights. One re-entrant lock per model serialises masked
use, so two threads can never mix two plans on one model.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers.cache_utils import Cache

from .families import LayerParts, describe_model
from .catalogue import Catalogue, Component, build_catalogue, channel_groups
from .errors import ShedderError
from .ssm_layout import mamba1_layout, mamba2_layout

_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()
_ACTIVATIONS_ZERO_AT_ZERO = {"silu", "swish", "relu", "gelu"}
_MISSING = object()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that guards masked use of ``model`` (re-entrant: masks may nest in one thread)."""
    with _locks_guard:
        if model not in _locks:
            _locks[model] = threading.RLock()
        return _locks[model]


class _Edits:
    """An undo stack of in-place changes to one model instance."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    @torch.no_grad()
    def set(self, param: torch.Tensor | None, index, value: float) -> None:
        if param is None:
            return
        saved = param.data[index].clone()
        self._undo.append(lambda: param.data.__setitem__(index, saved))
        param.data[index] = value

    def zero_linear_rows(self, linear: nn.Linear, rows: slice) -> None:
        self.set(linear.weight, (rows, slice(None)), 0.0)
        self.set(linear.bias, rows, 0.0)

    def zero_columns(self, linear: nn.Linear, cols: slice | torch.Tensor) -> None:
        self.set(linear.weight, (slice(None), cols), 0.0)

    def zero_all(self, param: torch.Tensor) -> None:
        self.set(param, ..., 0.0)

    def override_forward(self, module: nn.Module, forward: Callable) -> None:
        previous = module.__dict__.get("forward", _MISSING)

        def undo() -> None:
            if previous is _MISSING:
                del module.forward
            else:
                module.forward = previous

        self._undo.append(undo)
        module.forward = forward

    def undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()


def _carries_cache(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(v, Cache) for v in (*args, *kwargs.values()))


def _passthrough(layer: nn.Module, block_output: Callable) -> Callable:
    original = layer.forward

    def forward(*args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if _carries_cache(args, kwargs):
            original(*args, **kwargs)  # only for the cache's bookkeeping; the output is dropped
        return block_output(hidden)

    return forward


def _remove_ssm(edits: _Edits, parts: LayerParts) -> None:
    mixer = parts.ssm
    if parts.ssm_version == 1:
        edits.zero_linear_rows(mixer.x_proj, mamba1_layout(mixer).c_rows)
    else:
        activation = str(getattr(mixer, "activation", "silu"))
        if activation not in _ACTIVATIONS_ZERO_AT_ZERO:
            raise ShedderError(f"Layer {parts.index}: SSM removal needs a conv activation with act(0) = 0, "
                               f"not {activation!r}.")
        c = mamba2_layout(mixer).conv_c
        edits.set(mixer.conv1d.weight, c, 0.0)
        edits.set(mixer.conv1d.bias, c, 0.0)
    edits.set(mixer.D, ..., 1.0)


def _apply(edits: _Edits, component: Component, parts: LayerParts, block_output: Callable,
           channel_group_size: int, channel_reorder: str | None) -> None:
    kind, index = component.kind, component.index
    if kind == "block":
        edits.override_forward(parts.layer, _passthrough(parts.layer, block_output))
    elif kind == "ssm":
        _remove_ssm(edits, parts)
    elif kind == "attn":
        for linear in parts.attn_out:
            edits.zero_all(linear.weight)
            edits.set(linear.bias, ..., 0.0)
    elif kind == "mlp":
        for param in parts.mlp_output_params():
            edits.zero_all(param)
    elif kind == "attn_heads":
        hd = parts.attn_head_dim
        edits.zero_columns(parts.attn.o_proj, slice(index * hd, (index + 1) * hd))
    elif kind == "ssm_heads":
        edits.zero_columns(parts.ssm.out_proj, mamba2_layout(parts.ssm).head(index))
    elif kind == "mlp_channels":
        channels = channel_groups(parts, channel_group_size, channel_reorder)[index]
        edits.zero_columns(parts.mlp_down, channels.to(parts.mlp_down.weight.device))
    else:  # validated before, so unreachable
        raise ShedderError(f"Unknown component kind {kind!r}.")


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


@contextmanager
def masked(model: nn.Module, removed: Iterable[Component] = (), channel_group_size: int | None = None,
           channel_reorder: str | None = None) -> Iterator[nn.Module]:
    """Remove ``removed`` from ``model`` inside the block; restore it exactly on exit.

    ``removed`` is a list of components, or a plan (anything with ``removed``,
    ``channel_group_size`` and ``channel_reorder`` attributes), whose grouping then applies.
    """
    if hasattr(removed, "removed"):
        removed, channel_group_size, channel_reorder = (removed.removed, removed.channel_group_size,
                                                         removed.channel_reorder)
    components = validate(model, removed, channel_group_size)
    group_size = catalogue_of(model, channel_group_size).channel_group_size
    family, layers = describe_model(model)
    with model_lock(model):
        edits = _Edits()
        try:
            for component in components:
                _apply(edits, component, layers[component.layer], family.block_output, group_size,
                       channel_reorder)
            yield model
        finally:
            edits.undo_all()
