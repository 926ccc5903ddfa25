"""Benchmark: dense vs physically extracted models, time to first token and decode tokens/s (plain
``generate`` and the CUDA-graph decode loop), against the ideal speedup of the removed bytes and FLOPs.

Rows (random weights are fine for timing; the shapes are the paper's models):

- ``mamba2-ssm22``: a Mamba-2 of the mamba2-2.7b shape (64 layers, d_model 2560, d_state 128, expand
  2, headdim 64, ngroups 1, vocab 50288, tied embeddings) minus the 22 SSMs of the reference code's
  published pruning config for mamba2-2.7b;
- ``mamba2-block14``: the same model minus 14 blocks, evenly spread;
- ``mamba1-block14``: a Mamba-1 of the mamba-2.8b shape (64 layers, d_model 2560, d_state 16, expand
  2, vocab 50280, tied embeddings) minus 14 blocks, evenly spread (the paper's count; which blocks
  does not change the timing, as all layers have one shape);
- ``demo-mamba2-block3``, ``demo-mamba2-ssm4``, ``demo-hybrid-block2``: the zoo's demo models minus a
  few blocks or SSMs, evenly spread (the hybrid's attention layers are kept).

Each row writes ``bench/results/latency_<device>_<row>.json`` (the ``shedder bench`` report) and the
script prints a markdown table. A row whose plan the extractor refuses (e.g. SSM removal before
extraction supports it) is skipped with the extractor's message. ``--small`` swaps in tiny shapes and
a short prompt so the whole script can be checked on a CPU (``--repeats 1 --warmup 0`` shortens it).

    python bench/latency_table.py --device cuda --dtype bfloat16
    python bench/latency_table.py --device cuda --rows mamba2-ssm22,mamba2-block14
    python bench/latency_table.py --small --device cpu
"""
from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shedder.errors import ShedderError  # noqa: E402
from shedder.formats.reference_format import from_reference  # noqa: E402
from shedder.model.loading import load_model, resolve_device, resolve_dtype  # noqa: E402
from shedder.plan import Plan  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402
from shedder.removal.masks import catalogue_of  # noqa: E402
from shedder.speed.latency import BenchSettings, benchmark, save_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# The reference code's published pruning config for mamba2-2.7b (22 SSMs, in removal order).
PUBLISHED_MAMBA2_2_7B = {"pruned_ssm_idx": [63, 54, 42, 45, 53, 57, 58, 59, 38, 56, 50, 61, 60, 43, 37, 62, 49, 34,
                                            55, 33, 39, 35]}


def random_mamba2(small: bool, device: torch.device, dtype: torch.dtype):
    from transformers import Mamba2Config

    shape = dict(num_hidden_layers=64, hidden_size=2560, state_size=128, head_dim=64, num_heads=80,
                 vocab_size=50288)
    if small:
        shape = dict(num_hidden_layers=64, hidden_size=64, state_size=16, head_dim=16, num_heads=8, vocab_size=512)
    return _random(Mamba2Config(expand=2, n_groups=1, tie_word_embeddings=True, **shape), device, dtype)


def random_mamba1(small: bool, device: torch.device, dtype: torch.dtype):
    from transformers import MambaConfig

    shape = dict(num_hidden_layers=64, hidden_size=2560, state_size=16, vocab_size=50280, time_step_rank=160)
    if small:
        shape = dict(num_hidden_layers=64, hidden_size=64, state_size=16, vocab_size=512, time_step_rank=4)
    return _random(MambaConfig(expand=2, conv_kernel=4, tie_word_embeddings=True, **shape), device, dtype)


def _random(config, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 2.7B model initialises slowly on a CPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def evenly_spread(layers: list[int], count: int) -> list[int]:
    """``count`` of ``layers`` at even spacing (the middle of each of ``count`` equal stretches)."""
    return [layers[int((i + 0.5) * len(layers) / count)] for i in range(count)]


def mamba_layers(model) -> list[int]:
    """Layers holding an SSM whose whole block may go (a hybrid keeps its attention layers)."""
    catalogue = catalogue_of(model)
    blocks = {c.layer for c in catalogue.components(["block"])}
    return sorted(c.layer for c in catalogue.components(["ssm"]) if c.layer in blocks)


def removing(kind: str, count: int) -> Callable[[object], Plan]:
    def plan(model) -> Plan:
        return Plan.for_model(model, [Component(kind, i) for i in evenly_spread(mamba_layers(model), count)])
    return plan


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # what is timed dense (rows on the same model share one dense measurement)
    build: Callable[[bool, torch.device, torch.dtype], object]
    plan: Callable[[object], Plan]
    removal: str


def _zoo(name: str) -> Callable[[bool, torch.device, torch.dtype], object]:
    def build(small: bool, device: torch.device, dtype: torch.dtype):
        return load_model(name, str(dtype).replace("torch.", ""), str(device))[0]
    return build


ROWS = [
    Row("mamba2-ssm22", "mamba2-2.7b shape", random_mamba2, lambda m: from_reference(PUBLISHED_MAMBA2_2_7B, m),
        "22 SSMs (published plan)"),
    Row("mamba2-block14", "mamba2-2.7b shape", random_mamba2, removing("block", 14), "14 of 64 blocks"),
    Row("mamba1-block14", "mamba-2.8b shape", random_mamba1, removing("block", 14), "14 of 64 blocks"),
    Row("demo-mamba2-block3", "demo-mamba2", _zoo("demo-mamba2"), removing("block", 3), "3 of 12 blocks"),
    Row("demo-mamba2-ssm4", "demo-mamba2", _zoo("demo-mamba2"), removing("ssm", 4), "4 of 12 SSMs"),
    Row("demo-hybrid-block2", "demo-hybrid", _zoo("demo-hybrid"), removing("block", 2), "2 of 6 Mamba blocks"),
]


def _cell(record: dict, *path: str) -> str:
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return "-"
        record = record[key]
    value = record.get("median") if isinstance(record, dict) else record
    return "-" if value is None else f"{value:g}"


def table_rows(row: Row, report: dict) -> list[str]:
    """Markdown rows: one per batch size, time to first token on the batch-1 row."""
    env, dense, pruned = report["environment"], report["dense"], report["extracted"]
    measured, ideal = report["measured_speedup"], report["ideal_speedup"]
    where = f"{env['device_name']}, {env['dtype']}, {env['backend']['summary']}"
    lines = []
    for batch in dense["decode"]:
        paired = report.get("paired_prefill", {}).get("speedup")
        turns = f"; prefill in turns {paired['median']:g}x [{paired['q1']:g}-{paired['q3']:g}]" if paired else ""
        first = (f"{_cell(dense, 'ttft_ms')} -> {_cell(pruned, 'ttft_ms')} ({_cell(measured, 'ttft')}x{turns}; "
                 f"ideal {_cell(ideal, 'prefill_flops')}x)") if batch == "1" else ""
        d, p, s = dense["decode"][batch], pruned["decode"][batch], measured["decode"].get(batch, {})
        mode = d.get("static", {}).get("mode", "-")
        lines.append(
            f"| {row.model} | {row.removal} | {where} | {dense['params'] / 1e6:.1f}M -> {pruned['params'] / 1e6:.1f}M "
            f"| {first} | {batch} | {_cell(d, 'generate', 'tokens_per_s')} -> {_cell(p, 'generate', 'tokens_per_s')} "
            f"({_cell(s, 'generate')}x) | {_cell(d, 'static', 'tokens_per_s')} -> {_cell(p, 'static', 'tokens_per_s')} "
            f"({_cell(s, 'static')}x, {mode}) | {_cell(ideal, 'decode_bytes', batch)}x "
            f"| {_cell(s, 'static_over_ideal')} |"
        )
    return lines


HEADER = ("| model | removed | device | params | first token ms, batch 1 (speedup; ideal) | batch "
          "| generate tok/s (speedup) | static loop tok/s (speedup, mode: cuda_graph on a GPU) | ideal decode speedup "
          "| loop speedup / ideal |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma-separated row names")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--small", action="store_true", help="tiny shapes and a short prompt (CPU check)")
    parser.add_argument("--prompt-len", type=int, default=None, help="default 2048 (--small: 32)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (--small: 8)")
    parser.add_argument("--batch-sizes", default=None, help="default 1,16 (--small: 1,4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - {r.name for r in ROWS})
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(r.name for r in ROWS)}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    batches = args.batch_sizes or ("1,4" if args.small else "1,16")
    settings = BenchSettings(prompt_len=args.prompt_len or (32 if args.small else 2048),
                             new_tokens=args.new_tokens or (8 if args.small else 128),
                             batch_sizes=tuple(int(b) for b in batches.split(",")),
                             repeats=args.repeats, warmup=args.warmup)
    tag = f"{device.type}{'_small' if args.small else ''}"
    lines, skipped = [HEADER], []
    loaded: dict[str, tuple] = {}  # model name -> (model, dense record or None)
    for row in (r for r in ROWS if r.name in wanted):
        if row.model not in loaded:
            loaded.clear()  # one large model on the device at a time
            model = None
            loaded[row.model] = (row.build(args.small, device, dtype), None)
        model, dense = loaded[row.model]
        print(f"{row.name}: {row.model} minus {row.removal}", file=sys.stderr)
        try:
            report = benchmark(model, None, row.plan(model), settings, dense_record=dense,
                               progress=lambda what: print(f"  {what}", file=sys.stderr))
        except ShedderError as exc:
            skipped.append(f"- {row.name} skipped: {exc}")
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # a failing row must not cost the rows after it
            traceback.print_exc()
            skipped.append(f"- {row.name} failed: {type(exc).__name__}: {exc}")
            continue
        loaded[row.model] = (model, report["dense"])
        report = {"row": row.name, "model": row.model, "removal": row.removal, "small": args.small, **report}
        path = save_report(report, Path(args.out_dir) / f"latency_{tag}_{row.name}.json")
        print(f"  -> {path}", file=sys.stderr)
        lines += table_rows(row, report)
    print("\n".join(lines + skipped))


if __name__ == "__main__":
    main()
