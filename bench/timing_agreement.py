"""Benchmark: can the prefill and decode timings be trusted? A Mamba-2 of the mamba2-2.7b shape (random weights)
and the same model minus 14 of 64 blocks (evenly spread), extracted, timed in turns:

- prefill: the prompt's forward pass at batch 1 (``paired_prefill``: at least 21 pairs after 2 warm-ups, order
  alternating, CUDA events), median and quartiles per model, and the speedup against the cost model's FLOP ideal;
- decode: the CUDA-graph loop (``StaticDecoder``), ``--repeats`` timed runs per model after a warm-up.

Run it twice, as two processes; the second run, given the first's JSON with ``--against``, reports how far the
medians of the two runs lie apart (as a share of their mean):

    python bench/timing_agreement.py --device cuda --out bench/results/timing_agreement_run1.json
    python bench/timing_agreement.py --device cuda --against bench/results/timing_agreement_run1.json \
        --out bench/results/timing_agreement_run2.json
    python bench/timing_agreement.py --small --device cpu --repeats 3 --out /tmp/t.json   # CPU smoke check
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_table import random_mamba2, removing  # noqa: E402
from shedder.model.loading import resolve_device, resolve_dtype  # noqa: E402
from shedder.speed.cost_model import ideal_speedups, model_cost  # noqa: E402
from shedder.speed.latency import (BenchSettings, environment, extracted_model, paired_prefill, random_prompt,  # noqa: E402
                                   spread, timed)
from shedder.speed.static_decode import StaticDecoder  # noqa: E402


def graph_decode_ms(model, settings: BenchSettings, device: torch.device) -> dict:
    """Milliseconds per decode step of the static loop (a CUDA graph on a GPU), per timed run."""
    prompt = random_prompt(model, 1, settings.prompt_len, settings.seed)
    decoder = StaticDecoder(model, 1, settings.prompt_len, settings.new_tokens, settings.use_graph)
    decoder.prepare(prompt)
    for _ in range(max(1, settings.warmup)):
        decoder.run(prompt)
    steps = settings.new_tokens - 1
    runs = []
    for _ in range(settings.repeats):
        decoder.prefill(prompt)
        runs.append(1000 * timed(decoder.decode, device) / steps)
    return {"mode": decoder.mode, **spread(runs)}


def apart(a: float, b: float) -> float:
    """How far two medians lie apart, as a share of their mean."""
    return round(abs(a - b) / ((a + b) / 2), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU check)")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--against", help="the JSON of an earlier run, to report agreement with")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    settings = BenchSettings(prompt_len=32 if args.small else args.prompt_len, new_tokens=args.new_tokens,
                             batch_sizes=(1,), repeats=args.repeats, warmup=2)
    dense = random_mamba2(args.small, device, dtype)
    plan = removing("block", 14)(dense)
    pruned = extracted_model(dense, plan).to(device)
    ideal = ideal_speedups(model_cost(dense, plan.with_removed([])), model_cost(dense, plan), settings.prompt_len,
                           [1], settings.mean_decode_context)
    with torch.no_grad():
        prefill = paired_prefill(dense, pruned, settings)
        decode = {"dense": graph_decode_ms(dense, settings, device), "extracted": graph_decode_ms(pruned, settings, device)}
    speedup = prefill["speedup"]["median"]
    report = {
        "environment": environment(dense), "removed": [str(c) for c in plan.removed],
        "settings": {"prompt_len": settings.prompt_len, "new_tokens": settings.new_tokens, "repeats": settings.repeats},
        "prefill": prefill, "prefill_ideal_flops": round(ideal["prefill_flops"], 4),
        "prefill_speedup_over_ideal": round(speedup / ideal["prefill_flops"], 4),
        "decode_ms_per_step": decode,
        "decode_speedup": round(decode["dense"]["median"] / decode["extracted"]["median"], 4),
        "decode_ideal_bytes": round(ideal["decode_bytes"]["1"], 4),
    }
    if args.against:
        before = json.loads(Path(args.against).read_text(encoding="utf-8"))
        report["agreement_with_earlier_run"] = {
            "prefill_dense": apart(before["prefill"]["dense_ms"]["median"], prefill["dense_ms"]["median"]),
            "prefill_extracted": apart(before["prefill"]["extracted_ms"]["median"], prefill["extracted_ms"]["median"]),
            "prefill_speedup": apart(before["prefill"]["speedup"]["median"], speedup),
            "decode_dense": apart(before["decode_ms_per_step"]["dense"]["median"], decode["dense"]["median"]),
            "decode_extracted": apart(before["decode_ms_per_step"]["extracted"]["median"],
                                      decode["extracted"]["median"]),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"prefill {prefill['dense_ms']['median']} -> {prefill['extracted_ms']['median']} ms, speedup {speedup}x "
          f"(ideal {ideal['prefill_flops']:.3f}x); decode {decode['dense']['median']:.3f} -> "
          f"{decode['extracted']['median']:.3f} ms/step; agreement {report.get('agreement_with_earlier_run')}")


if __name__ == "__main__":
    main()
