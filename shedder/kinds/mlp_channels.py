"""``mlp_channels``: a group of a dense MLP's intermediate channels; they contribute zero (their columns of
the down projection are zeroed; extraction drops their rows of the gate/up projections too).

Groups hold ``Grouping.size`` consecutive channels, in channel order or, with ``reorder="l1"``, in order of the
summed L1 norm of each channel's gate/up rows, largest first (the reference's reordering), so the last groups
hold the channels with the smallest weights.
"""
from __future__ import annotations

import torch

from ..errors import ShedderError
from .base import Kind, bias_len, kept, path_in

CHANNEL_ORDERS = (None, "l1")


def default_channel_group_size(intermediate: int) -> int:
    """256 channels for real models; eight groups per MLP for small ones."""
    return 256 if intermediate >= 2048 else max(1, intermediate // 8)


def channel_order(parts, reorder: str | None) -> torch.Tensor:
    """Intermediate channels in group order (see the module docstring)."""
    width = parts.mlp_down.in_features
    if reorder is None:
        return torch.arange(width)
    if reorder != "l1":
        raise ShedderError(f"Unknown channel order {reorder!r}; use none or l1.")
    with torch.no_grad():
        importance = sum(lin.weight.detach().float().abs().sum(dim=1) for lin in parts.mlp_in)
    return torch.sort(importance.cpu(), descending=True, stable=True).indices


def channel_groups(parts, group_size: int, reorder: str | None = None) -> list[torch.Tensor]:
    """The channel indices of each group, in group order; the last group may be smaller."""
    order = channel_order(parts, reorder)
    return [order[s:s + group_size] for s in range(0, order.numel(), group_size)]


def channel_group_params(parts, size: int) -> int:
    return sum(size * (lin.in_features + bias_len(lin)) for lin in parts.mlp_in) + parts.mlp_down.out_features * size


def entries(parts, counting):
    if not parts.mlp_dense:
        return []
    return [(g, channel_group_params(parts, len(r))) for g, r in enumerate(channel_groups(parts, counting.grouping.size))]


def _group(parts, index, grouping) -> torch.Tensor:
    return channel_groups(parts, grouping.size, grouping.reorder)[index].to(parts.mlp_down.weight.device)


def columns(parts, index, grouping):
    return parts.mlp_down.weight[:, _group(parts, index, grouping)]


def mask(edits, parts, index, setting) -> None:
    edits.zero_columns(parts.mlp_down, _group(parts, index, setting.grouping))


def ops(parts, indices, grouping) -> list[dict]:
    groups = channel_groups(parts, grouping.size, grouping.reorder)
    removed = {int(ch) for i in indices for ch in groups[i]}
    left = kept(parts.mlp_down.in_features, removed, "MLP channel", parts.index, "mlp")
    return [{"op": "mlp_channels", "module": path_in(parts.layer, parts.mlp),
             "inputs": [path_in(parts.mlp, lin) for lin in parts.mlp_in], "output": path_in(parts.mlp, parts.mlp_down),
             "kept": left}]


KIND = Kind("mlp_channels", "a group of the MLP's intermediate channels: they contribute zero", entries, mask, ops,
            columns, part="MLP", grouped=True)
