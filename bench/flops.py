"""Benchmark: achieved FLOP/s of candidate evaluation (what the search spends its time on) against the GPU's
measured bf16 matrix peak, for several token-batch sizes.

The peak is measured here, not taken from a datasheet: the median of 20 CUDA-event-timed bf16 matmuls of
8192 x 8192 x 8192. A candidate evaluation's FLOPs are counted with the cost model's prefill terms
(:func:`shedder.speed.cost_model.model_cost`): every token that passes a kept layer costs that layer's
``2 x weights + mixing`` FLOPs, and every token costs the output head's ``2 x head weights`` (the loss needs
logits at every position). Candidates are whole blocks, so a removed layer costs nothing and the count is exact
up to the terms the cost model leaves out (norms, conv, activations: a few percent, so the reported share is a
slight underestimate). Evaluations use the search's own Evaluator (prefix reuse from stored layer inputs).

    python bench/flops.py --random-mamba2 64x2560 --batch-sizes 4,8,16 --windows 32 --seq-len 1024
    python bench/flops.py --random-mamba2 4x256 --device cpu --batch-sizes 2 --windows 4 --seq-len 64  # smoke

``--norms stock,fused`` times each batch size with transformers' own Mamba-2 norms and with mamba-ssm's fused
norm kernels (``shedder.model.fused_norms``, what a model placed on a GPU runs); the default is ``fused``.

``--profile`` adds where the GPU time of those evaluations goes (torch.profiler, first batch size): device time
per kernel family (matmuls, the SSD scan, the convolution, norms, the loss, the rest) and the share of the wall
time in which no kernel ran.

Results go to bench/results/flops_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_cost import random_mamba2  # noqa: E402
from shedder.measurement.calibration import cut_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings, Evaluator  # noqa: E402
from shedder.model.fused_norms import use_fused_norms  # noqa: E402
from shedder.model.loading import resolve_device  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402
from shedder.speed.cost_model import model_cost  # noqa: E402
from shedder.speed.latency import timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak(device: torch.device, repeats: int = 20) -> float:
    """Median achieved FLOP/s of a square bf16 matmul of 8192 (float32 of 1024 on a CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * n ** 3 / statistics.median(times)


# kernel families by name; the first pattern that matches wins (matmul kernels are cuBLAS / CUTLASS / nvJet)
KERNEL_FAMILIES = [
    ("matmul", re.compile(r"gemm|cutlass|nvjet|xmma|cublas|matmul|_mm_|splitk", re.I)),
    ("ssd scan (mamba-ssm Triton)", re.compile(r"chunk|state_passing|bmm|ssd", re.I)),
    ("causal conv1d", re.compile(r"conv1d|causal_conv", re.I)),
    ("norms", re.compile(r"norm|rms", re.I)),
    ("loss (log-softmax, gather)", re.compile(r"softmax|nll|cross_entropy|gather|logsumexp", re.I)),
    ("copies and casts", re.compile(r"copy|cast|memcpy|memset|cat", re.I)),
]


def kernel_family(name: str) -> str:
    return next((family for family, pattern in KERNEL_FAMILIES if pattern.search(name)), "other elementwise")


def profile_evaluations(run, device: torch.device) -> dict:
    """Device time per kernel family while ``run()`` executes, and the share of wall time with no kernel running."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = timed(run, device)
    with tempfile.TemporaryDirectory() as tmp:  # the chrome trace is the stable format across torch versions
        prof.export_chrome_trace(f"{tmp}/trace.json")
        trace = json.loads(Path(f"{tmp}/trace.json").read_text(encoding="utf-8"))
    families: dict[str, float] = {}
    kernels: dict[str, float] = {}
    intervals = []
    for event in trace.get("traceEvents", []):
        if event.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset") or "dur" not in event:
            continue
        name, seconds = event.get("name", "?"), event["dur"] / 1e6  # microseconds
        family = kernel_family(name)
        families[family] = families.get(family, 0.0) + seconds
        kernels[name] = kernels.get(name, 0.0) + seconds
        intervals.append((event["ts"], event["ts"] + event["dur"]))
    busy = _union_length(intervals) / 1e6
    total = sum(families.values()) or 1e-12
    return {"wall_seconds": round(wall, 4), "kernel_seconds": round(total, 4),
            "gpu_busy_share_of_wall": round(busy / wall, 3),
            "families": {k: {"seconds": round(v, 4), "share": round(v / total, 3)}
                         for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": k[:120], "seconds": round(v, 4), "share": round(v / total, 3)}
                            for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:15]]}


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals (kernels on several streams may overlap)."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def layer_and_head_flops(model, seq_len: int) -> tuple[float, float]:
    """Per token: one layer's ``2 x weights + mixing`` (layers are alike in these models) and the head's."""
    cost = model_cost(model)
    head = 2 * cost.head_params
    # prefill_flops_per_token counts the head once per prompt; take it back out to leave the layers
    layers = cost.prefill_flops_per_token(seq_len) - head / seq_len
    return layers / len(cost.layers), head


def time_evaluations(model, windows, candidates, batch_size: int, device: torch.device, per_layer: float,
                     head: float, tokens: int, peak: float, profile: bool) -> dict:
    """Time the block ``candidates``' evaluations at ``batch_size`` windows per forward: FLOP/s and share of peak."""
    evaluator = Evaluator(model, windows, EvalSettings(batch_size=batch_size, group_layers=False))
    with torch.no_grad():
        evaluator.set_base([])
        evaluator.evaluate(candidates[0])  # warm-up: kernels compiled and tuned for this batch shape
        work_before = evaluator.work
        seconds = timed(lambda: [evaluator.evaluate(candidate) for candidate in candidates], device)
    work = evaluator.work - work_before
    flops = work * per_layer + len(candidates) * tokens * head
    run = {"batch_size": batch_size, "tokens_per_forward": batch_size * windows.seq_len,
           "seconds": round(seconds, 4), "seconds_per_candidate": round(seconds / len(candidates), 4),
           "tflops": round(flops / seconds / 1e12, 1), "share_of_peak": round(flops / seconds / peak, 3)}
    if device.type == "cuda":
        run["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 1)
        torch.cuda.reset_peak_memory_stats(device)
    if profile:
        with torch.no_grad():
            run["profile"] = profile_evaluations(
                lambda: [evaluator.evaluate(candidate) for candidate in candidates], device)
    del evaluator
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-mamba2", default="64x2560", help="LAYERSxWIDTH of the random-weight Mamba-2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--candidates", type=int, default=6, help="block candidates evaluated per batch size")
    parser.add_argument("--norms", default="fused", help="stock, fused or both (stock,fused): which Mamba-2 norms")
    parser.add_argument("--profile", action="store_true",
                        help="also profile kernels at the first batch size (of each --norms)")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_mamba2(args.random_mamba2, device, dtype)
    layers = model.config.num_hidden_layers
    stream = torch.randint(0, model.config.vocab_size, (args.windows * args.seq_len,),
                           generator=torch.Generator().manual_seed(0))
    windows = cut_windows(stream, args.seq_len, source="random tokens")
    per_layer, head = layer_and_head_flops(model, args.seq_len)
    # candidates spread over the depth: early ones recompute most of the model, late ones little
    picks = [round(i * (layers - 1) / max(1, args.candidates - 1)) for i in range(args.candidates)]
    candidates = [Component("block", layer) for layer in picks]
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"model": f"random mamba2 {args.random_mamba2}", "params": sum(p.numel() for p in model.parameters()),
              "device": name, "dtype": str(dtype), "torch": torch.__version__, "windows": args.windows,
              "seq_len": args.seq_len, "candidates": [str(c) for c in candidates],
              "flops_per_token_per_layer": round(per_layer), "head_flops_per_token": round(head),
              "matmul_peak_tflops": round(peak / 1e12, 1), "runs": []}
    tokens = args.windows * args.seq_len
    for norms in args.norms.split(","):
        fused = use_fused_norms(norms == "fused")
        if norms == "fused" and not fused:
            print("fused norms unavailable here (no mamba-ssm, or SHEDDER_FUSED_NORMS=0): skipped", flush=True)
            continue
        for position, batch_size in enumerate(int(b) for b in args.batch_sizes.split(",")):
            run = time_evaluations(model, windows, candidates, batch_size, device, per_layer, head, tokens, peak,
                                   profile=args.profile and position == 0)
            run = {"norms": norms, **run}
            result["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "profile"}), flush=True)
    tag = args.tag or f"{name.replace('NVIDIA ', '').replace(' ', '-')}_mamba2-{args.random_mamba2}"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"flops_{tag}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"matmul peak {result['matmul_peak_tflops']} TFLOP/s -> {path}")


if __name__ == "__main__":
    main()
