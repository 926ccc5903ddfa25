"""Latency measurement (``shedder bench``): the report, the static decode loop, the cost model, errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli
from tiny_models import build, save_tiny, token_ids

from shedder.cli import main
from shedder.errors import ShedderError
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.removal.masks import catalogue_of
from shedder.speed.cost_model import RECURRENT_STATE_BYTES, model_cost
from shedder.speed.latency import BenchSettings, benchmark, extracted_model, generate_exactly, kernel_backend
from shedder.speed.static_decode import StaticDecoder, cache_bytes

TINY = dict(prompt_len=12, new_tokens=5, repeats=1, warmup=0)


def _positive(stats: dict) -> bool:
    return all(math.isfinite(stats[k]) and stats[k] > 0 for k in ("median", "min", "max"))


def test_cli_report_has_every_field_with_sane_values(mamba2_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--model", str(mamba2_dir), "--out", str(out), "--prompt-len", "12", "--new-tokens", "5",
                     "--batch-sizes", "1,2", "--repeats", "2", "--warmup", "0", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["format"] == "shedder-latency" and report["model"] == str(mamba2_dir)
    env = report["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["backend"]["summary"] == "pure PyTorch"
    assert "selective_state_update" in " ".join(env["backend"]["functions"])
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["transformers"]
    assert set(env["versions"]) >= {"mamba-ssm", "causal-conv1d", "cuda", "python"}
    dense = report["dense"]
    assert dense["params"] == sum(p.numel() for p in build("mamba2").parameters()) and dense["layers"] == 3
    assert dense["param_bytes"] == 4 * dense["params"]
    assert _positive(dense["ttft_ms"]) and dense["ttft_ms"]["runs"] == 2
    assert set(dense["decode"]) == {"1", "2"}
    for batch, row in dense["decode"].items():
        assert _positive(row["generate"]["tokens_per_s"]) and row["generate"]["peak_memory_bytes"] > 2**20
        static = row["static"]
        assert static["mode"] == "eager" and static["tokens_equal_generate"] is True
        assert _positive(static["tokens_per_s"]) and _positive(static["prefill_ms"]) and static["cache_bytes"] > 0
    assert "extracted" not in report and "ideal_speedup" not in report
    assert "time to first token" in result.stdout and "batch 2: generate" in result.stdout


@pytest.mark.parametrize("family", ["mamba2", "bamba", "mamba"])
def test_static_decode_loop_gives_exactly_generates_tokens(family):
    model = build(family)
    prompt = token_ids(batch=2, length=10)
    free = generate_exactly(model, prompt, 6)
    # make a token greedy decoding would pick the end-of-sequence token: generate's min_new_tokens
    # then forbids it, and the static loop must do the same to match
    model.generation_config.eos_token_id = int(free[0, 2])
    expected = generate_exactly(model, prompt, 6)
    assert not torch.equal(expected, free)
    decoder = StaticDecoder(model, batch=2, prompt_len=10, new_tokens=6)
    decoder.prepare(prompt)
    assert decoder.mode == "eager"  # no CUDA here: the same step, without capture
    assert torch.equal(decoder.run(prompt), expected)
    assert torch.equal(decoder.run(prompt), expected)  # runs reset the cache in place


def test_plan_times_the_extracted_smaller_model_and_compares_with_the_ideal():
    model = build("mamba2")
    plan = Plan.for_model(model, [Component("block", 1)])
    report = benchmark(model, None, plan, BenchSettings(batch_sizes=(1,), **TINY))
    catalogue = catalogue_of(model)
    dense, small = report["dense"], report["extracted"]
    assert small["params"] == dense["params"] - catalogue.params_of(Component("block", 1)) and small["layers"] == 2
    assert small["decode"]["1"]["static"]["tokens_equal_generate"]
    ideal = report["ideal_speedup"]
    assert 1.2 < ideal["weight_bytes"] < 1.6 and 1.2 < ideal["prefill_flops"] < 1.6 and ideal["decode_bytes"]["1"] > 1.2
    measured = report["measured_speedup"]
    assert measured["ttft"] > 0 and measured["prefill"] > 0 and measured["prefill_over_ideal"] > 0
    assert set(measured["decode"]["1"]) == {
        "generate", "generate_over_ideal", "static", "static_over_ideal"}
    assert next(model.parameters()).device.type == "cpu"  # the dense model is back where it was
    paired = report["paired_prefill"]
    assert paired["speedup"]["runs"] == paired["dense_ms"]["runs"] == paired["extracted_ms"]["runs"] >= 21
    assert paired["speedup"]["q1"] <= paired["speedup"]["median"] <= paired["speedup"]["q3"]
    assert measured["prefill_paired"] == paired["speedup"]["median"] > 0
    assert "iqr_over_median" in paired["dense_ms"]


def test_paired_prefill_times_both_models_in_alternating_turns(monkeypatch):
    from shedder.speed import latency

    model = build("mamba2")
    small = latency.extracted_model(model, Plan.for_model(model, [Component("block", 1)]))
    order = []
    timed = latency.timed

    def noting(run, device):
        seconds = timed(run, device)
        order.append(len(order))
        return seconds

    calls = []
    real_prefill = latency.StaticDecoder.prefill

    def prefill(self, prompt):
        calls.append(self.model is small)
        return real_prefill(self, prompt)

    monkeypatch.setattr(latency, "timed", noting)
    monkeypatch.setattr(latency.StaticDecoder, "prefill", prefill)
    report = latency.paired_prefill(model, small, BenchSettings(prompt_len=8, new_tokens=2, repeats=1, warmup=0))
    timed_calls = calls[-2 * 21:]  # after the untimed warm-up
    assert len(order) == 42 and report["speedup"]["runs"] == 21
    pairs = [tuple(timed_calls[i:i + 2]) for i in range(0, 42, 2)]
    assert pairs[0::2] == [(False, True)] * 11 and pairs[1::2] == [(True, False)] * 10  # dense first, then second


CACHE_CASES = [
    ("mamba2", {}, []),
    ("mamba2", {}, [Component("block", 0)]),
    ("mamba2", {}, [Component("ssm", 2)]),
    ("mamba2", {}, [Component("ssm_heads", 1, 0), Component("ssm_heads", 1, 1)]),  # gated norm: heads still run
    ("falcon_h1", {"mamba_rms_norm": False}, [Component("ssm_heads", 0, 2), Component("ssm_heads", 0, 5)]),
    ("bamba", {}, []),
    ("bamba", {}, [Component("attn_heads", 1, 0), Component("attn_heads", 1, 1)]),  # a whole K/V group
    ("bamba", {}, [Component("attn_heads", 1, 0)]),  # grouped-query attention keeps equal groups
]


@pytest.mark.parametrize("family, overrides, removed", CACHE_CASES)
def test_cost_model_state_matches_the_extracted_models_cache(family, overrides, removed):
    model = build(family, **overrides)
    cost = model_cost(model, removed)
    small = extracted_model(model, Plan.for_model(model, removed)) if removed else model
    decoder = StaticDecoder(small, batch=2, prompt_len=8, new_tokens=2)
    decoder.prefill(token_ids(batch=2, length=8))
    lengths = [getattr(layer, "cumulative_length", None) for layer in decoder.cache.layers]
    counters = sum(t.numel() * t.element_size() for t in lengths if isinstance(t, torch.Tensor))
    per_sequence = sum(layer.state_bytes + layer.kv_bytes_per_token * 10 for layer in cost.layers)
    assert cache_bytes(decoder.cache) - counters == 2 * per_sequence
    params = {id(p): p for p in small.parameters()}.values()
    tied = small.get_output_embeddings().weight is small.get_input_embeddings().weight
    embedding = 0 if tied else small.get_input_embeddings().weight.numel() * 4
    assert cost.weight_bytes == sum(p.numel() * 4 for p in params) - embedding


def test_cost_model_by_hand():
    model = build("mamba2")
    # by hand, one Mamba-2 layer: d_inner 64 x d_state 8 in float32, conv (x 64 + B/C 2 x 2 x 8) x kernel 4
    dense, pruned = model_cost(model), model_cost(model, [Component("ssm", 2)])
    assert dense.layers[2].state_bytes == 64 * 8 * RECURRENT_STATE_BYTES + (64 + 32) * 4 * 4
    assert pruned.layers[2].state_bytes == 64 * 4 * 4 and pruned.layers[2].scan_flops is None
    freed = catalogue_of(model).params_of(Component("ssm", 2))
    assert dense.weight_bytes - pruned.weight_bytes == 4 * freed
    assert dense.prefill_flops_per_token(64) > pruned.prefill_flops_per_token(64)


def test_kernel_backend_names_pure_pytorch_here():
    backend = kernel_backend(build("bamba"), torch.device("cpu"))
    assert backend["summary"] == "pure PyTorch" and backend["functions"]
    assert set(backend["functions"].values()) == {"pure PyTorch"}
    assert kernel_backend(build("llama"), torch.device("cpu"))["summary"] == "no Mamba layers"


def test_bad_input_gives_clear_errors(mamba2_dir, tmp_path, capsys):
    out = str(tmp_path / "x.json")

    def error_of(*args: str) -> str:
        try:
            code = main(["bench", *args, "--out", out])
        except SystemExit as exc:  # argparse refuses an out-of-range number itself
            code = exc.code
        assert code == 2
        return capsys.readouterr().err

    assert "not a zoo name or a local directory" in error_of("--model", "no-such-model")
    other = tmp_path / "bamba"
    Plan.for_model(save_tiny("bamba", other), [Component("block", 0)]).save(tmp_path / "plan.json")
    assert "plan is for a bamba model" in error_of("--model", str(mamba2_dir), "--plan", str(tmp_path / "plan.json"))
    assert "--batch-sizes '1,x'" in error_of("--model", str(mamba2_dir), "--batch-sizes", "1,x")
    assert "--prompt-len: 0 is out of range" in error_of("--model", str(mamba2_dir), "--prompt-len", "0")
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ShedderError, match="--new-tokens must be at least 2"):
        benchmark(build("mamba2"), settings=BenchSettings(new_tokens=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["mamba2", "bamba"])
def test_cuda_graph_replay_gives_the_eager_loops_tokens(family):
    model = build(family).cuda()
    prompt = token_ids(batch=2, length=16).cuda()
    eager = StaticDecoder(model, batch=2, prompt_len=16, new_tokens=8, use_graph=False)
    eager.prepare(prompt)
    expected = eager.run(prompt)
    decoder = StaticDecoder(model, batch=2, prompt_len=16, new_tokens=8)
    decoder.prepare(prompt)
    assert decoder.mode == "cuda_graph", decoder.fallback_reason
    assert torch.equal(decoder.run(prompt), expected)
    assert torch.equal(decoder.run(prompt), expected)  # replays after an in-place reset
    if family == "mamba2":  # same cache layers as generate, so the same kernels: identical tokens
        assert torch.equal(expected, generate_exactly(model, prompt, 8))
