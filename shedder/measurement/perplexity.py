"""Perplexity over token windows: every next-token prediction in each window counts.

A window of ``seq_len`` tokens gives ``seq_len - 1`` predictions. Perplexity is
``exp(sum of NLL / number of predictions)`` over all windows; the sum is accumulated in float64
from float32 log-probabilities, whatever the model's dtype.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShedderError
from ..plan import Plan
from ..removal.catalogue import Component
from ..removal.masks import masked
from . import fused_loss
from .calibration import Windows

Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float
    n_predictions: int
    n_windows: int
    seq_len: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_predictions

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PerplexitySetting:
    """What a perplexity is measured on: a text source, how many of its tokens, in windows of ``seq_len``.
    One object, so that every place that shows a perplexity can say what it was measured on."""

    text: str = "wiki-test"
    tokens: int = 2048
    seq_len: int = 256

    def describe(self) -> str:
        """E.g. "wiki-test, 2,048 tokens, windows of 256"."""
        return f"{self.text}, {self.tokens:,} tokens, windows of {self.seq_len}"

    def to_dict(self) -> dict:
        return asdict(self)


def require_finite(result: PerplexityResult | float, what: str) -> PerplexityResult | float:
    """``result`` (a perplexity, or its value), or a ShedderError when it is NaN: the weights (or this dtype)
    produce NaN, and every number after that would be meaningless."""
    if math.isnan(result if isinstance(result, float) else result.nll_sum):
        raise ShedderError(f"The perplexity of {what} is NaN: the weights produce NaN (a damaged checkpoint, or "
                           "values that overflow in this dtype); check the checkpoint or try --dtype float32.")
    return result


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each row of ``ids`` (batch, seq_len), as float64 (batch,)."""
    logits = model(input_ids=ids.to(model_device(model)), use_cache=False).logits
    if fused_loss.usable(logits):  # a GPU: no float32 copy of the logits (shedder/measurement/fused_loss.py)
        return fused_loss.window_sums(logits, ids)
    targets = ids[:, 1:].to(logits.device)
    sums = []
    for row_logits, row_targets in zip(logits[:, :-1], targets):  # one row at a time bounds the float32 copy
        nll = F.cross_entropy(row_logits.float(), row_targets, reduction="sum")
        sums.append(nll.double())
    return torch.stack(sums).cpu()


def perplexity(model: nn.Module, windows: Windows, plan: Plan | Iterable[Component] = (), batch_size: int = 8,
               progress: Progress | None = None, around_batch: Callable[[], ContextManager] | None = None
               ) -> PerplexityResult:
    """Perplexity of ``model`` with ``plan`` (a plan, or a list of components) masked, over all ``windows``.
    ``around_batch``: each batch runs inside it and masks the model on its own, so that the model's lock is free
    between batches (other users of a shared model go first there); the result is the same."""
    if len(windows) == 0:
        raise ShedderError("No calibration windows to evaluate.")
    if batch_size < 1:
        raise ShedderError("batch_size must be at least 1.")
    total = torch.zeros((), dtype=torch.float64)
    with ExitStack() as whole:
        if around_batch is None:
            whole.enter_context(masked(model, plan))
        for start in range(0, len(windows), batch_size):
            with ExitStack() as each:
                if around_batch is not None:
                    each.enter_context(around_batch())
                    each.enter_context(masked(model, plan))
                total += window_nll(model, windows.ids[start:start + batch_size]).sum()
            if progress is not None:
                progress(min(start + batch_size, len(windows)), len(windows))
    n_predictions = len(windows) * (windows.seq_len - 1)
    nll_sum = float(total)
    return PerplexityResult(
        ppl=math.exp(nll_sum / n_predictions),
        nll_sum=nll_sum,
        n_predictions=n_predictions,
        n_windows=len(windows),
        seq_len=windows.seq_len,
    )
