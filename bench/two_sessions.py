"""Benchmark: does one session's long job slow another session's toggle? Two dashboard sessions in one process
(sharing the loaded model, as a streamlit server's sessions do), on a zoo model or folder.

    python bench/two_sessions.py --model demo-mamba2 [--toggles 10] [--out bench/results/two_sessions_cpu_demo-mamba2.json]

Session B toggles components on the real Playground page (streamlit's AppTest, the default evaluation setting), each
toggle giving a plan not measured before; each page run is timed from the changed widget to the finished script
with the new perplexity. First with nothing else running (idle), then while session A scores the sensitivity of
every block and SSM on the Sensitivity page (a background job on its own copy of the model, which pauses at its
next layer while a toggle computes). The job's progress before and after is recorded, to show it kept running.
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

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app.state import ModelChoice  # noqa: E402
from toggle_latency import summary, toggle_sequence  # noqa: E402

APP = str(ROOT / "streamlit_app.py")


def playground(model: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=600)
    app.session_state["model_choice"] = ModelChoice(model)
    app.session_state["live-refine"] = False
    app.switch_page("pages/playground.py").run()
    if app.exception:
        raise SystemExit(f"the Playground failed: {app.exception}")
    return app


def toggles(app: AppTest, sequence: list[tuple[str, int]], picked: dict[str, list[int]]) -> list[float]:
    seconds = []
    for kind, layer in sequence:
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
    parser.add_argument("--toggles", type=int, default=10)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    os.environ.setdefault("SHEDDER_CACHE", tempfile.mkdtemp(prefix="two-sessions-bench-"))

    b = playground(args.model)
    kinds = {p.label.split(":")[0]: [int(re.search(r"\d+", str(o)).group()) for o in p.options]  # labels may be shaded
             for p in b.pills}
    sequence = toggle_sequence(kinds, 2 * args.toggles)
    picked: dict[str, list[int]] = {kind: [] for kind in kinds}
    print("idle: session B toggles alone")
    idle = toggles(b, sequence[:args.toggles], picked)

    print("busy: session A scores sensitivity in the background meanwhile")
    a = AppTest.from_file(APP, default_timeout=600)
    a.session_state["model_choice"] = ModelChoice(args.model)
    a.switch_page("pages/sensitivity.py").run()
    a.button(key="sensitivity-compute").click().run()
    job = a.session_state["jobs"]["sensitivity"]
    time.sleep(2.0)  # let it copy the model and start scoring
    before = (job.phase, job.done, job.total)
    busy = toggles(b, sequence[args.toggles:], picked)
    after = (job.phase, job.done, job.total, job.state)
    job.cancel()
    job.wait(60)
    if after[3] != "running":
        print(f"warning: session A's job had ended ({after[3]}) before the last toggle")
    result = {
        "model": args.model, "evaluation": "wiki-test, 2048 tokens, windows of 256 (the default setting)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "idle": summary(idle), "while_other_session_scores": summary(busy),
        "ratio_of_medians": round(statistics.median(busy) / statistics.median(idle), 3),
        "other_session_job": {"before": {"phase": before[0], "done": before[1], "total": before[2]},
                              "after": {"phase": after[0], "done": after[1], "total": after[2], "state": after[3]},
                              "paused_for_toggles_s": round(job.paused_s, 3)},
        "idle_s": [round(x, 3) for x in idle], "busy_s": [round(x, 3) for x in busy],
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_s")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
