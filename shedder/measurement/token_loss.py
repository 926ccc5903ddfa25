"""Per-token loss of a text under a model with components removed: which tokens a removal made harder to
predict (the dashboard colours a generation by it)."""
from __future__ import annotations

import torch
from torch import nn

from ..plan import Plan
from ..removal.masks import masked
from .perplexity import model_device


@torch.no_grad()
def token_losses(model: nn.Module, ids: torch.Tensor, removed=(), channel_group_size: int | None = None,
                 channel_reorder: str | None = None) -> list[float]:
    """Negative log-likelihood (nats) of every token of ``ids`` (one sequence, 1-D or 1 x n) after the first,
    given the tokens before it, with ``removed`` (components or a plan) masked: ``n - 1`` values."""
    ids = ids.reshape(1, -1).to(model_device(model))
    plan = removed if isinstance(removed, Plan) else Plan(list(removed), channel_group_size=channel_group_size,
                                                          channel_reorder=channel_reorder)
    with masked(model, plan):
        logits = model(input_ids=ids, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    return [float(v) for v in nll.cpu()]
