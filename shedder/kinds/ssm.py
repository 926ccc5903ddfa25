"""``ssm``: the scan inside a Mamba mixer; its output ``y`` becomes its input ``x``.

The scan computes ``y = C.h + D*x``; zeroing the conv1d channels that produce C (Mamba-2; the activation maps
0 to 0) or the x_proj rows that produce C (Mamba-1) makes ``C.h`` exactly 0, and ``D = 1`` leaves ``y = x``.
The gate, gated norm and out_proj run unchanged; for Mamba-1 the gate gives ``y = x * silu(z)``. This runs the
library's own code on every path (chunked, recurrent, kernels), so caches stay right.

Where the SSM is a parallel branch whose output is normalised and averaged with attention (Hymba), the
family lists the modules whose zeroing removes the branch (``LayerParts.ssm_out``) and removing the ``ssm``
removes the branch, as the reference code does.

Freed: what only the scan uses: Mamba-1 ``A_log``, ``D``, ``x_proj``, ``dt_proj`` (and Jamba's dt/B/C norms);
Mamba-2 ``A_log``, ``D``, ``dt_bias``, the B/C/dt rows of ``in_proj`` and the B/C channels of ``conv1d``.
"""
from __future__ import annotations

from ..errors import ShedderError
from ..model.ssm_layout import mamba1_layout, mamba2_layout
from .base import Kind, bias_len, numel, path_in

_ACTIVATIONS_ZERO_AT_ZERO = {"silu", "swish", "relu", "gelu"}


def ssm_params(parts) -> int:
    mixer = parts.ssm
    if "ssm" in parts.freed:
        return parts.freed["ssm"]
    if parts.ssm_version == 1:
        extra = [getattr(mixer, n, None) for n in ("dt_layernorm", "b_layernorm", "c_layernorm")]
        return (mixer.A_log.numel() + mixer.D.numel() + numel([mixer.x_proj, mixer.dt_proj], set())
                + numel([m for m in extra if m is not None], set()))
    lay = mamba2_layout(mixer)
    rows = 2 * lay.group_state + lay.heads
    conv_channels = 2 * lay.group_state
    kernel = mixer.conv1d.weight.shape[-1]
    return (mixer.A_log.numel() + mixer.D.numel() + mixer.dt_bias.numel()
            + rows * (mixer.in_proj.in_features + bias_len(mixer.in_proj))
            + conv_channels * (kernel + (1 if mixer.conv1d.bias is not None else 0)))


def entries(parts, counting):
    return [] if parts.ssm is None else [(None, ssm_params(parts))]


def mask(edits, parts, index, setting) -> None:
    mixer = parts.ssm
    if parts.ssm_out:
        for module in parts.ssm_out:
            edits.zero_module(module)
        return
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


def ops(parts, indices, grouping) -> list[dict]:
    return [{"op": "remove_ssm", "module": path_in(parts.layer, parts.ssm)}]


KIND = Kind("ssm", "the scan inside the Mamba mixer: y = x (Mamba-2: gate, gated norm and output projection still "
            "run; Mamba-1: y = x * silu(z)); Hymba: the SSM branch adds nothing to the average",
            entries, mask, ops, part="SSM", reference_key="pruned_ssm_idx")
