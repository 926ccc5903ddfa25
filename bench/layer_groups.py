"""Benchmark: a sensitivity sweep with the candidates of each layer evaluated together (one forward of the
later layers for all of them) against one at a time; same scores, wall time of each, in turns.

    python bench/layer_groups.py --model demo-mamba2 --kinds block,ssm,ssm_heads --tokens 4096 --seq-len 256
    python bench/layer_groups.py --model demo-hybrid --kinds block,ssm,attn,mlp,ssm_heads,mlp_channels --device cuda

Writes ``bench/results/layer_groups_<device>_<model>_<kinds>_<seq-len>.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.search_cost import sync  # noqa: E402
from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings, Evaluator  # noqa: E402
from shedder.model.loading import load_model, resolve_device  # noqa: E402
from shedder.removal.catalogue import catalogue_of  # noqa: E402
from shedder.searching.executor import LocalExecutor  # noqa: E402


def sweep(model, windows, kinds: list[str], batch_size: int, grouped: bool) -> tuple[float, list[float], int]:
    evaluator = Evaluator(model, windows, EvalSettings(batch_size=batch_size, group_layers=grouped))
    device = next(model.parameters()).device
    components = catalogue_of(model).components(kinds)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        outcome = LocalExecutor(evaluator).score([], components)
    sync(device)
    return time.perf_counter() - start, [r.nll_sum for r in outcome.results], len(components)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--kinds", default="block,ssm,ssm_heads")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calib", default="wiki")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="sweeps of each way, in turns")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, args.dtype, str(device))
    windows = calibration_windows(args.calib, tokenizer, args.seq_len, args.tokens)
    kinds = args.kinds.split(",")
    seconds = {"one at a time": [], "layer groups": []}
    sums = {}
    for _ in range(args.repeats):
        for name, grouped in (("one at a time", False), ("layer groups", True)):
            took, sums[name], count = sweep(model, windows, kinds, args.batch_size, grouped)
            seconds[name].append(took)
    same = sums["one at a time"] == sums["layer groups"]
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {"model": args.model, "device": str(device), "settings": vars(args), "components": count,
              "windows": len(windows), "seconds": seconds, "median_seconds": medians,
              "speedup": medians["one at a time"] / medians["layer groups"], "identical_sums": same}
    out = ROOT / "bench" / "results" / f"layer_groups_{device.type}_{args.model}_{'-'.join(kinds)}_{args.seq_len}.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{args.model} on {device}, {count} components x {len(windows)} windows of {args.seq_len}: one at a time "
          f"{medians['one at a time']:.1f} s, layer groups {medians['layer groups']:.1f} s "
          f"({result['speedup']:.2f}x; sums identical: {same}) -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
