"""``block``: a whole residual layer; the layer returns its input.

The layer's ``forward`` is overridden on the instance, so nothing is computed; when a cache object is passed
(``generate``), the original forward still runs and its output is dropped, which keeps every cache's
bookkeeping exactly as in the unmasked model. Extraction drops the layer and rewrites the config.
"""
from __future__ import annotations

from .base import Kind, numel
from .edits import passthrough


def entries(parts, counting):
    if not parts.offers_block:
        return []
    return [(None, numel([parts.layer], counting.shared) + numel(parts.own_inside_shared, set()))]


def mask(edits, parts, index, setting) -> None:
    edits.override_forward(parts.layer, passthrough(parts.layer, setting.block_output))


KIND = Kind("block", "the whole residual layer: it returns its input", entries, mask,
            contains=("ssm", "attn", "mlp", "ssm_heads", "attn_heads", "mlp_channels"),
            reference_key="pruned_mamba_block_idx")
