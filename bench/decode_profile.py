"""Where one decode step's time goes, per layer and per part, against what reading the weights needs.

    python bench/decode_profile.py --random-mamba2 64x2560 --device cuda --dtype bfloat16   # the mamba2-2.7b shape
    python bench/decode_profile.py --model demo-mamba2 --device cpu --steps 16

Measured at batch 1 after a prompt of ``--prompt-len`` random tokens:

- the decode step as the benchmark runs it (``StaticDecoder``: a CUDA graph replay on a GPU) and the same step
  run eagerly, each the median over ``--steps`` steps and ``--repeats`` rounds;
- inside the eager step, the time spent in every layer and in its SSM / attention / MLP part, bracketed by CUDA
  events from forward hooks (on a CPU, the wall clock), next to the bytes of that part's parameters, which a
  batch-1 step must read once: the bandwidth each part achieves;
- the device's copy bandwidth (a 1 GiB device-to-device copy; bytes read plus written) and the ceiling it
  sets: all parameter bytes read once per step at that rate.

The gap between the eager and graph steps is launch overhead; the gap between the graph step and the ceiling is
what kernels could still gain. Writes ``bench/results/decode_profile_<tag>.json`` and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.search_cost import random_mamba2, sync  # noqa: E402
from shedder.families import describe_model  # noqa: E402
from shedder.model.loading import load_model, resolve_device, resolve_dtype  # noqa: E402
from shedder.speed.latency import environment, random_prompt  # noqa: E402
from shedder.speed.static_decode import StaticDecoder  # noqa: E402


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class PartTimer:
    """Forward hooks that time every call of the given modules: CUDA events on a GPU, the wall clock on a CPU."""

    def __init__(self, parts: dict[str, torch.nn.Module], device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, list] = defaultdict(list)
        self.handles = []
        for name, module in parts.items():
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._end(name)))

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, name: str):
        return lambda module, args: self.marks[name].append([self._now(), None])

    def _end(self, name: str):
        def hook(module, args, output):
            self.marks[name][-1][1] = self._now()
        return hook

    def seconds(self) -> dict[str, float]:
        """Total seconds per part over every call so far."""
        if self.cuda:
            torch.cuda.synchronize()
            return {n: sum(s.elapsed_time(e) for s, e in calls) / 1000 for n, calls in self.marks.items()}
        return {n: sum(e - s for s, e in calls) for n, calls in self.marks.items()}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def parts_of(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``layer N`` and its ``ssm`` / ``attn`` / ``mlp`` parts, as the family describes them."""
    parts = {}
    for layer in describe_model(model)[1]:
        parts[f"layer {layer.index}"] = layer.layer
        for kind in ("ssm", "attn", "mlp"):
            module = getattr(layer, kind)
            if module is not None:
                parts[f"layer {layer.index} {kind}"] = module
    return parts


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 10) -> float | None:
    """Bytes per second of a device-to-device copy (read plus written), on a GPU only."""
    if device.type != "cuda":
        return None
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        target.copy_(source)
    end.record()
    end.synchronize()
    return 2 * source.numel() * repeats / (start.elapsed_time(end) / 1000)


def step_ms(decoder: StaticDecoder, prompt: torch.Tensor, steps: int, repeats: int, device: torch.device) -> float:
    """Median over rounds of the mean decode-step time, in ms."""
    rounds = []
    for _ in range(repeats):
        decoder.prefill(prompt)
        sync(device)
        start = time.perf_counter()
        decoder.decode()
        sync(device)
        rounds.append(1000 * (time.perf_counter() - start) / steps)
    return statistics.median(rounds)


def profile(model: torch.nn.Module, prompt_len: int, steps: int, repeats: int) -> dict:
    device = next(model.parameters()).device
    prompt = random_prompt(model, 1, prompt_len, seed=0)
    graph = StaticDecoder(model, 1, prompt_len, steps + 1, use_graph=True)
    graph.prepare(prompt)
    eager = StaticDecoder(model, 1, prompt_len, steps + 1, use_graph=False)
    eager.prepare(prompt)
    result = {"graph_mode": graph.mode, "graph_step_ms": step_ms(graph, prompt, steps, repeats, device),
              "eager_step_ms": step_ms(eager, prompt, steps, repeats, device)}
    parts = parts_of(model)
    timer = PartTimer(parts, device)
    try:
        for _ in range(repeats):
            eager.prefill(prompt)
            timer.marks.clear()  # the prompt's pass is not a decode step
            eager.decode()
            sync(device)
        per_call = {name: 1000 * s / steps for name, s in timer.seconds().items()}  # the last round
    finally:
        timer.remove()
    rows = []
    for name, module in parts.items():
        ms, size = per_call.get(name, 0.0), param_bytes(module)
        rows.append({"part": name, "ms_per_step": round(ms, 4), "param_bytes": size,
                     "achieved_gb_s": round(size / (ms / 1000) / 1e9, 1) if ms > 0 else None})
    total_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    layers_ms = sum(r["ms_per_step"] for r in rows if r["part"].count(" ") == 1)
    bandwidth = copy_bandwidth(device)
    result.update({
        "param_bytes": total_bytes, "layers_ms_in_eager_step": round(layers_ms, 4),
        "outside_layers_ms_in_eager_step": round(result["eager_step_ms"] - layers_ms, 4),
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1) if bandwidth else None,
        "ceiling_step_ms": round(1000 * total_bytes / bandwidth, 4) if bandwidth else None,
        "graph_share_of_bandwidth": round(total_bytes / (result["graph_step_ms"] / 1000) / bandwidth, 4)
        if bandwidth else None,
        "parts": rows,
    })
    by_kind = defaultdict(float)
    for row in rows:
        words = row["part"].split()
        by_kind[words[2] if len(words) == 3 else "layer (whole)"] += row["ms_per_step"]
    result["ms_per_step_by_kind"] = {k: round(v, 4) for k, v in by_kind.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--random-mamba2", help="LAYERSxWIDTH: a random-weight Mamba-2 instead of --model")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=64, help="decode steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each figure is their median")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.random_mamba2:
        model, name = random_mamba2(args.random_mamba2, device, dtype), f"random-mamba2-{args.random_mamba2}"
    else:
        model, _ = load_model(args.model, str(dtype).removeprefix("torch."), str(device))
        name = args.model
    model.eval()
    with torch.no_grad():
        result = profile(model, args.prompt_len, args.steps, args.repeats)
    out_dir = args.out_dir.resolve()
    shown = out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir  # no checkout path in results
    result = {"model": name, "settings": vars(args) | {"out_dir": str(shown)},
              "environment": environment(model), **result}
    tag = args.tag or f"{device.type}_{name}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"decode_profile_{tag}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{name} on {device} ({result['graph_mode']}): step {result['graph_step_ms']:.3f} ms, eager "
          f"{result['eager_step_ms']:.3f} ms (layers {result['layers_ms_in_eager_step']:.3f}, outside them "
          f"{result['outside_layers_ms_in_eager_step']:.3f}); by part: {result['ms_per_step_by_kind']}")
    if result["ceiling_step_ms"]:
        print(f"weights {result['param_bytes'] / 1e9:.2f} GB at {result['copy_bandwidth_gb_s']} GB/s copy bandwidth: "
              f"ceiling {result['ceiling_step_ms']:.3f} ms a step; the step reaches "
              f"{100 * result['graph_share_of_bandwidth']:.0f}% of it")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
