"""The same guarantees on a CUDA GPU, with mamba-ssm / causal-conv1d kernels when installed.

Skipped on machines without CUDA (CI); run on a GPU host with ``pytest tests/test_gpu.py``.
"""
import math

import pytest
import torch

from reference import mamba1_without_scan, mamba2_without_scan
from shedder.families import describe_model
from shedder.measurement.calibration import cut_windows
from shedder.measurement.perplexity import perplexity
from shedder.removal.catalogue import Component, build_catalogue
from shedder.removal.masks import masked
from tiny_models import build, token_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_FAMILIES = ["mamba", "mamba2", "bamba", "falcon_h1", "zamba2"]


def on_gpu(family, dtype=torch.float32):
    return build(family).to("cuda", dtype)


def kernels() -> dict:
    found = {}
    for name in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda"):
        try:
            __import__(name)
            found[name] = True
        except ImportError:
            found[name] = False
    return found


def test_report_backend():
    print("kernels:", kernels(), "device:", torch.cuda.get_device_name())


@pytest.mark.parametrize("family", GPU_FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restore_is_bit_identical_on_gpu(family, dtype):
    model = on_gpu(family, dtype)
    ids = token_ids(length=64).cuda()
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        every_kind = {}
        for entry in build_catalogue(model):
            every_kind.setdefault(entry.component.kind, entry.component)
        for component in every_kind.values():
            with masked(model, [component]):
                assert not torch.equal(model(ids, use_cache=False).logits, dense), component
        assert torch.equal(model(ids, use_cache=False).logits, dense)


@pytest.mark.parametrize("family,reference", [("mamba2", mamba2_without_scan), ("bamba", mamba2_without_scan),
                                              ("mamba", mamba1_without_scan)])
def test_ssm_removal_by_hand_on_gpu_kernels(family, reference):
    model = on_gpu(family)
    layer = next(c.layer for c in build_catalogue(model).components(["ssm"]))
    mixer = describe_model(model)[1][layer].ssm
    hidden = torch.randn(2, 64, model.config.hidden_size, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad(), masked(model, [Component("ssm", layer)]):
        torch.testing.assert_close(mixer(hidden), reference(mixer, hidden), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_generate_with_cache_on_gpu(family):
    model = on_gpu(family)
    catalogue = build_catalogue(model)
    removed = [catalogue.components(["ssm"])[0], catalogue.components(["block"])[-1]]
    prompt = token_ids(batch=1, length=9).cuda()
    with masked(model, removed), torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["mamba2", "bamba"])
def test_batched_perplexity_equals_naive_loop_on_gpu(family):
    model = on_gpu(family)
    stream = torch.randint(0, 96, (64 * 6,), generator=torch.Generator().manual_seed(0))
    windows = cut_windows(stream, seq_len=64)
    result = perplexity(model, windows, [Component("ssm", 0)], batch_size=4)
    total = 0.0
    with masked(model, [Component("ssm", 0)]), torch.no_grad():
        for row in windows.ids:
            ids = row[None].cuda()
            total += model(input_ids=ids, labels=ids, use_cache=False).loss.item() * 63
    assert result.ppl == pytest.approx(math.exp(total / (6 * 63)), rel=1e-4)
