"""Benchmark: does a user who toggles without a break starve other users' background jobs, and does a job slow the
toggles? One process, one shared model (as a streamlit server's sessions share it).

    python bench/job_share.py --model demo-mamba2 [--seconds 20] [--out bench/results/job_share_cpu_demo-mamba2.json]

The job evaluates calibration windows on its own copy of the model under ``shedder.jobs.guard`` (as the Sensitivity
and Search pages' jobs do); a toggle is one perplexity of a plan not measured before on the shared model inside
``shedder.jobs.foreground`` (as a Playground toggle computes it). Conditions, each ``--seconds`` long:

- job alone, toggles alone (the references);
- toggles back to back while the job runs, with jobs waiting for foreground work as long as it lasts (the earlier
  rule: ``JOB_SHARE = 0``, no limit) and with the fair share (``shedder.jobs.JOB_SHARE``, ``MAX_WAIT``);
- toggles with a pause between them (a person looking at the result) while the job runs, fair share.

Reported: the job's windows per second and the toggle's seconds (median and spread).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/two_sessions.py: threads that sleep, not spin

import torch  # noqa: E402

from shedder import jobs  # noqa: E402
from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.perplexity import perplexity  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.masks import catalogue_of  # noqa: E402


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 3), "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3)}


def run(model, windows, components, seconds: float, job_on: bool, toggles_on: bool, pause: float = 0.0) -> dict:
    """One condition: the job's windows per second and the toggles' seconds."""
    done: list[int] = []
    job = None
    if job_on:
        copy = jobs.private_copy(model)

        def work(job):
            with jobs.guard(copy, job), torch.no_grad():
                while True:
                    for start in range(0, len(windows), 4):
                        copy(input_ids=windows.ids[start:start + 4])
                        done.append(min(4, len(windows) - start))

        job = jobs.Job("bench", work)
        time.sleep(1.0)  # under way
    toggles: list[float] = []
    counted_from, before = time.perf_counter(), sum(done)
    end = counted_from + seconds
    n = 0
    while time.perf_counter() < end:
        if not toggles_on:
            time.sleep(0.1)
            continue
        time.sleep(pause)
        component = components[n % len(components)]
        n += 1
        start = time.perf_counter()
        with jobs.foreground():
            perplexity(model, windows, [component], batch_size=4)
        toggles.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - counted_from
    result = {"toggle_s": summary(toggles), "toggles": len(toggles)}
    if job is not None:
        result["job_windows_per_s"] = round((sum(done) - before) / elapsed, 2)
        result["job_paused_s"] = round(job.paused_s, 2)
        job.cancel()
        job.wait(60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between toggles in the last condition")
    parser.add_argument("--out")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    windows = calibration_windows("wiki-test", tokenizer, 256, 2048)  # the Playground's default setting
    components = [c for c in catalogue_of(model).components(["block", "ssm"])]
    fair = (jobs.JOB_SHARE, jobs.MAX_WAIT)
    results = {}
    results["job alone"] = run(model, windows, components, args.seconds, True, False)
    results["toggles alone"] = run(model, windows, components, args.seconds, False, True)
    jobs.JOB_SHARE, jobs.MAX_WAIT = 0.0, None
    results["back-to-back toggles, job waits as long as they last"] = run(model, windows, components, args.seconds,
                                                                          True, True)
    jobs.JOB_SHARE, jobs.MAX_WAIT = fair
    results["back-to-back toggles, fair share"] = run(model, windows, components, args.seconds, True, True)
    results[f"toggles {args.pause:g} s apart, fair share"] = run(model, windows, components, args.seconds, True, True,
                                                                args.pause)
    record = {"model": args.model, "seconds_per_condition": args.seconds, "job_share": fair[0], "max_wait_s": fair[1],
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                         f"{torch.__version__}, {torch.get_num_threads()} threads",
              "load_average_1min": round(os.getloadavg()[0], 2), "results": results}
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
