#!/usr/bin/env python3
"""Recovery tuning on the demo models: prune hard, extract, recover (LoRA and full), measure.

For each model: the paper's greedy search on ``wiki`` (the training split) picks the plan, the plan
is extracted to a physically smaller model, and ``shedder.recovery.recover`` fine-tunes it twice (LoRA merged
into the weights, and every weight) on ``wiki``. Dense, pruned and both recovered models are measured
on ``wiki-test`` (held out; never searched or trained on): perplexity, bits per byte, optionally
zero-shot accuracy, and the share of the pruning loss recovered. Writes
``bench/results/recovery_<model>.json`` and prints a table.

    python scripts/recover_demo.py                       # on a GPU: both demo models, default plans
    python scripts/recover_demo.py --stages demo-mamba2=block:4 --stages demo-hybrid=block:3 \\
        --tasks lambada_openai,hellaswag,piqa,arc_easy --limit 500
    python scripts/recover_demo.py --quick               # CPU smoke test of the whole pipeline (minutes)

Every stage resumes: the search, the extraction and each recovery keep their state under ``--work``,
so running the same command again continues where it stopped. ``--quick`` uses tiny settings and
writes its results under ``--work`` (they measure nothing worth keeping).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shedder.extraction.extract import extract  # noqa: E402
from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings  # noqa: E402
from shedder.measurement.tasks import parse_task_list  # noqa: E402
from shedder.model.loading import load_model, resolve_device  # noqa: E402
from shedder.plan import Plan  # noqa: E402
from shedder.recovery.recover import Evaluation, RecoverySettings, recover  # noqa: E402
from shedder.searching.search import parse_stages, search  # noqa: E402

log = logging.getLogger("recover_demo")

DEFAULT_STAGES = {"demo-mamba2": "block:4", "demo-hybrid": "block:3"}  # a third of the blocks
FULL = dict(search_tokens=65536, search_seq_len=512, steps=200, batch_size=16, seq_len=512, eval_tokens=None,
            lora_lr=1e-3, full_lr=3e-4)
QUICK = dict(search_tokens=512, search_seq_len=128, steps=4, batch_size=2, seq_len=128, eval_tokens=4096,
             lora_lr=1e-3, full_lr=3e-4)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo-mamba2,demo-hybrid")
    parser.add_argument("--stages", action="append", default=[], metavar="MODEL=STAGES",
                        help="search stages per model, e.g. demo-mamba2=block:4 (default: "
                        + ", ".join(f"{m}={s}" for m, s in DEFAULT_STAGES.items()) + ")")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--steps", type=int, help="recovery steps (default 200; --quick 4)")
    parser.add_argument("--batch-size", type=int, help="windows per step (default 16; --quick 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per window (default 512; --quick 128)")
    parser.add_argument("--lora-lr", type=float)
    parser.add_argument("--full-lr", type=float)
    parser.add_argument("--eval-tokens", type=int, help="held-out tokens (default: all of wiki-test; --quick 4096)")
    parser.add_argument("--tasks", default=None, help="zero-shot tasks too (comma-separated, or all)")
    parser.add_argument("--limit", type=int, default=None, help="documents per task")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny settings on the CPU: checks the pipeline runs")
    parser.add_argument("--work", type=Path, default=ROOT / "cache" / "recover-demo")
    parser.add_argument("--results", type=Path, default=None,
                        help="where recovery_<model>.json goes (default bench/results; --quick: under --work)")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.quick and args.device == "auto":
        args.device = "cpu"
    if args.results is None:
        args.results = args.work / "results" if args.quick else ROOT / "bench" / "results"
    stages = dict(DEFAULT_STAGES)
    for item in args.stages:
        name, _, text = item.partition("=")
        stages[name.strip()] = text.strip()
    args.stage_map = stages
    return args


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": version("transformers"),
           "peft": version("peft"), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            from transformers.utils.import_utils import is_causal_conv1d_available, is_mamba_2_ssm_available

            env["kernels"] = {"mamba_ssm": is_mamba_2_ssm_available(), "causal_conv1d": is_causal_conv1d_available()}
        except ImportError:
            pass
    return env


def pruned_model(name: str, stages_text: str, args, work: Path) -> tuple[Path, dict]:
    """Search (resumable), then extract the final plan; returns the extracted folder and what was done."""
    extracted = work / "extracted"
    plan_file = work / "search" / "plan.json"
    if not (extracted / "config.json").is_file():
        model, tokenizer = load_model(name, "float32", args.device)
        windows = calibration_windows("wiki", tokenizer, args.search_seq_len, args.search_tokens)
        start = time.perf_counter()
        record = search(model, windows, parse_stages(stages_text), out_dir=work / "search",
                        settings=EvalSettings(batch_size=4))
        log.info("%s: search done in %.0f s, removed %s", name, time.perf_counter() - start, record["removed"])
        extract(model, tokenizer, Plan.load(plan_file), extracted)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    plan = Plan.load(plan_file)
    search_log = json.loads((work / "search" / "log.json").read_text())
    return extracted, {"stages": stages_text, "removed": [c.to_dict() for c in plan.removed],
                       "search_calibration": {"source": "wiki", "tokens": args.search_tokens,
                                              "seq_len": args.search_seq_len},
                       "search_seconds": round(sum(s.get("seconds", 0) for s in search_log.get("steps", [])), 1)}


def run_model(name: str, args) -> dict:
    work = args.work / name
    extracted, plan = pruned_model(name, args.stage_map[name], args, work)
    tasks = tuple(parse_task_list(args.tasks)) if args.tasks else ()
    evaluation = Evaluation(tokens=args.eval_tokens, seq_len=args.seq_len, tasks=tasks, limit=args.limit)
    runs = {}
    for method in args.methods.split(","):
        settings = RecoverySettings(method=method, data="wiki", steps=args.steps, batch_size=args.batch_size,
                                    seq_len=args.seq_len, lr=args.lora_lr if method == "lora" else args.full_lr,
                                    seed=0, checkpoint_every=50)
        log.info("%s: recovering with %s", name, method)
        runs[method] = recover(str(extracted), work / method, settings, evaluation, dense=name,
                               device=args.device).record
    first = next(iter(runs.values()))
    extracted_config = json.loads((extracted / "config.json").read_text())
    return {
        "model": name, "plan": plan, "layers_after": extracted_config.get("num_hidden_layers"),
        "params": {"pruned": first["training"]["total_params"]},
        "evaluation": first["evaluation"],
        "metrics": {"dense": first["metrics"]["dense"], "pruned": first["metrics"]["pruned"],
                    **{method: run["metrics"]["recovered"] for method, run in runs.items()}},
        "recovered_share": {method: run["recovered_share"] for method, run in runs.items()},
        "training": {method: {**run["training"], "settings": run["settings"]} for method, run in runs.items()},
        "quick": args.quick, "environment": environment(resolve_device(args.device)),
        "command": " ".join(sys.argv),
    }


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    lines = ["| model | plan | dense bpb | pruned bpb | " + " | ".join(
        f"{m} bpb (share recovered)" for m in results[0]["recovered_share"]) + " |"]
    lines.append("| --- " * (4 + len(results[0]["recovered_share"])) + "|")
    for r in results:
        held = {k: v["held_out"] for k, v in r["metrics"].items()}
        removed = ", ".join(f"{c['kind']} {c['layer']}" for c in r["plan"]["removed"])
        cells = [f"{fmt(held[m]['bpb'])} ({fmt(100 * s['bpb'], 1) if s['bpb'] is not None else '-'} %)"
                 for m, s in r["recovered_share"].items()]
        lines.append(f"| {r['model']} | {removed} | {fmt(held['dense']['bpb'])} | {fmt(held['pruned']['bpb'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    args = parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        result = run_model(name.strip(), args)
        path = args.results / f"recovery_{result['model']}.json"
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        log.info("wrote %s", path)
        results.append(result)
    print(table(results))


if __name__ == "__main__":
    main()
