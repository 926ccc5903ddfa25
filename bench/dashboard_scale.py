"""Benchmark: the dashboard at real scale, on one model, driven through streamlit's AppTest as a user drives it.

    python bench/dashboard_scale.py --random-mamba2 64x2560 --device cuda    # the mamba2-2.7b shape, random weights
    python bench/dashboard_scale.py --model smollm2-hybrid --device cuda
    OMP_WAIT_POLICY=PASSIVE python bench/dashboard_scale.py --model demo-mamba2 --device cpu --accuracy-docs 10
    OMP_WAIT_POLICY=PASSIVE python bench/dashboard_scale.py --random-mamba2 4x128 --device cpu --accuracy-docs 5

Run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1. On a CPU that other processes share, set OMP_WAIT_POLICY=PASSIVE
(as bench/two_sessions.py does; see the README): with OpenMP's spinning threads, the demo model's sensitivity step
took 130 s instead of 17 s (one run each) on a 2-core CPU another process kept busy, and about 9 s either way on the
quiet CPU. Each step is timed in wall seconds, on a fresh results cache (a temporary SHEDDER_CACHE, unless one is
set), so nothing is found measured already:

1. open: from the app's start (its first page, How it works, on the default demo model) through choosing the model,
   dtype and device in the sidebar (a zoo name, or a folder typed in as a local folder, with "Allow remote code" left
   unticked) until the page has drawn the chosen model;
2. model page: the Model page with the dense perplexity (the default evaluation setting; it also says which device
   and dtype the model runs on);
3. sensitivity: the Sensitivity page scoring every block and SSM (Compute, then the page followed until the scoring
   job ended and the page shows the map);
4. toggle: in the Playground, the block of the middle layer removed, until the page shows the new perplexity;
5. latency: the Playground's live measurement after that toggle (no click: its background job times the dense and the
   pruned model in turns), until the plan's latency is final and the page has drawn it;
6. accuracy: the same job's zero-shot accuracy next (the Playground's default tasks, ``--accuracy-docs`` documents
   per task, by default the dashboard's default), from the stored latency until the final accuracy is drawn.

Steps 2 and 4 run in the page's own run: the browser waits for it, and streamlit shows a spinner at most (AppTest
sees a page only once its run ends, and a spinner not at all); nothing on the page can cancel it. Step 1 too, unless
the load outlasts the few seconds a page waits for it: then the page follows the load (the time so far and a Cancel
button) and is rerun every ``--poll`` seconds until the model is there. Steps 3, 5 and 6 run
as background jobs the page follows: the page is rerun every ``--poll`` seconds (all of it, where a browser reruns the
job's panel every second) and each rerun while the job runs records whether it showed a progress bar and a Cancel
button. A job step still running after ``--timeout`` is cancelled with the page's Cancel button (the seconds it took
to stop are recorded). For every step: the peak GPU memory allocated during it (CUDA) and the process's peak resident
memory so far.

``--random-mamba2 LAYERSxWIDTH`` saves a random-weight Mamba-2 (bench/latency_table.py's configuration: vocabulary
50,288, state 128, head dim 64, expand 2, one group, tied embeddings) with GPT-NeoX-20B's tokenizer under
``cache/random-mamba2-LAYERSxWIDTH/`` once (bfloat16 weights, in a child process, so that this process's peak
memory is the dashboard's alone), and opens it as a local folder. The results go to
``bench/results/dashboard_scale_<device>_<model>.json`` (``--out`` to change it); a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
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

from app.measures import ACCURACY_DEFAULTS  # noqa: E402
from app.state import DENSE_JOB, ModelChoice, default_choice  # noqa: E402
from latency_table import _random  # noqa: E402
from shedder.measurement.perplexity import PerplexitySetting  # noqa: E402
from shedder.model.convert import neox_tokenizer  # noqa: E402
from shedder.model.loading import zoo_names  # noqa: E402

APP = str(ROOT / "streamlit_app.py")
RESULTS = ROOT / "bench" / "results"
KINDS = ["block", "ssm"]


def random_mamba2_folder(shape: str) -> Path:
    """The folder of a random-weight Mamba-2 of ``LAYERSxWIDTH``, made (in a child process) if it is not there yet."""
    layers, width = (int(x) for x in shape.lower().split("x"))
    folder = ROOT / "cache" / f"random-mamba2-{layers}x{width}"
    if not (folder / "config.json").is_file():
        child = multiprocessing.get_context("spawn").Process(target=save_random_mamba2, args=(layers, width, folder))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"making {folder} failed")
    return folder


def save_random_mamba2(layers: int, width: int, folder: Path) -> None:
    """A random-weight Mamba-2 saved as a plain transformers folder (no code of its own) with GPT-NeoX-20B's
    tokenizer, the original Mamba models' one."""
    from transformers import Mamba2Config

    tokenizer = neox_tokenizer()
    config = Mamba2Config(num_hidden_layers=layers, hidden_size=width, state_size=128, head_dim=64,
                          num_heads=2 * width // 64, vocab_size=50288, expand=2, n_groups=1, tie_word_embeddings=True,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.eos_token_id)
    partial = folder.with_name(folder.name + ".partial")  # renamed when complete: a broken run leaves no folder
    shutil.rmtree(partial, ignore_errors=True)
    model = _random(config, torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.bfloat16)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)


def checked(at: AppTest) -> AppTest:
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].value}")
    return at


def labelled(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def choose_model(at: AppTest, choice: ModelChoice) -> None:
    """Pick ``choice`` in the sidebar, as a user does: a zoo model, or a folder typed in as a local folder."""
    bar = at.sidebar
    if choice.spec in zoo_names():
        labelled(bar.selectbox, "Zoo model").set_value(choice.spec)
    else:
        checked(labelled(bar.radio, "Source").set_value("local folder or hub id").run())
        bar = at.sidebar
        labelled(bar.text_input, "Folder or hub id").set_value(choice.spec)
    labelled(bar.selectbox, "dtype").set_value(choice.dtype)
    labelled(bar.selectbox, "device").set_value(choice.device)


def memory(row: dict) -> dict:
    """The step's peak GPU memory (then reset for the next step) and the process's peak resident memory so far."""
    if torch.cuda.is_available():
        row["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        torch.cuda.reset_peak_memory_stats()
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return row


def page_run(name: str, at: AppTest, started: float | None = None) -> dict:
    """A step that is the page's own run (already set up on ``at``): timed to the end of the run."""
    started = time.perf_counter() if started is None else started
    checked(at.run())
    return memory({"step": name, "runs_as": "page run", "seconds": round(time.perf_counter() - started, 3),
                   "progress_shown": False, "cancel_shown": False})


def open_model(at: AppTest, started: float, timeout: float, poll: float) -> dict:
    """The "open" step: the page's run, then, when the model takes longer than a page waits for it, the load the
    page follows (its text with the time so far, and a Cancel button), rerun every ``poll`` seconds until the page
    shows the model."""
    row = page_run("open", at, started)
    polls = cancels = 0
    while any(box.value.startswith("Loading ") for box in at.info):
        if time.perf_counter() - started > timeout:
            raise SystemExit("the model did not load within --timeout")
        polls += 1
        cancels += any(b.label == "Cancel" for b in at.button)
        time.sleep(poll)
        checked(at.run())
    if polls:
        row.update(runs_as="page run, then the load it follows", polls_while_running=polls, polls_with_progress=polls,
                   polls_with_cancel=cancels, progress_shown=True, cancel_shown=cancels == polls,
                   seconds=round(time.perf_counter() - started, 3))
    return memory(row)


def follow(name: str, at: AppTest, job_name: str, started: float, done, timeout: float, poll: float
           ) -> tuple[dict, float]:
    """A step done by the session's background job ``job_name``, the page rerun every ``poll`` seconds until
    ``done(job)`` or the job's end (watched closer than that), then once more to show the results; past ``timeout``,
    the page's Cancel is pressed. The step's row, and when its work ended (where the job's next step begins)."""
    job = at.session_state["jobs"][job_name]
    row = {"step": name, "runs_as": "background job", "polls_while_running": 0, "polls_with_progress": 0,
           "polls_with_cancel": 0, "progress_texts": [], "timed_out": False}

    def finished() -> bool:
        return not job.running or done(job)

    def observe() -> None:
        if not job.running:  # (a job ends once: still running after the page's run means it ran all through it)
            return
        row["polls_while_running"] += 1
        texts = [p.proto.text for p in at.get("progress")]
        row["polls_with_progress"] += bool(texts)
        row["polls_with_cancel"] += any(b.label == "Cancel" for b in at.button)
        if texts and texts[0] not in row["progress_texts"][-1:]:
            row["progress_texts"] = [*row["progress_texts"][:1], texts[0]]  # the first and the latest

    observe()
    while not finished():
        if time.perf_counter() - started > timeout:
            row["timed_out"] = True
            asked = time.perf_counter()
            cancel = [b for b in at.button if b.label == "Cancel"]
            if cancel:
                checked(cancel[0].click().run())
            else:
                job.cancel()
            job.wait(120)
            row["cancel_s"] = round(time.perf_counter() - asked, 3)
            break
        rerun = time.perf_counter() + poll
        while time.perf_counter() < rerun and not finished():
            time.sleep(0.02)
        if not finished():
            checked(at.run())
            observe()
    ended = time.perf_counter()
    checked(at.run())
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["job_state"], row["job_error"] = job.state, job.error  # "running": its next step goes on
    polls = row["polls_while_running"]
    row["progress_shown"] = row["polls_with_progress"] == polls if polls else None  # None: it ended before a poll
    row["cancel_shown"] = row["polls_with_cancel"] == polls if polls else None
    return memory(row), ended


def stop_if_late(row: dict) -> None:
    if row.get("timed_out"):
        raise SystemExit(f"the {row['step']} step ran past --timeout and was cancelled; later steps were not run")


def latency_final(job) -> bool:
    """The Playground's live job has stored the plan's final latency (or why it could not measure it); its accuracy
    comes next."""
    partial = job.partial or {}
    return "latency_error" in partial or partial.get("latency", {}).get("final", False)


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def drive(choice: ModelChoice, docs: int, timeout: float, poll: float, steps: list, shown: dict) -> None:
    """The six steps, each appended to ``steps`` as it ends; what the pages showed goes to ``shown``."""
    started = time.perf_counter()
    at = AppTest.from_file(APP, default_timeout=timeout)
    checked(at.run())  # the first page, on the default model
    first_page = round(time.perf_counter() - started, 3)
    if choice != at.session_state["model_choice"]:
        choose_model(at, choice)
    steps.append({**open_model(at, started, timeout, poll), "first_page_default_model_s": first_page})
    if at.session_state["model_choice"] != choice or at.error:
        raise SystemExit(f"the sidebar did not load {choice}: {[e.value for e in at.error]}")

    started = time.perf_counter()
    row = page_run("model page", at.switch_page("pages/model.py"), started)
    job = at.session_state["jobs"].get(DENSE_JOB) if "jobs" in at.session_state else None
    if job is not None and job.running:  # longer than the page waits for it: the page follows the job
        row = follow("model page", at, DENSE_JOB, started, lambda job: False, timeout, poll)[0]
    steps.append(row)
    shown["model page"] = metrics(at)
    stop_if_late(row)

    checked(at.switch_page("pages/sensitivity.py").run())
    labelled(at.multiselect, "Components").set_value(KINDS)
    checked(at.run())
    compute = [b for b in at.button if b.key in ("sensitivity-compute", "sensitivity-recompute")]
    started = time.perf_counter()
    checked(compute[0].click().run())
    steps.append(follow("sensitivity", at, "sensitivity", started, lambda job: False, timeout, poll)[0])
    scored = next((d.value for d in at.dataframe if "change (%)" in d.value.columns), None)
    shown["sensitivity"] = {"metrics": metrics(at), "job": at.session_state["jobs"]["sensitivity"].label,
                            "least important": None if scored is None else scored.head(3).to_dict("records")}
    stop_if_late(steps[-1])

    checked(at.switch_page("pages/playground.py").run())
    labelled(at.number_input, "Documents per task").set_value(docs)
    checked(at.run())
    dense = metrics(at)["perplexity"]
    block = next(p for p in at.pills if p.label.startswith("block:"))
    layer = int(re.search(r"\d+", block.options[len(block.options) // 2]).group())  # labels may be shaded
    started = time.perf_counter()
    block.set_value([layer])
    steps.append(page_run("toggle", at, started))
    shown["toggle"] = {"removed": f"block@{layer}", "dense perplexity": dense, **metrics(at)}
    if shown["toggle"]["components removed"] != "1":
        raise SystemExit(f"the toggle did not remove block {layer}: {shown['toggle']}")

    row, timed = follow("latency", at, "refine", time.perf_counter(), latency_final, timeout, poll)
    steps.append(row)
    shown["latency"] = {k: v for k, v in metrics(at).items() if k in ("prefill + decode", "speedup", "dense")}
    shown["latency"]["errors"] = [e.value for e in at.error]
    stop_if_late(row)
    steps.append(follow("accuracy", at, "refine", timed, lambda job: False, timeout, poll)[0])
    table = next((d.value for d in at.dataframe if "± stderr" in d.value.columns), None)
    shown["accuracy"] = {"average accuracy": metrics(at).get("average accuracy"),
                         "tasks": None if table is None else table.to_dict("records")}
    stop_if_late(steps[-1])


def table(steps: list[dict]) -> str:
    def yes(row: dict, what: str) -> str:
        if row["runs_as"] == "page run":
            return "no (page run)"
        if row[f"{what}_shown"] is None:
            return "(ended before a poll)"
        return (f"{'yes' if row[f'{what}_shown'] else 'no'} "
                f"({row[f'polls_with_{what}']} of {row['polls_while_running']} polls)")

    lines = ["| step | seconds | runs as | progress shown | Cancel shown | GPU peak (GiB) | peak RSS (GiB) |",
             "| --- | ---: | --- | --- | --- | ---: | ---: |"]
    for row in steps:
        late = " (timed out)" if row.get("timed_out") else (
            f" ({row['job_state']})" if row.get("job_state") in ("failed", "cancelled") else "")
        lines.append(f"| {row['step']} | {row['seconds']:.2f}{late} | {row['runs_as']} | {yes(row, 'progress')} | "
                     f"{yes(row, 'cancel')} | {row.get('cuda_peak_gib', '-')} | {row['peak_rss_gib']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", default=default_choice().spec, help="a zoo name or a local model folder")
    which.add_argument("--random-mamba2", metavar="LAYERSxWIDTH", help="e.g. 64x2560, the mamba2-2.7b shape")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--accuracy-docs", type=int, default=ACCURACY_DEFAULTS["limit"],
                        help="documents per task (the Playground's 'Documents per task'; default: its default)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="seconds between page reruns while a job runs (the pages refresh their jobs every second)")
    parser.add_argument("--out", help="JSON file (default: bench/results/dashboard_scale_<device>_<model>.json)")
    args = parser.parse_args()
    os.environ.setdefault("SHEDDER_CACHE", tempfile.mkdtemp(prefix="dashboard-scale-"))

    spec = str(random_mamba2_folder(args.random_mamba2)) if args.random_mamba2 else args.model
    if Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())
    steps, shown = [], {}
    load_before = os.getloadavg()[0]
    try:
        drive(ModelChoice(spec, args.dtype, args.device), args.accuracy_docs, args.timeout, args.poll, steps, shown)
        failure = None
    except (SystemExit, Exception) as exc:  # noqa: BLE001  (the steps done so far are still written)
        failure = f"{type(exc).__name__}: {exc}"
    runs_on = shown.get("model page", {}).get("runs on", f"{args.device}, {args.dtype}")
    device = runs_on.split(",")[0]
    result = {
        "model": str(Path(spec).relative_to(ROOT)) if Path(spec).is_relative_to(ROOT) else spec,
        "dtype_chosen": args.dtype, "device_chosen": args.device, "runs_on": runs_on,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "sensitivity_kinds": KINDS,
        "accuracy": {"tasks": ACCURACY_DEFAULTS["tasks"], "documents_per_task": args.accuracy_docs},
        "evaluation": PerplexitySetting().describe(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "timeout_s": args.timeout, "poll_s": args.poll, "steps": steps, "shown": shown, "failure": failure,
        "cuda_peak_gib": max((s.get("cuda_peak_gib", 0) for s in steps), default=None) if device == "cuda" else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    out = Path(args.out) if args.out else RESULTS / f"dashboard_scale_{device}_{Path(spec).name}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"{Path(spec).name} on {runs_on}; accuracy on {args.accuracy_docs} documents per task of "
          f"{', '.join(ACCURACY_DEFAULTS['tasks'])}\n\n{table(steps)}\n\nwritten to {out}")
    if failure:
        raise SystemExit(failure)


if __name__ == "__main__":
    main()
