"""Benchmark: cost of applying/restoring masks, and perplexity throughput, on a zoo model or folder.

    python bench/mask_and_perplexity.py --model demo-mamba2 --tokens 16384 --seq-len 512

Prints one JSON object: mask apply+restore time per component kind (median of repeats) and
perplexity tokens/s for the dense model and with one component of each kind removed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.perplexity import perplexity  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.masks import catalogue_of, masked  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--calib", default="wiki-test")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, args.dtype, args.device)
    device = next(model.parameters()).device
    catalogue = catalogue_of(model)
    windows = calibration_windows(args.calib, tokenizer, args.seq_len, args.tokens)
    first_of_kind = {}
    for entry in catalogue:
        first_of_kind.setdefault(entry.component.kind, entry.component)

    mask_ms = {}
    for kind, component in first_of_kind.items():
        times = []
        for _ in range(20):
            start = time.perf_counter()
            with masked(model, [component]):
                sync(device)
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
        mask_ms[kind] = round(statistics.median(times), 4)

    perplexity(model, windows.__class__(windows.ids[: args.batch_size], windows.source, None), batch_size=args.batch_size)  # warm-up
    runs = {}
    for label, removed in [("dense", [])] + [(k, [c]) for k, c in first_of_kind.items()]:
        times, result = [], None
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            result = perplexity(model, windows, removed, args.batch_size)
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        runs[label] = {"ppl": round(result.ppl, 4), "seconds": round(seconds, 4),
                       "tokens_per_s": round(len(windows) * windows.seq_len / seconds, 1)}

    print(json.dumps({
        "model": args.model, "model_type": catalogue.model_type, "params": catalogue.total_params,
        "device": str(device), "dtype": str(next(model.parameters()).dtype), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "windows": len(windows), "seq_len": windows.seq_len, "batch_size": args.batch_size,
        "mask_apply_restore_ms": mask_ms, "perplexity": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
