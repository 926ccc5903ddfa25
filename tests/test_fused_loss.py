"""The fused next-token NLL (shedder/measurement/fused_loss.py): used only for GPU tensors with Triton and the
switch on; on a GPU it agrees with PyTorch's float32 cross-entropy to rounding."""
import pytest
import torch
import torch.nn.functional as F

from shedder.measurement import fused_loss
from shedder.measurement.perplexity import window_nll
from tiny_models import build, token_ids

GPU = torch.cuda.is_available() and fused_loss._kernel() is not None


def stock_sums(logits, ids):
    return torch.stack([F.cross_entropy(row.float(), target, reduction="sum").double()
                        for row, target in zip(logits[:, :-1], ids[:, 1:])]).cpu()


def test_cpu_tensors_take_pytorchs_path():
    assert not fused_loss.usable(torch.zeros(1, 2, 3))
    model = build("mamba2")
    ids = token_ids(batch=2, length=12)
    assert torch.equal(window_nll(model, ids), stock_sums(model(input_ids=ids).logits, ids))


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("SHEDDER_FUSED_LOSS", "0")
    assert not fused_loss.fused_loss_on()
    monkeypatch.setenv("SHEDDER_FUSED_LOSS", "1")
    assert fused_loss.fused_loss_on()


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [1000, 49152])
def test_fused_nll_agrees_with_cross_entropy_on_a_gpu(dtype, vocab):
    torch.manual_seed(0)
    logits = (torch.randn(3, 65, vocab, device="cuda") * 4).to(dtype)
    ids = torch.randint(0, vocab, (3, 65), device="cuda")
    per_token = fused_loss.token_nll(logits[:, :-1], ids[:, 1:])
    expected = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1),
                               reduction="none").view(3, 64)
    assert torch.allclose(per_token, expected, rtol=1e-5, atol=1e-5)
    sums = fused_loss.window_sums(logits, ids)
    assert torch.allclose(sums, stock_sums(logits, ids), rtol=1e-6, atol=0)
    nan = logits.clone()
    nan[1, 3, 7] = float("nan")
    assert torch.isnan(fused_loss.window_sums(nan, ids)[1])
