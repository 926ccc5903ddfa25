"""Dense and pruned accuracy of the zoo models on the full offline zero-shot suite (the README table).

For each zoo model: a Mamba-Shedder search finds a small plan on the offline Wikipedia training text,
then ``shedder eval`` measures the dense and the pruned model on all seven tasks (every document;
``--limit`` only for a quick check) and wiki-test perplexity. Every step is the project's own CLI,
so each row can be reproduced by hand with the commands this prints.

    python bench/zoo_accuracy.py --device cuda --batch-size 64        # writes bench/results/accuracy_*.json
    python bench/zoo_accuracy.py --table                              # only print the table from those files
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# One plan per model: what the paper searches for on that kind of architecture, a few steps deep.
RECIPES = {
    "demo-mamba2": ["--targets", "ssm", "--steps", "3"],
    "demo-hybrid": ["--stages", "block,attn,mlp:2;ssm:2"],
    "smollm2-135m": ["--targets", "block,attn,mlp", "--steps", "3"],
    "smollm2-hybrid": ["--stages", "block,attn,mlp:2;ssm:2"],
}
TASK_ORDER = ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa"]


# The evaluation is bound by lm-eval's per-request Python work, not by the device, so each model's
# tasks run in two processes side by side (hellaswag alone is as large as the other six together).
TASK_SHARDS = [["hellaswag"], [t for t in TASK_ORDER if t != "hellaswag"]]


def shedder(*args: str, wait: bool = True) -> subprocess.Popen:
    print("$ python -m shedder " + " ".join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "shedder", *args], cwd=ROOT, env=env)
    if wait and process.wait() != 0:
        raise SystemExit(f"python -m shedder {args[0]} failed ({process.returncode})")
    return process


def start_model(name: str, args: argparse.Namespace) -> list[tuple[subprocess.Popen, Path]]:
    """Search a plan for ``name``, then start its evaluation shards; returns them running."""
    common = ["--model", name, "--dtype", args.dtype, "--device", args.device]
    plan_file = args.plans.get(name)
    if plan_file is None:
        plan_dir = Path(args.work) / f"search-{name}"
        shedder("search", *common, *RECIPES[name], "--calib", "wiki", "--tokens", str(args.search_tokens),
                "--seq-len", "512", "--batch-size", str(args.search_batch_size), "--out", str(plan_dir))
        plan_file = plan_dir / "plan.json"
    limit = ["--limit", str(args.limit)] if args.limit else []
    running = []
    for i, tasks in enumerate(TASK_SHARDS):
        out = Path(args.work) / f"accuracy_{name}.shard{i}.json"
        calib = [] if i == 0 else ["--calib", "none"]  # wiki-test perplexity once per model
        running.append((shedder("eval", *common, "--plan", str(plan_file), "--tasks", ",".join(tasks),
                                *limit, *calib, "--batch-size", str(args.batch_size), "--out", str(out), wait=False), out))
    return running


def merge_shards(paths: list[Path]) -> dict:
    """One result as ``shedder eval`` would write it for all tasks at once."""
    shards = [json.loads(p.read_text()) for p in paths]
    merged = dict(shards[0], tasks=[t for s in shards for t in s["tasks"]])
    for which in ("dense", "pruned"):
        tasks = {name: task for s in shards for name, task in s[which]["accuracy"]["tasks"].items()}
        accuracy = dict(shards[0][which]["accuracy"], tasks=tasks, average_tasks=list(tasks),
                        seconds=sum(s[which]["accuracy"]["seconds"] for s in shards),
                        average=statistics.fmean(t["paper_value"] for t in tasks.values()),
                        lambada_perplexity=tasks["lambada_openai"]["metrics"]["perplexity"])
        merged[which] = dict(shards[0][which], accuracy=accuracy)
    dense, pruned = merged["dense"]["accuracy"]["tasks"], merged["pruned"]["accuracy"]["tasks"]
    merged["relative"] = {
        "tasks": {n: pruned[n]["paper_value"] / dense[n]["paper_value"] if dense[n]["paper_value"] else None
                  for n in dense},
        "average": merged["pruned"]["accuracy"]["average"] / merged["dense"]["accuracy"]["average"],
    }
    return merged


def cell(task: dict) -> str:
    metric = task["paper_metric"]
    return f"{task['metrics'][metric]:.3f} ± {task['stderr'][metric]:.3f}"


def removed_text(removed: list[dict]) -> str:
    return ", ".join(f"{r['kind']} {r['layer']}" + (f"/{r['index']}" if r.get("index") is not None else "")
                     for r in removed)


def table(paths: list[Path]) -> str:
    header = ["model", "plan", "wiki-test ppl", *TASK_ORDER, "LAMBADA ppl", "average", "relative"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for path in paths:
        data = json.loads(path.read_text())
        for which in ("dense", "pruned"):
            run = data[which]
            acc = run["accuracy"]
            plan = "dense" if which == "dense" else removed_text(data["removed"])
            relative = data["relative"]["average"] if which == "pruned" else None
            row = [data["model"], plan, f"{run['perplexity']['ppl']:.2f}",
                   *(cell(acc["tasks"][t]) for t in TASK_ORDER),
                   f"{acc['lambada_perplexity']:.1f}", f"{acc['average']:.4f}",
                   "" if relative is None else f"{relative:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(RECIPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--search-batch-size", type=int, default=64)
    parser.add_argument("--search-tokens", type=int, default=16384)
    parser.add_argument("--limit", type=int, default=0, help="documents per task (0: all of them)")
    parser.add_argument("--work", default=str(ROOT / "cache" / "zoo_accuracy"), help="where the searches go")
    parser.add_argument("--plan", action="append", default=[], metavar="MODEL=PLAN",
                        help="evaluate this plan for MODEL instead of searching one (e.g. a recovery study's)")
    parser.add_argument("--table", action="store_true", help="print the table from existing results only")
    args = parser.parse_args()
    names = args.models.split(",")
    args.plans = dict(item.split("=", 1) for item in args.plan)
    if not args.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        running = {name: start_model(name, args) for name in names}
        for name, shards in running.items():
            for process, _ in shards:
                if process.wait() != 0:
                    raise SystemExit(f"evaluating {name} failed ({process.returncode})")
            merged = merge_shards([out for _, out in shards])
            (RESULTS / f"accuracy_{name}.json").write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    print(table([RESULTS / f"accuracy_{n}.json" for n in names if (RESULTS / f"accuracy_{n}.json").exists()]))


if __name__ == "__main__":
    main()
