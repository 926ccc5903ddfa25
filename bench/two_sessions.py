"""Benchmark: does one session's long job slow another session's toggle? Two dashboard sessions in one process
(sharing the loaded model, as a streamlit server's sessions do), on a zoo model or folder.

    python bench/two_sessions.py --model demo-mamba2 [--toggles 10] [--out bench/results/two_sessions_cpu_demo-mamba2.json]
    python bench/two_sessions.py --random-mamba2 64x2560 --device cuda    # the mamba2-2.7b shape, random weights

Session B toggles components on the real Playground page (streamlit's AppTest, the default evaluation setting), each
toggle giving a plan not measured before; each page run is timed from the changed widget to the finished script
with the new perplexity. Rounds alternate: a toggle with nothing else running (idle), then session A presses Compute
on the Sensitivity page (every block and SSM on 8,192 tokens: a background job on its own copy of the model, which pauses at its
next layer while a toggle computes) and B toggles while it scores; then A's job is cancelled, and the next round
resumes it where it stopped (its components scored so far are recorded after each round, to show it went on).
``--pause`` seconds pass before each toggle, as a person looks at the result (the job works meanwhile), and A's job
works ``--work`` seconds alone after B's busy toggle.
Live refining in session B is switched off, so that only A's job competes with B's toggles.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# OpenMP threads that sleep, not spin, between parallel regions: on a CPU other processes share, spinning threads
# make every toggle several times slower whether or not another session works, which would hide the comparison
# (read by torch's OpenMP when torch is imported, below)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app.state import ModelChoice  # noqa: E402
from shedder.measurement.perplexity import PerplexitySetting  # noqa: E402
from toggle_latency import summary, toggle_sequence  # noqa: E402

APP = str(ROOT / "streamlit_app.py")


def playground(choice: ModelChoice) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=600)
    app.session_state["model_choice"] = choice
    app.session_state["live-refine"] = False
    app.switch_page("pages/playground.py").run()
    return loaded(app, lambda: app.pills)


def loaded(app: AppTest, ready, timeout: float = 900) -> AppTest:
    """Rerun ``app`` until ``ready()``: a model that takes seconds to load does so in the background, its page
    showing progress meanwhile."""
    deadline = time.monotonic() + timeout
    while not app.exception and not ready() and time.monotonic() < deadline:
        time.sleep(1)
        app.run()
    if app.exception or not ready():
        raise SystemExit(f"the page failed: {app.exception or 'the model did not load in time'}")
    return app


def toggles(app: AppTest, sequence: list[tuple[str, int]], picked: dict[str, list[int]], pause: float) -> list[float]:
    seconds = []
    for kind, layer in sequence:
        time.sleep(pause)  # a person looks at the result before the next toggle
        picked[kind] = [x for x in picked[kind] if x != layer] if layer in picked[kind] else picked[kind] + [layer]
        next(p for p in app.pills if p.label.startswith(f"{kind}:")).set_value(list(picked[kind]))
        start = time.perf_counter()
        app.run()
        seconds.append(time.perf_counter() - start)
        if app.exception:
            raise SystemExit(f"the Playground failed: {app.exception}")
        shown = {m.label: m.value for m in app.metric}
        print(f"  toggle {kind}@{layer:<3} -> perplexity {shown['perplexity']:>9} in {seconds[-1]:.3f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--random-mamba2", metavar="LAYERSxWIDTH",
                        help="instead of --model: a random-weight Mamba-2 of that shape (bench/dashboard_scale.py's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--toggles", type=int, default=10)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds before each toggle, as a person takes")
    parser.add_argument("--work", type=float, default=5.0, help="seconds A's job runs alone after B's toggle")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    os.environ.setdefault("SHEDDER_CACHE", tempfile.mkdtemp(prefix="two-sessions-bench-"))

    if args.random_mamba2:
        from dashboard_scale import random_mamba2_folder
        args.model = str(random_mamba2_folder(args.random_mamba2))
    choice = ModelChoice(args.model, device=args.device)
    b = playground(choice)
    kinds = {p.label.split(":")[0]: [int(re.search(r"\d+", str(o)).group()) for o in p.options]  # labels may be shaded
             for p in b.pills}
    sequence = toggle_sequence(kinds, 2 * args.toggles)
    picked: dict[str, list[int]] = {kind: [] for kind in kinds}
    a = AppTest.from_file(APP, default_timeout=600)
    a.session_state["model_choice"] = choice
    # A scores on 8,192 tokens (its own evaluation setting): a map that lasts the whole benchmark
    a.session_state["evaluation_setting"] = PerplexitySetting(tokens=8192)
    a.switch_page("pages/sensitivity.py").run()
    loaded(a, lambda: any(button.key == "sensitivity-compute" for button in a.button))
    load_before = os.getloadavg()
    idle, busy, progress, paused = [], [], [], 0.0
    # idle and busy toggles alternate, so that a change in the machine's other load meets both alike
    for n in range(args.toggles):
        print(f"round {n + 1}: idle, then while session A scores")
        idle += toggles(b, sequence[2 * n:2 * n + 1], picked, args.pause)
        a.run()
        a.button(key="sensitivity-compute").click().run()  # starts, or resumes, A's background job
        job = a.session_state["jobs"]["sensitivity"]
        busy += toggles(b, sequence[2 * n + 1:2 * n + 2], picked, args.pause)
        if not job.running:
            raise SystemExit("session A's job ended before the toggle finished; use a larger --pause or model")
        time.sleep(args.work)  # A's job scores on its own a while before it is cancelled (resumed next round)
        job.cancel()
        job.wait(120)
        paused += job.paused_s
        progress.append(job.partial or 0)  # components in the map so far (published after each one)
    load_after = os.getloadavg()
    result = {
        "model": args.random_mamba2 and f"random mamba2 {args.random_mamba2}" or args.model,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "evaluation": "wiki-test, 2048 tokens, windows of 256 (the default setting)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "pause_before_toggles_s": args.pause, "job_alone_s": args.work, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "idle": summary(idle), "while_other_session_scores": summary(busy),
        "ratio_of_medians": round(statistics.median(busy) / statistics.median(idle), 3),
        "other_session_job": {"components_scored_after_each_round": progress,
                              "paused_for_toggles_s": round(paused, 3)},
        "idle_s": [round(x, 3) for x in idle], "busy_s": [round(x, 3) for x in busy],
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_s")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
