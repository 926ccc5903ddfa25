"""Benchmark: the same greedy search on 1, 2 (... N) Ray workers, one GPU each, for a model of realistic
size. Records per-step wall times, per-candidate evaluation times and Ray's own costs (putting the
windows in the object store, starting workers, dispatch gaps, result latency), checks that every run
picks the same plan, prints the speedup and extrapolates (labelled as an estimate) to 8 GPUs and to
several nodes with a simple model fitted to the measured parts:

    step time(N) = serial + max(parallel / N, longest candidate) + per-task overhead * tasks / N

where ``serial`` is the base pass every worker repeats each step (prefix reuse) plus the driver's own
time per step, ``parallel`` the sum of all candidate evaluations (first batches and the rest), both
measured on the 1-worker run. Results go to bench/results/ray_scaling_<tag>.json.

    python bench/ray_scaling.py --workers 1,2 --random-mamba2 32x1536 --dtype bfloat16 \\
        --windows 32 --seq-len 1024 --batch-size 4 --targets block,ssm --steps 3
    python bench/ray_scaling.py --small      # CPU, tiny, end to end in a minute or two

``--concurrent-local`` also runs the first step without Ray on every GPU at once, one process each: with
``--local`` (the same step alone) it tells whether the host's GPUs slow each other down without Ray.
``--pin-cpus`` runs every worker (and those processes) on the CPUs of its GPU's NUMA node.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402

from search_cost import random_mamba2  # noqa: E402
from shedder.measurement.calibration import cut_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings, Evaluator  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402
from shedder.removal.masks import catalogue_of  # noqa: E402
from shedder.searching.executor import RayOptions  # noqa: E402
from shedder.searching.ray_executor import RayExecutor, physical_gpu, pin_near_gpu  # noqa: E402
from shedder.searching.search import Stage, candidates_for, search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NODE_DISPATCH_EXTRA_S = 0.002  # estimate: extra latency of a task sent to another node over a LAN
NODE_BANDWIDTH_BPS = 1.25e9  # estimate: 10 Gbit/s between nodes, for the windows' one transfer


def save_checkpoint(shape: str, dtype: torch.dtype, folder: Path) -> None:
    """A random-weight Mamba-2 saved as a transformers folder (what every worker loads), with a
    one-entry tokenizer: the windows are random token ids, so only loading needs it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    random_mamba2(shape, torch.device("cpu"), dtype).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(folder)


def warm_up(executor: RayExecutor, model, targets: tuple[str, ...]) -> None:
    """Two candidates per worker evaluated in full, so kernels are compiled before anything is timed."""
    catalogue = catalogue_of(model)
    rank = {c: i for i, c in enumerate(catalogue.components())}
    candidates = candidates_for(catalogue, [], targets)[: 2 * executor.options.workers]
    executor.run_step([], candidates, rank, early_stop=False)
    executor.timeline.clear()


def random_windows(vocab_size: int, windows: int, seq_len: int):
    stream = torch.randint(0, vocab_size, (windows * seq_len,), generator=torch.Generator().manual_seed(0))
    return cut_windows(stream, seq_len, source="random tokens")


def local_run(folder: Path, dtype: str, device: str, windows, stages: list[Stage], batch_size: int,
              start_at: float | None = None) -> dict:
    """The same search in this process without Ray (after the same warm-up), for Ray's own cost. ``start_at``: the
    search waits for that time (so that processes on several GPUs search at the same time)."""
    model, _ = load_model(str(folder), dtype, device)
    catalogue = catalogue_of(model)
    evaluator = Evaluator(model, windows, EvalSettings(batch_size=batch_size))
    evaluator.set_base([])
    for candidate in candidates_for(catalogue, [], stages[0].targets)[:2]:
        evaluator.evaluate(candidate)
    del evaluator
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    record = search(model, windows, stages, settings=EvalSettings(batch_size=batch_size))
    seconds = time.perf_counter() - start
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"executor": "local", "device": device, "seconds": round(seconds, 3), "work": record["work"],
            "plan": [str(Component.from_dict(c)) for c in record["removed"]],
            "step_seconds": [round(s["seconds"], 3) for s in record["steps"]]}


def concurrent_local(folder: Path, args, gpus: int) -> list[dict]:
    """The first step of the local search on every GPU at once, one process each, no Ray: whether the GPUs of this
    host slow each other down on their own (compare with the step alone, from --local)."""
    command = [sys.executable, __file__, "--child", str(folder), "--dtype", args.dtype, "--windows", str(args.windows),
               "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--targets", args.targets,
               "--steps", "1", "--start-at", str(time.time() + 45)] + (["--pin-cpus"] if args.pin_cpus else [])
    children = [subprocess.Popen(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}, stdout=subprocess.PIPE,
                                 text=True) for i in range(gpus)]
    return [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]


def child_run(args) -> None:
    """--child: one local search on this process's GPU, its record printed as JSON."""
    pinned = pin_near_gpu() if args.pin_cpus else None
    from transformers import AutoConfig
    windows = random_windows(AutoConfig.from_pretrained(args.child).vocab_size, args.windows, args.seq_len)
    stages = [Stage(tuple(args.targets.split(",")), args.steps)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = local_run(Path(args.child), args.dtype, device, windows, stages, args.batch_size, args.start_at)
    run["physical_gpu"] = physical_gpu(torch.device("cuda", 0)) if device == "cuda" else None
    run["cpus"] = pinned
    print(json.dumps(run), flush=True)


def per_worker(timeline: list[dict], key: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for task in timeline:
        out.setdefault(task[key], []).append(task)
    return out


def summarise(record: dict, timeline: list[dict], startup: dict, workers: int, seconds: float) -> dict:
    """What one run measured: step times, candidate times, and where Ray spent time."""
    tasks = [t for t in timeline if t["method"] in ("screen", "finish")]
    gaps, latencies = [], []
    for runs in per_worker(tasks, "worker").values():
        runs.sort(key=lambda t: t["started"])
        gaps += [b["started"] - a["ended"] for a, b in zip(runs, runs[1:]) if b["submitted"] < a["ended"]]
        latencies += [t["received"] - t["ended"] for t in runs]
    steps = record["steps"]
    base = sum(t["base_seconds"] for t in tasks)
    busy = sum(t["seconds"] + t["base_seconds"] for t in tasks)
    return {
        "workers": workers, "seconds": round(seconds, 3),
        "plan": [str(Component.from_dict(c)) for c in record["removed"]],
        "work": record["work"],
        "step_seconds": [round(s["seconds"], 3) for s in steps],
        "candidates": [len(s["candidates"]) for s in steps],
        "fully_evaluated": [s["evaluated_fully"] for s in steps],
        "tasks": len(tasks),
        "screen_seconds_mean": _mean(t["seconds"] for t in tasks if t["method"] == "screen"),
        "finish_seconds_mean": _mean(t["seconds"] for t in tasks if t["method"] == "finish"),
        "candidate_seconds_max": round(max((t["seconds"] for t in tasks), default=0.0), 4),
        "candidate_seconds_sum": round(sum(t["seconds"] for t in tasks), 3),
        "base_pass_seconds_per_worker_step": round(base / max(1, workers * len(steps)), 4),
        "worker_busy_fraction": round(busy / max(1e-9, workers * sum(s["seconds"] for s in steps)), 3),
        "dispatch_gap_seconds_mean": _mean(gaps), "result_latency_seconds_mean": _mean(latencies),
        "windows_put_seconds": round(startup.get("put_seconds", 0.0), 4),
        "workers_start_seconds": round(startup.get("start_seconds", 0.0), 2),
        "worker_load_seconds": [round(w["load_seconds"], 2) for w in startup.get("workers", [])],
        "worker_devices": [f"{w['node']}:{w['device']}" for w in startup.get("workers", [])],
        "worker_physical_gpus": [w.get("physical", []) for w in startup.get("workers", [])],
        "worker_cpus": [w.get("cpus") for w in startup.get("workers", [])],
    }


def _mean(values) -> float:
    values = list(values)
    return round(statistics.fmean(values), 5) if values else 0.0


def scaling_model(one: dict, windows_bytes: int) -> dict:
    """Fit the step-time model to the 1-worker run and predict N workers on one node and on several."""
    n_steps = len(one["step_seconds"])
    step = sum(one["step_seconds"]) / n_steps
    parallel = one["candidate_seconds_sum"] / n_steps
    overhead = one["dispatch_gap_seconds_mean"] + one["result_latency_seconds_mean"]
    tasks = one["tasks"] / n_steps
    base = one["base_pass_seconds_per_worker_step"]
    serial = base + max(0.0, step - parallel - base - overhead * tasks)  # base pass + driver time, per step
    longest = one["candidate_seconds_max"]

    def predict(n: int, nodes: int = 1) -> float:
        extra = NODE_DISPATCH_EXTRA_S * (nodes - 1) / nodes  # the share of tasks that cross nodes
        transfer = windows_bytes / NODE_BANDWIDTH_BPS / n_steps if nodes > 1 else 0.0
        return serial + max(parallel / n, longest) + (overhead + extra) * tasks / n + transfer

    layouts = {f"{n} workers": (n, 1) for n in (1, 2, 4, 8)}
    layouts.update({f"{nodes} nodes x 8 workers": (8 * nodes, nodes) for nodes in (2, 4, 8)})
    return {
        "estimate": True,
        "per_step": {"serial_seconds": round(serial, 4), "parallel_seconds": round(parallel, 4),
                     "longest_candidate_seconds": round(longest, 4), "tasks": round(tasks, 1),
                     "per_task_overhead_seconds": round(overhead, 5)},
        "serial_fraction": round(serial / step, 4),
        "amdahl_limit_speedup": round(step / (serial + longest), 2),
        "predicted_step_seconds": {name: round(predict(n, nodes), 3) for name, (n, nodes) in layouts.items()},
        "predicted_speedup": {name: round(predict(1) / predict(n, nodes), 2) for name, (n, nodes) in layouts.items()},
        "assumptions": f"node-to-node dispatch +{NODE_DISPATCH_EXTRA_S * 1e3:g} ms per task, "
                       f"{NODE_BANDWIDTH_BPS * 8 / 1e9:g} Gbit/s for the windows; early stopping as on 1 worker",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-mamba2", default="32x1536", help="LAYERSxWIDTH of the random-weight Mamba-2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto", help="workers' device: auto (a GPU each when there are GPUs), cpu")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2 or 1,2,4,8")
    parser.add_argument("--local", action="store_true",
                        help="also run the search in this process without Ray (first GPU), for Ray's own cost")
    parser.add_argument("--gpus-per-worker", type=int, default=1, help="above 1: each replica spread over that many GPUs")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--targets", default="block,ssm")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ray-address", default=None, help="a running cluster (default: a local one)")
    parser.add_argument("--tag", default=None, help="results file suffix (default: from the device)")
    parser.add_argument("--small", action="store_true", help="CPU smoke run: 6x128 model, 8 x 64 tokens, 2 steps")
    parser.add_argument("--pin-cpus", action="store_true", help="workers run on the CPUs of their GPU's NUMA node")
    parser.add_argument("--concurrent-local", action="store_true",
                        help="also run the first step without Ray on every GPU at once (with --local: against one alone)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a model folder: run as one of --concurrent-local's
    parser.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_run(args)
    if args.small:
        args.random_mamba2, args.dtype, args.device = "6x128", "float32", "cpu"
        args.windows, args.seq_len, args.batch_size, args.steps = 8, 64, 2, 2
    counts = [int(n) for n in args.workers.split(",")]
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]

    if args.ray_address:
        ray.init(address=args.ray_address)
    else:
        ray.init(address="local", num_cpus=max(counts) if args.device == "cpu" else None,
                 num_gpus=torch.cuda.device_count(), include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    gpu_name = torch.cuda.get_device_name(0).replace("NVIDIA ", "").replace(" ", "-") if torch.cuda.is_available() else ""
    tag = args.tag or (f"{gpus}x{gpu_name}" if gpus and args.device != "cpu" else "cpu-small" if args.small else "cpu")
    if args.gpus_per_worker > 1:
        tag += f"_{args.gpus_per_worker}-gpus-per-worker"

    stages = [Stage(tuple(args.targets.split(",")), args.steps)]
    result = {"tag": tag, "machine": platform.machine(), "torch": torch.__version__, "ray": ray.__version__,
              "gpus": gpus, "gpu": gpu_name, "model": f"random mamba2 {args.random_mamba2}", "dtype": args.dtype,
              "windows": args.windows, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "targets": args.targets, "steps": args.steps, "gpus_per_worker": args.gpus_per_worker,
              "pin_cpus": args.pin_cpus, "runs": []}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ray_scaling_{tag}.json"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        save_checkpoint(args.random_mamba2, dtype, folder)
        model, _ = load_model(str(folder), args.dtype, "cpu")  # the driver's copy: catalogue, fingerprint
        result["params"] = sum(p.numel() for p in model.parameters())
        windows = random_windows(model.config.vocab_size, args.windows, args.seq_len)
        if args.local:
            device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            result["local"] = local_run(folder, args.dtype, device, windows, stages, args.batch_size)
            print(f"local (no Ray): {result['local']['seconds']:.2f} s, steps {result['local']['step_seconds']}", flush=True)
        if args.concurrent_local and gpus > 1:
            result["concurrent_local"] = concurrent_local(folder, args, gpus)
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print("first step on every GPU at once:", [r["step_seconds"] for r in result["concurrent_local"]], flush=True)
        for n in counts:
            options = RayOptions(model=str(folder), device=args.device, workers=n, address=args.ray_address,
                                 gpus_per_worker=args.gpus_per_worker, pin_cpus=args.pin_cpus)
            executor = RayExecutor(options, model, windows, EvalSettings(batch_size=args.batch_size))
            try:
                executor.start_workers()
                warm_up(executor, model, stages[0].targets)
                start = time.perf_counter()
                record = search(model, windows, stages, executor=executor,
                                settings=EvalSettings(batch_size=args.batch_size))
                seconds = time.perf_counter() - start
                run = summarise(record, executor.timeline, executor.startup, n, seconds)
            finally:
                executor.close()
            result["runs"].append(run)
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")  # kept if a later run fails
            print(f"{n} worker(s): {seconds:.2f} s for {len(record['steps'])} steps, steps {run['step_seconds']}, "
                  f"busy {run['worker_busy_fraction']:.0%}", flush=True)
    runs = result["runs"]
    result["plans_equal"] = all(r["plan"] == runs[0]["plan"] for r in runs + [result.get("local", runs[0])])
    if "local" in result:  # what Ray itself costs: one worker against no Ray, same device
        result["one_worker_over_local"] = round(runs[0]["seconds"] / result["local"]["seconds"], 3)
    result["speedup"] = {str(r["workers"]): round(runs[0]["seconds"] / r["seconds"], 2) for r in runs}
    # more workers evaluate concurrently, so a strong early-stop bound arrives later: a little more work
    result["work_ratio"] = {str(r["workers"]): round(r["work"] / runs[0]["work"], 3) for r in runs}
    if runs[0]["workers"] == 1:
        result["model_of_scaling"] = scaling_model(runs[0], windows.ids.numel() * windows.ids.element_size())
        measured = {f"{r['workers']} workers": r["seconds"] / len(r["step_seconds"]) for r in runs}
        result["model_of_scaling"]["measured_step_seconds"] = {k: round(v, 3) for k, v in measured.items()}
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("plans_equal", "speedup", "work_ratio")}, indent=1))
    if "model_of_scaling" in result:
        print("estimate:", json.dumps(result["model_of_scaling"]["predicted_speedup"]))
    print(f"-> {path}")
    ray.shutdown()
    if not result["plans_equal"]:
        sys.exit("plans differ between worker counts")


if __name__ == "__main__":
    main()
