"""The one mechanism every mask uses: in-place edits of one model instance, recorded so they can be undone."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers.cache_utils import Cache

_MISSING = object()


class Edits:
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

    def zero_module(self, module: nn.Module) -> None:
        """A projection or norm that then outputs exactly zero: its weight and bias zeroed."""
        self.zero_all(module.weight)
        self.set(getattr(module, "bias", None), ..., 0.0)

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


def carries_cache(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(v, Cache) for v in (*args, *kwargs.values()))


def passthrough(layer: nn.Module, block_output: Callable) -> Callable:
    """A forward for ``layer`` that returns its input (as ``block_output`` shapes it); with a cache the original
    still runs, for the cache's bookkeeping only, and its output is dropped."""
    original = layer.forward

    def forward(*args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if carries_cache(args, kwargs):
            original(*args, **kwargs)
        return block_output(hidden)

    return forward
