"""Mamba-2's norms as mamba-ssm's fused kernels: taken only on a GPU, only when on, and equal to the stock norms
up to rounding there (the GPU test is skipped without CUDA and mamba-ssm)."""
import pytest
import torch
from transformers.models.mamba2 import modeling_mamba2 as mamba2

from shedder.model import fused_norms
from shedder.measurement.calibration import cut_windows
from shedder.measurement.perplexity import perplexity
from tiny_models import build, token_ids


@pytest.fixture
def fake_kernels(monkeypatch):
    """Kernels that record their calls (so a test can see whether the fused path ran); the patch and the state it
    changes are undone after the test."""
    calls = []

    def rms_norm_fn(x, weight, bias, eps):
        calls.append("norm")
        return x

    def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        calls.append("gated")
        return x

    monkeypatch.setattr(fused_norms, "_kernels", lambda: (rms_norm_fn, rmsnorm_fn))
    monkeypatch.setattr(mamba2.Mamba2RMSNorm, "forward", mamba2.Mamba2RMSNorm.forward)
    monkeypatch.setattr(mamba2.MambaRMSNormGated, "forward", mamba2.MambaRMSNormGated.forward)
    monkeypatch.setitem(fused_norms._STATE, "on", False)
    monkeypatch.setitem(fused_norms._STATE, "patched", False)
    monkeypatch.delenv("SHEDDER_FUSED_NORMS", raising=False)
    return calls


def test_cpu_inputs_run_the_stock_norms_bit_for_bit(fake_kernels):
    model = build("mamba2")
    ids = token_ids(batch=2, length=24)
    with torch.no_grad():
        stock = model(input_ids=ids).logits
        assert fused_norms.use_fused_norms()
        assert torch.equal(model(input_ids=ids).logits, stock)
    assert fake_kernels == []


def test_off_by_environment(fake_kernels, monkeypatch):
    monkeypatch.setenv("SHEDDER_FUSED_NORMS", "0")
    assert not fused_norms.use_fused_norms()
    assert not fused_norms._STATE["on"]
    assert not fused_norms._STATE["patched"]  # transformers' classes left as they are


def test_off_without_the_kernels(fake_kernels, monkeypatch):
    monkeypatch.setattr(fused_norms, "_kernels", lambda: None)
    assert not fused_norms.use_fused_norms()


def test_turned_off_again_the_stock_forward_runs(fake_kernels):
    assert fused_norms.use_fused_norms()
    assert not fused_norms.use_fused_norms(False)
    assert not fused_norms._fusable(torch.ones(2, 4), torch.ones(4))


def _kernels_installed() -> bool:
    return torch.cuda.is_available() and fused_norms._kernels() is not None


@pytest.mark.skipif(not _kernels_installed(), reason="needs a CUDA GPU and mamba-ssm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_stock_up_to_rounding_on_gpu(dtype, monkeypatch):
    monkeypatch.setitem(fused_norms._STATE, "on", fused_norms._STATE["on"])
    model = build("mamba2").to("cuda", dtype)
    ids = token_ids(batch=2, length=64).to("cuda")
    windows = cut_windows(token_ids(batch=1, length=8 * 64, seed=3).reshape(-1), 64, source="random")
    with torch.no_grad():
        fused_norms.use_fused_norms(False)
        stock, stock_ppl = model(input_ids=ids).logits.float(), perplexity(model, windows, batch_size=4).ppl
        assert fused_norms.use_fused_norms()
        fused, fused_ppl = model(input_ids=ids).logits.float(), perplexity(model, windows, batch_size=4).ppl
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert (fused - stock).abs().max() <= tolerance * stock.abs().max()
    assert abs(fused_ppl / stock_ppl - 1) < (1e-5 if dtype == torch.float32 else 1e-2)
    assert fused.dtype == stock.dtype
