"""Benchmark: where a Ray worker's extra time per candidate comes from. The same full candidate
evaluations, timed (synchronised) in this process and in Ray actors of several kinds on one GPU:

    local            this process, all CPU threads
    local-1-thread   this process, torch.set_num_threads(1) as a worker has
    actor            a plain Ray actor (one thread)
    actor-groups     an actor with a second concurrency group, like shedder's worker (tasks run off the main thread)
    actor-groups-si  the same with Python's GIL switch interval at 50 ms instead of 5 ms
    replica          shedder's worker itself (ray_executor.Replica), through its ``complete`` task

    python bench/ray_overhead.py --random-mamba2 48x2048 --candidates 8
Results go to bench/results/ray_overhead_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402

from ray_scaling import save_checkpoint  # noqa: E402
from search_cost import sync  # noqa: E402
from shedder.measurement.calibration import cut_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings, Evaluator  # noqa: E402
from shedder.measurement.perplexity import model_device  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.masks import catalogue_of  # noqa: E402
from shedder.searching.executor import RayOptions  # noqa: E402
from shedder.searching.ray_executor import RayExecutor  # noqa: E402
from shedder.searching.search import candidates_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Timer:
    """A model and an Evaluator over all windows; times full evaluations of candidates."""

    def __init__(self, folder: str, dtype: str, device: str, windows, batch_size: int, threads: int | None = None,
                 switch_interval: float | None = None):
        if threads:
            torch.set_num_threads(threads)
        if switch_interval:
            sys.setswitchinterval(switch_interval)
        self.model, _ = load_model(folder, dtype, device)
        self.device = model_device(self.model)
        self.evaluator = Evaluator(self.model, windows, EvalSettings(batch_size=batch_size))
        self.evaluator.set_base([])

    def time(self, candidates) -> list[float]:
        seconds = []
        for candidate in candidates:
            sync(self.device)
            start = time.perf_counter()
            self.evaluator.evaluate(candidate)
            sync(self.device)
            seconds.append(time.perf_counter() - start)
        return seconds


class GroupedTimer(Timer):
    @ray.method(concurrency_group="control")
    def poke(self) -> int:
        return 0


def summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 4), "min": round(min(seconds), 4),
            "max": round(max(seconds), 4), "n": len(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-mamba2", default="48x2048", help="LAYERSxWIDTH of the random-weight Mamba-2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8, help="candidates timed per variant (after one warm-up)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (timings mean nothing)")
    args = parser.parse_args()
    gpus = 1 if args.device == "cuda" else 0
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    ray.init(address="local", num_gpus=gpus, num_cpus=2 if not gpus else None, include_dashboard=False)
    gpu = torch.cuda.get_device_name(0).replace("NVIDIA ", "").replace(" ", "-") if gpus else "cpu"
    result = {"gpu": gpu, "model": f"random mamba2 {args.random_mamba2}", "dtype": args.dtype, "windows": args.windows,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "seconds_per_candidate": {}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ray_overhead_{gpu}_mamba2-{args.random_mamba2}.json"
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(Path(tmp) / "model")
        save_checkpoint(args.random_mamba2, dtype, Path(folder))
        driver, _ = load_model(folder, args.dtype, "cpu")
        stream = torch.randint(0, driver.config.vocab_size, (args.windows * args.seq_len,),
                               generator=torch.Generator().manual_seed(0))
        windows = cut_windows(stream, args.seq_len, source="random tokens")
        candidates = candidates_for(catalogue_of(driver), [], ("block", "ssm"))[: args.candidates + 1]
        setup = (folder, args.dtype, args.device, windows, args.batch_size)
        threads_before = torch.get_num_threads()

        def record(name: str, seconds: list[float]) -> None:
            result["seconds_per_candidate"][name] = {**summary(seconds[1:]), "each": [round(x, 4) for x in seconds]}
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"{name:16s} {result['seconds_per_candidate'][name]}", flush=True)

        for name, threads in (("local", None), ("local-1-thread", 1)):
            timer = Timer(*setup, threads=threads)
            record(name, timer.time(candidates))
            del timer
            torch.cuda.empty_cache()
        torch.set_num_threads(threads_before)
        # one actor at a time, each made only when the one before has gone: they all want the one GPU
        actors = {
            "actor": lambda: ray.remote(num_gpus=gpus)(Timer).remote(*setup, threads=1),
            "actor-groups": lambda: ray.remote(num_gpus=gpus, concurrency_groups={"control": 1})(GroupedTimer).remote(
                *setup, threads=1),
            "actor-groups-si": lambda: ray.remote(num_gpus=gpus, concurrency_groups={"control": 1})(GroupedTimer).remote(
                *setup, threads=1, switch_interval=0.05),
        }
        for name, make in actors.items():
            actor = make()
            record(name, ray.get(actor.time.remote(candidates)))
            ray.kill(actor)
            while ray.available_resources().get("GPU", 0) < gpus:
                time.sleep(0.5)  # its GPU is free again before the next one loads
        executor = RayExecutor(RayOptions(model=folder, device=args.device, workers=1), driver, windows,
                               EvalSettings(batch_size=args.batch_size))
        try:
            executor.start_workers()
            worker = executor.workers[0]
            record("replica", [ray.get(worker.complete.remote([], c)).seconds for c in candidates])
        finally:
            executor.close()
    print(f"-> {path}")


if __name__ == "__main__":
    main()
