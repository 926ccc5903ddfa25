"""Mamba-2's RMS norms as mamba-ssm's fused Triton kernels, on a GPU.

transformers' ``Mamba2RMSNorm`` (before each mixer, and the final norm) and ``MambaRMSNormGated`` (the gated
norm before ``out_proj``) run as eight to eleven separate elementwise kernels each: casts to float32 and back,
square, mean, reciprocal root, products. On a GPU they took more time than the matmuls in candidate evaluation
(``bench/flops.py --profile``). mamba-ssm, whose own Mamba-2 models use them, has one kernel for each
(``rms_norm_fn``, and ``rmsnorm_fn`` with the gate, ``norm_before_gate=False`` as in Mamba-2): the same
arithmetic in float32, with one rounding to the output dtype where transformers rounds twice. Results agree
to within bf16 rounding, not bit for bit, so it is on for every model of the process or for none: a search,
its naive reference, perplexities and timed models all run one numeric path.

Turned on by placing a model on a GPU (``shedder.model.loading``) where mamba-ssm is installed; on a CPU, or
for inputs whose dtype the kernel would not return, the stock forward runs. ``SHEDDER_FUSED_NORMS=0`` keeps
the stock norms everywhere.
"""
from __future__ import annotations

import os

import torch

_STATE = {"on": False, "patched": False}


def _kernels():
    """mamba-ssm's norm functions, or None where it is not installed (or its Triton does not load)."""
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    except Exception:  # noqa: BLE001  (ImportError, or Triton failing to load on this machine)
        return None
    return rms_norm_fn, rmsnorm_fn


def _fusable(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the fused kernel computes what the stock norm does: on a GPU, and returning the stock dtype (the
    kernel returns its input's dtype; the stock norm the promotion of input and weight)."""
    return (_STATE["on"] and hidden_states.is_cuda
            and torch.promote_types(hidden_states.dtype, weight.dtype) == hidden_states.dtype)


def _patch() -> None:
    """Give transformers' Mamba-2 norm classes a forward that takes the fused kernel where :func:`_fusable`."""
    from transformers.models.mamba2 import modeling_mamba2 as mamba2

    rms_norm_fn, rmsnorm_fn = _kernels()
    stock_norm, stock_gated = mamba2.Mamba2RMSNorm.forward, mamba2.MambaRMSNormGated.forward

    def norm_forward(self, hidden_states):
        if not _fusable(hidden_states, self.weight):
            return stock_norm(self, hidden_states)
        return rms_norm_fn(hidden_states, self.weight, None, eps=self.variance_epsilon)

    def gated_forward(self, hidden_states, gate=None):
        if not _fusable(hidden_states, self.weight):
            return stock_gated(self, hidden_states, gate)
        return rmsnorm_fn(hidden_states, self.weight, None, z=gate, eps=self.variance_epsilon,
                          group_size=self.group_size, norm_before_gate=False)

    mamba2.Mamba2RMSNorm.forward, mamba2.MambaRMSNormGated.forward = norm_forward, gated_forward
    _STATE["patched"] = True


def use_fused_norms(on: bool = True) -> bool:
    """Turn the fused norms on (where mamba-ssm is installed and ``SHEDDER_FUSED_NORMS`` is not 0) or off, for the
    whole process; whether they are on now."""
    if on and (os.environ.get("SHEDDER_FUSED_NORMS", "1") == "0" or _kernels() is None):
        on = False
    if on and not _STATE["patched"]:
        _patch()
    _STATE["on"] = on
    return on
