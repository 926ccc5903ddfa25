"""CLI: ``bench`` measures time to first token, decode tokens/s and peak memory, dense and (with a
plan) of the physically extracted model, and compares the measured speedup with the ideal one."""
from __future__ import annotations

import argparse

from ..errors import ShedderError
from ..paths import check_output_file
from . import add_plan_args, load_plan_for, progress_bar
from .arg_types import NON_NEGATIVE, POSITIVE, SEED


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise ShedderError(f"--batch-sizes {text!r}: give positive whole numbers separated by commas, e.g. 1,16.")
    return sizes


def _median(record: dict | None, *path: str):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record.get("median") if isinstance(record, dict) else record


def summary(report: dict) -> list[str]:
    """A few plain lines: per model the time to first token and decode rates; then the speedups."""
    env = report["environment"]
    lines = [f"{report['model_type']} on {env['device_name']} ({env['dtype']}, {env['backend']['summary']})"]
    for name in ("dense", "extracted"):
        record = report.get(name)
        if record is None:
            continue
        lines.append(f"{name}: {record['params']:,} parameters, time to first token "
                     f"{_median(record, 'ttft_ms')} ms")
        for batch, row in record["decode"].items():
            if "error" in row:
                lines.append(f"  batch {batch}: {row['error']}")
                continue
            static = row.get("static", {})
            mode = f" ({static['mode']})" if "mode" in static else ""
            lines.append(f"  batch {batch}: generate {_median(row, 'generate', 'tokens_per_s')} tok/s, "
                         f"static loop{mode} {_median(static, 'tokens_per_s')} tok/s, "
                         f"peak {row['generate']['peak_memory_bytes'] / 2**20:.0f} MiB")
    measured, ideal = report.get("measured_speedup"), report.get("ideal_speedup")
    if measured:
        lines.append(f"speedup: first token {measured['ttft']}x, prefill alone {measured['prefill']}x "
                     f"(ideal {ideal['prefill_flops']}x)")
        paired = report.get("paired_prefill")
        if paired:
            s = paired["speedup"]
            lines.append(f"  prefill timed in turns ({s['runs']} pairs): {s['median']}x, interquartile {s['q1']}-{s['q3']}x "
                         f"({paired['dense_ms']['median']} -> {paired['extracted_ms']['median']} ms)")
        for batch, row in measured["decode"].items():
            lines.append(f"  decode batch {batch}: generate {row.get('generate')}x, static {row.get('static')}x "
                         f"(ideal {ideal['decode_bytes'][batch]}x)")
    return lines


def _bench(args: argparse.Namespace) -> int:
    from ..model.loading import load_model
    from ..speed.latency import BenchSettings, benchmark, save_report

    settings = BenchSettings(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                             batch_sizes=_batch_sizes(args.batch_sizes), repeats=args.repeats, warmup=args.warmup,
                             static_loop=not args.no_static, use_graph=not args.no_graph, seed=args.seed)
    settings.check()
    check_output_file(args.out)
    model, tokenizer = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    plan = load_plan_for(model, args) if args.plan else None
    with progress_bar(0, "bench") as bar:
        report = benchmark(model, tokenizer, plan, settings, progress=bar.set_description_str)
    report = {"model": args.model, "plan": args.plan, **report}
    path = save_report(report, args.out)
    print("\n".join(summary(report)))
    print(f"-> {path}")
    return 0


def register(subparsers, add_model_args) -> None:
    parser = subparsers.add_parser("bench", help="time to first token, decode tokens/s and peak memory "
                                                 "(with --plan: of the extracted model, against the dense one)")
    add_model_args(parser)
    add_plan_args(parser, "plan JSON: time the physically extracted model too, and compare")
    parser.add_argument("--out", required=True, help="JSON file to write the measurements to")
    parser.add_argument("--prompt-len", type=POSITIVE, default=2048)
    parser.add_argument("--new-tokens", type=POSITIVE, default=128)
    parser.add_argument("--batch-sizes", default="1,16", help="decode batch sizes, e.g. 1,16")
    parser.add_argument("--repeats", type=POSITIVE, default=3, help="timed runs per figure (median, min, max)")
    parser.add_argument("--warmup", type=NON_NEGATIVE, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random prompt tokens")
    parser.add_argument("--no-static", action="store_true", help="time plain generate only")
    parser.add_argument("--no-graph", action="store_true", help="run the static decode loop without a CUDA graph")
    parser.set_defaults(run=_bench)
