"""Next-token NLL straight from the logits on a GPU, without a float32 copy of them.

PyTorch's route (``logits.float()`` then ``cross_entropy``) writes a float32 copy of every window's logits and
then their log-softmax: for a 49k-token vocabulary that is about 0.7 GB of memory traffic per window of 1024,
and a third of a search step's GPU time on smollm2-135m (``bench/search_cost.py --profile-steps``). This Triton
kernel reads each token's logits twice (their maximum, then the sum of ``exp(x - max)``, both in float32) and
writes one float32 per token: ``log(sum) - (x[target] - max)``, the same arithmetic as log-softmax, in another
order of additions, so it agrees with PyTorch to float32 rounding, not bit for bit.

It runs for CUDA tensors when Triton is there (it comes with PyTorch's CUDA builds), for every model of the
process or none (``SHEDDER_FUSED_LOSS=0`` turns it off), so a search and its naive reference share one numeric path.
"""
from __future__ import annotations

import os

import torch

BLOCK = 4096  # vocabulary entries a program reads at once
_KERNEL = False  # the compiled kernel; None without Triton; False: not looked for yet


def _kernel():
    """The compiled Triton kernel, or None without Triton."""
    global _KERNEL
    if _KERNEL is not False:
        return _KERNEL
    try:
        import triton
        import triton.language as tl
    except ImportError:
        _KERNEL = None
        return None

    @triton.jit
    def token_nll_kernel(logits_ptr, targets_ptr, out_ptr, n_vocab, stride_window, stride_token, n_tokens,
                  BLOCK: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        window = tl.program_id(1).to(tl.int64)
        row = logits_ptr + window * stride_window + token * stride_token
        largest = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in tl.range(0, n_vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row + cols, mask=cols < n_vocab, other=float("-inf")).to(tl.float32)
            largest = tl.maximum(largest, x)
        top = tl.max(largest, axis=0)
        sums = tl.zeros([BLOCK], tl.float32)
        for start in tl.range(0, n_vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row + cols, mask=cols < n_vocab, other=float("-inf")).to(tl.float32)
            sums += tl.exp(x - top)
        target = tl.load(targets_ptr + window * n_tokens + token)
        picked = tl.load(row + target).to(tl.float32)
        tl.store(out_ptr + window * n_tokens + token, tl.log(tl.sum(sums, axis=0)) - (picked - top))

    _KERNEL = token_nll_kernel
    return _KERNEL


def fused_loss_on() -> bool:
    return os.environ.get("SHEDDER_FUSED_LOSS", "1") != "0"


def usable(logits: torch.Tensor) -> bool:
    """Whether :func:`window_sums` can take these logits (a GPU, Triton, the switch on)."""
    return logits.is_cuda and fused_loss_on() and _kernel() is not None


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float32 NLL of ``targets`` (windows, tokens) under ``logits`` (windows, tokens, vocabulary; any float dtype,
    each token's logits contiguous)."""
    windows, tokens, vocab = logits.shape
    if logits.stride(2) != 1:
        logits = logits.contiguous()
    targets = targets.to(device=logits.device, dtype=torch.int64).contiguous()
    out = torch.empty((windows, tokens), dtype=torch.float32, device=logits.device)
    _kernel()[(tokens, windows)](logits, targets, out, vocab, logits.stride(0), logits.stride(1), tokens,
                                 BLOCK=min(BLOCK, max(16, 1 << (vocab - 1).bit_length())), num_warps=8)
    return out


def window_sums(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window: ``logits`` (windows, seq_len, vocabulary) of ``ids``, float64 on the CPU."""
    return token_nll(logits[:, :-1], ids[:, 1:]).double().sum(dim=1).cpu()
