"""Benchmark: time from a toggle in the Playground to its new perplexity, on a zoo model or folder.

    python bench/toggle_latency.py --model demo-mamba2 [--toggles 12] [--out bench/results/toggle_latency_cpu_demo-mamba2.json]

Drives the real Playground page through streamlit's AppTest with the default evaluation setting
(wiki-test, 2,048 tokens in windows of 256; chosen in the sidebar): every toggle adds or removes one component, so each
gives a plan not measured before (no cache hit), and the whole page rerun is timed, from the
changed widget to the finished script with the new perplexity. The library's perplexity call alone
is timed for the same plans. A browser adds the websocket round trip and rendering on top.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app.state import ModelChoice  # noqa: E402
from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.perplexity import PerplexitySetting, perplexity  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402

DEFAULT = PerplexitySetting()  # the evaluation setting every page starts with
TOKENS, SEQ_LEN, CALIB = DEFAULT.tokens, DEFAULT.seq_len, DEFAULT.text


def toggle_sequence(kinds: dict[str, list[int]], count: int) -> list[tuple[str, int]]:
    """(kind, layer) toggles: add components in a seeded random order, then take the first ones away
    again; every toggle gives a set of removals not seen before (never back to the dense model)."""
    adds = random.Random(0).sample([(k, layer) for k, layers in kinds.items() for layer in layers], count // 2 + 1)
    return adds + adds[: count - len(adds)]


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"median_s": round(statistics.median(ordered), 3), "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
            "max_s": round(ordered[-1], 3), "runs": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--toggles", type=int, default=12)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    os.environ.setdefault("SHEDDER_CACHE", tempfile.mkdtemp(prefix="toggle-bench-"))

    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
    app.session_state["model_choice"] = ModelChoice(args.model)
    app.switch_page("pages/playground.py").run()  # loads the model, tokenises the text, dense perplexity
    if app.exception:
        raise SystemExit(f"the Playground failed: {app.exception}")
    pills = {p.label.split(":")[0]: p for p in app.pills}
    kinds = {kind: [int(o) for o in p.options] for kind, p in pills.items()}
    picked: dict[str, list[int]] = {kind: [] for kind in kinds}
    page_seconds, plans = [], []
    for kind, layer in toggle_sequence(kinds, args.toggles):
        picked[kind] = [x for x in picked[kind] if x != layer] if layer in picked[kind] else picked[kind] + [layer]
        widget = next(p for p in app.pills if p.label.startswith(f"{kind}:"))
        widget.set_value(list(picked[kind]))
        start = time.perf_counter()
        app.run()
        page_seconds.append(time.perf_counter() - start)
        if app.exception:
            raise SystemExit(f"the Playground failed: {app.exception}")
        shown = {m.label: m.value for m in app.metric}
        plans.append({"removed": [f"{k}@{x}" for k, xs in picked.items() for x in xs],
                      "perplexity": shown["perplexity"], "page_s": round(page_seconds[-1], 3)})
        print(f"toggle {kind}@{layer:<3} -> {len(plans[-1]['removed'])} removed, perplexity {shown['perplexity']:>9} "
              f"in {page_seconds[-1]:.3f} s")

    model, tokenizer = load_model(args.model)
    windows = calibration_windows(CALIB, tokenizer, SEQ_LEN, TOKENS)
    library_seconds = []
    for plan in plans:
        removed = [Component(text.split("@")[0], int(text.split("@")[1])) for text in plan["removed"]]
        start = time.perf_counter()
        perplexity(model, windows, removed, batch_size=4)
        library_seconds.append(time.perf_counter() - start)
    result = {
        "model": args.model, "calibration": f"{CALIB}, {TOKENS} tokens, windows of {SEQ_LEN}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "toggle_to_perplexity": summary(page_seconds), "library_perplexity_only": summary(library_seconds),
        "toggles": plans,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "toggles"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
