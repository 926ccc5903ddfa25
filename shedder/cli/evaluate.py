"""Sub-commands ``zoo`` (which models load offline) and ``eval`` (perplexity plus zero-shot accuracy).

``python -m shedder eval --model M [--plan P] --tasks T1,T2 [--limit N] [--seed S] [--calib SRC]
[--online] [--out FILE.json]`` measures the dense model and, with a plan, the pruned one on the same
documents and text, and prints a table; the JSON file holds everything measured.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

from .arg_types import POSITIVE, SEED, SEQ_LEN

AddModelArgs = Callable[[argparse.ArgumentParser], None]


def register(subparsers, add_model_args: AddModelArgs) -> None:
    zoo = subparsers.add_parser("zoo", help="list the zoo models and whether each loads offline here")
    zoo.add_argument("--json", action="store_true")
    zoo.set_defaults(run=_zoo)

    ev = subparsers.add_parser("eval", help="perplexity and zero-shot accuracy (lm-eval tasks), dense and with a plan")
    add_model_args(ev)
    from . import add_plan_args

    add_plan_args(ev, "plan JSON whose removals to apply (the dense model is measured too)")
    ev.add_argument("--tasks", default="all", help="comma-separated lm-eval task names, or all (default): "
                    "lambada_openai, hellaswag, piqa, arc_easy, arc_challenge, winogrande, openbookqa")
    ev.add_argument("--limit", type=POSITIVE, default=None, help="evaluate N documents per task, drawn with --seed")
    ev.add_argument("--seed", type=SEED, default=0, help="seed of the --limit draw (default 0)")
    ev.add_argument("--online", action="store_true", help="use lm-eval's own tasks and hub datasets (needs network)")
    ev.add_argument("--calib", default="wiki-test", help="perplexity text: wiki-test (default), wiki, a .txt path, "
                    "wikitext2 / c4 / ptb (online), or none to skip")
    ev.add_argument("--tokens", type=POSITIVE, default=None, help="perplexity tokens (default: all of the text)")
    ev.add_argument("--seq-len", type=SEQ_LEN, default=512)
    ev.add_argument("--batch-size", type=POSITIVE, default=8)
    ev.add_argument("--no-dense", action="store_true", help="with --plan, measure only the pruned model")
    ev.add_argument("--out", help="write every number to this JSON file")
    ev.set_defaults(run=_eval)


def _zoo(args: argparse.Namespace) -> int:
    from ..model.zoo import zoo_models

    models = zoo_models()
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=1))
        return 0
    width = max(len(m.name) for m in models)
    print(f"{'name':<{width}}  offline  origin / description")
    for m in models:
        print(f"{m.name:<{width}}  {'yes' if m.available else 'no':<7}  {m.origin}: {m.description}")
        if not m.available:
            print(f"{'':<{width}}           to get it: {m.how_to_get}")
    return 0


def _bar(desc: str, unit: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def _measure(model, tokenizer, args: argparse.Namespace, tasks: list[str], plan, windows, label: str) -> dict:
    from ..measurement.evaluation import evaluate_accuracy
    from ..measurement.perplexity import perplexity, require_finite
    from ..plan import Plan

    if plan is None:
        plan = Plan(channel_group_size=args.channel_group_size)
    out: dict = {"perplexity": None}
    if windows is not None:
        bar, update = _bar(f"{label}: perplexity", "win")
        with bar:
            result = perplexity(model, windows, plan, args.batch_size, progress=update)
            out["perplexity"] = require_finite(result, f"the {label} model").to_dict()
    bar, update = _bar(f"{label}: accuracy", "req")
    with bar:
        report = evaluate_accuracy(model, tokenizer, tasks, plan, args.limit, args.seed,
                                   args.batch_size, args.online, progress=update)
    out["accuracy"] = report
    return out


def _eval(args: argparse.Namespace) -> int:
    from ..errors import ShedderError
    from ..measurement.calibration import calibration_windows
    from ..measurement.tasks import parse_task_list
    from ..model.loading import load_model
    from ..paths import check_output_file
    from . import load_plan_for

    tasks = parse_task_list(args.tasks)
    if args.no_dense and not args.plan:
        raise ShedderError("--no-dense needs --plan (without a plan the dense model is all there is).")
    if args.out:
        check_output_file(args.out)
    model, tokenizer = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    plan = load_plan_for(model, args) if args.plan else None
    windows = None
    if args.calib.lower() != "none":
        windows = calibration_windows(args.calib, tokenizer, args.seq_len, args.tokens)
    runs = {}
    if plan is None or not args.no_dense:
        runs["dense"] = _measure(model, tokenizer, args, tasks, None, windows, "dense")
    if plan is not None:
        runs["pruned"] = _measure(model, tokenizer, args, tasks, plan, windows, "pruned")
    relative = None
    if "dense" in runs and "pruned" in runs:
        relative = runs["pruned"]["accuracy"].relative_to(runs["dense"]["accuracy"])
    print(_table(runs, relative, args, tasks))
    if args.out:
        result = {
            "model": args.model, "plan": args.plan, "removed": [c.to_dict() for c in plan.removed] if plan else [],
            "tasks": tasks, "limit": args.limit, "seed": args.seed, "mode": "online" if args.online else "offline",
            "calib": None if windows is None else {"source": args.calib, "seq_len": args.seq_len, "tokens": args.tokens},
            **{name: {"perplexity": run["perplexity"], "accuracy": run["accuracy"].to_dict()}
               for name, run in runs.items()},
            "relative": relative,
        }
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _cell(value: float | None, stderr: float | None = None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    if stderr is not None:
        text += f" ± {stderr:.{digits}f}" if abs(stderr) < 1e4 else f" ± {stderr:.3g}"
    return text


def _table(runs: dict, relative: dict | None, args: argparse.Namespace, tasks: list[str]) -> str:
    names = list(runs)
    reports = {name: runs[name]["accuracy"] for name in names}
    first = reports[names[0]]
    header = f"{'task':<16}{'metric':<12}" + "".join(f"{n:>24}" for n in names) + (f"{'relative':>10}" if relative else "")
    lines = [header, "-" * len(header)]
    for task in tasks:
        spec_metrics = list(first.tasks[task].metrics)
        for i, metric in enumerate(spec_metrics):
            row = f"{task if i == 0 else '':<16}{metric:<12}"
            for name in names:
                result = reports[name].tasks[task]
                row += f"{_cell(result.metrics[metric], result.stderr[metric]):>24}"
            if relative and metric == first.tasks[task].paper_metric:
                row += f"{_cell(relative['tasks'].get(task), digits=3):>10}"
            lines.append(row + ("  *" if metric == first.tasks[task].paper_metric else ""))
    lines.append("-" * len(header))
    row = f"{'average (*)':<28}" + "".join(f"{_cell(reports[n].average()):>24}" for n in names)
    if relative:
        row += f"{_cell(relative['average'], digits=3):>10}"
    lines.append(row)
    if runs[names[0]]["perplexity"] is not None:
        lines.append(f"{'perplexity':<16}{args.calib[:12]:<12}"
                     + "".join(f"{_cell(runs[n]['perplexity']['ppl']):>24}" for n in names))
    docs = ", ".join(f"{t} {first.tasks[t].n_docs}/{first.tasks[t].n_split}" for t in tasks)
    lines.append(f"documents ({first.mode}{'' if args.limit is None else f', seed {args.seed}'}): {docs}")
    lines.append("* the paper's average takes acc for arc_easy, winogrande and lambada_openai, acc_norm otherwise")
    return "\n".join(lines)
