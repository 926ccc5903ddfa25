"""The Search and Recovery pages run their long work as background jobs of the session (app/jobs.py, shedder/jobs.py),
driven through AppTest on tiny saved models: the page returns at once, the progress label tells the step and what
is counted in it with the time left, Cancel stops the job within seconds and keeps what it finished (a search's
steps, a recovery's last checkpoint), the same settings resume it, a page switch finds the job still running (and
starts no second one), and another session's toggle never waits for it."""
import json
import re
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.state import ModelChoice
from shedder import jobs as background
from shedder.measurement.calibration import calibration_windows
from shedder.measurement.perplexity import perplexity
from shedder.model.loading import load_model
from shedder.recovery.recover import CHECKPOINT, LOG_FILE
from shedder.removal.catalogue import Component
from test_app import APP, bamba_dir, finish_job, run_until  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba folder)
from test_app_pages import open_page
from tiny_models import save_tiny

STEPS = 8  # steps of the search below: a few seconds each on a CPU, so that a cancel lands in the middle


def widget(at: AppTest, kind: str, label: str):
    return next(w for w in getattr(at, kind) if w.label == label)


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def start_search(at: AppTest, steps: int = STEPS):
    """Set a one-stage search of SSM heads (many steps, quick ones) on 4,096 tokens and press Run search."""
    widget(at, "multiselect", "Candidates").set_value(["ssm_heads"]).run()  # then Steps has its range
    widget(at, "number_input", "Steps").set_value(steps)
    widget(at, "select_slider", "Tokens").set_value(4096)  # steps long enough (on a fast idle CPU too) for a time left in all
    widget(at, "select_slider", "Window").set_value(128)
    at.run()
    started = time.perf_counter()
    widget(at, "button", "Run search").click().run()
    assert not at.exception, at.exception
    assert time.perf_counter() - started < 30, "the page must not wait for the search"
    job = at.session_state["jobs"]["search"]
    assert job.running
    return job


def cancel_on_page(at: AppTest, name: str, job) -> None:
    """Press the job's Cancel button: the job must stop within seconds, cancelled; then the page shows how it ended."""
    at.button(key=f"cancel-{name}").click().run()
    asked = time.perf_counter()
    assert job.wait(10) and job.state == "cancelled"
    assert time.perf_counter() - asked < 10
    at.run()
    assert not at.exception, at.exception


def steps_done(job) -> int:
    return (job.partial or {}).get("steps_done", 0)


def test_a_search_runs_in_the_background_shows_its_step_and_a_cancel_keeps_the_finished_steps(bamba_dir):
    at = open_page(bamba_dir, "pages/search.py")
    job = start_search(at)
    assert widget(at, "button", "Run search").disabled  # no second search while this one runs

    seen = []  # every label the job showed, to check against the log afterwards
    deadline = time.monotonic() + 240
    while steps_done(job) < 2:
        assert job.running and time.monotonic() < deadline, job.describe()
        seen.append(job.describe())
        time.sleep(0.05)
    before = steps_done(job)
    at.run()
    assert not at.exception, at.exception
    (label,) = [t for t in progress_texts(at) if t.startswith("Search of")]
    step = int(re.search(r"step (\d+) of 8", label).group(1))
    assert before + 1 <= step <= steps_done(job) + 1, label  # the step it is at now
    assert re.search(r"step \d+ of 8: (screening \d+ candidates on their first batch|\d+ of \d+ candidates)", label)
    assert any(" in all)" in text for text in seen), "after a step, the time left in all is told"

    cancel_on_page(at, "search", job)
    run_dir = Path(job.partial["out_dir"])
    log = json.loads((run_dir / "log.json").read_text())
    kept = len(log["steps"])
    assert 2 <= kept < STEPS and steps_done(job) == kept
    assert any(f"was cancelled after {kept} of {STEPS} steps" in i.value for i in at.info)
    # the finished steps are shown as results, and each label counted the step's real candidates
    assert at.slider[0].max == kept and {m.label: m.value for m in at.metric}["components removed"] == str(kept)
    for text in seen:
        counted = re.search(r"step (\d+) of 8: \d+ of (\d+) candidates", text)
        if counted and int(counted.group(1)) <= kept:
            assert int(counted.group(2)) == len(log["steps"][int(counted.group(1)) - 1]["candidates"]), text

    resume = widget(at, "button", f"Resume ({kept} of {STEPS} steps done)")
    assert not resume.disabled
    resume.click().run()
    finish_job(at, "search")
    assert at.session_state["jobs"]["search"].state == "done"
    after = json.loads((run_dir / "log.json").read_text())["steps"]
    assert len(after) == STEPS and after[:kept] == log["steps"]  # resumed after the kept steps, not redone
    assert widget(at, "button", "Finished").disabled
    assert not any("cancelled" in i.value for i in at.info)


def test_a_page_switch_finds_the_running_search_and_starts_no_second_one(bamba_dir):
    at = open_page(bamba_dir, "pages/search.py")
    job = start_search(at, steps=12)
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    at.switch_page("pages/search.py").run()  # its settings as left (app.state.remembered)
    assert not at.exception, at.exception
    assert at.session_state["jobs"]["search"] is job and job.running
    assert any(t.startswith("Search of") for t in progress_texts(at))  # the same job's progress, with Cancel
    assert at.button(key="cancel-search")
    assert all(b.disabled for b in at.button if b.label.startswith(("Run search", "Resume")))
    assert sum(j.label.startswith("Search of") for j in background.running_jobs()) == 1
    job.cancel()
    assert job.wait(10)


def test_another_sessions_toggle_never_waits_for_a_running_search(bamba_dir):
    searcher = open_page(bamba_dir, "pages/search.py")
    job = start_search(searcher, steps=12)
    run_until(searcher, lambda: steps_done(job) >= 1 or not job.running)
    assert job.running

    toggler = open_page(bamba_dir, "pages/playground.py")
    toggler.session_state["live-refine"] = False  # only the search competes with the toggle
    next(p for p in toggler.pills if p.label.startswith("block:")).set_value([1]).run()
    assert not toggler.exception, toggler.exception
    assert job.running, "the toggle must not wait for the other session's search to end"
    shown = {m.label: m.value for m in toggler.metric}
    model, tokenizer = load_model(str(bamba_dir))
    windows = calibration_windows("wiki-test", tokenizer, 256, 2048)
    assert float(shown["perplexity"]) == pytest.approx(perplexity(model, windows, [Component("block", 1)]).ppl,
                                                       abs=6e-4)
    assert job.paused_s > 0  # the search gave way while the toggle computed
    job.cancel()
    assert job.wait(10)


# --- Recovery ---------------------------------------------------------------------------------------------------
MODEL_FOLDER = "Model folder (empty: choose one the dashboard extracted)"
RECOVERY_STEPS = 400  # tiny steps (one window of 32 tokens): a cancel lands in the middle


@pytest.fixture
def recovery_page(bamba_dir, tmp_path, monkeypatch):
    """The Recovery page set to fine-tune a tiny Mamba-2 folder on a small text file, checkpointing every 5 steps."""
    root = tmp_path / "data"
    save_tiny("mamba2", root / "pruned")
    (root / "train.txt").write_text("The quick brown fox jumps over the lazy dog. " * 400)
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(root))
    at = open_page(bamba_dir, "pages/recover.py")
    set_recovery(at)
    return at


def set_recovery(at: AppTest) -> None:
    """The test's recovery settings."""
    widget(at, "text_input", MODEL_FOLDER).set_value("pruned").run()
    widget(at, "number_input", "Steps").set_value(RECOVERY_STEPS)
    widget(at, "text_input", "Training text").set_value("train.txt")
    widget(at, "select_slider", "Window (tokens)").set_value(32)
    widget(at, "select_slider", "Held-out tokens").set_value("512")
    widget(at, "selectbox", "Windows per step").set_value(1)
    widget(at, "number_input", "Checkpoint every (steps)").set_value(5)
    at.run()
    assert not at.exception and not at.error, at.error


def trained(job) -> int:
    steps = (job.partial or {}).get("steps") or []
    return steps[-1]["step"] if steps else 0


def test_a_recovery_runs_in_the_background_and_a_cancel_keeps_its_last_checkpoint(recovery_page):
    at = recovery_page
    started = time.perf_counter()
    widget(at, "button", "Start recovery").click().run()
    assert not at.exception, at.exception
    assert time.perf_counter() - started < 30, "the page must not wait for the recovery"
    job = at.session_state["jobs"]["recovery"]
    assert job.running and "Start recovery" not in [b.label for b in at.button]

    at.switch_page("pages/model.py").run()  # away and back: the same job, still followed
    at.switch_page("pages/recover.py").run()
    assert not at.exception, at.exception
    assert at.session_state["jobs"]["recovery"] is job and at.button(key="cancel-recovery")
    # the settings as left (kept over the switch): their run is the one running, so no button starts another
    assert widget(at, "number_input", "Steps").value == RECOVERY_STEPS and not at.error
    assert not any(b.label.endswith("recovery") for b in at.button)
    assert any(c.value.startswith("Your recovery runs (above)") for c in at.caption)

    deadline = time.monotonic() + 240
    while trained(job) < 7:
        assert job.running and time.monotonic() < deadline, job.describe()
        time.sleep(0.05)
    at.run()
    (label,) = [t for t in progress_texts(at) if t.startswith("Recovery of pruned")]
    done = int(re.search(rf"training: (\d+) of {RECOVERY_STEPS} steps, about .+ left", label).group(1))
    assert 7 <= done <= trained(job)
    assert any(c.value.startswith(f"Step {done} of {RECOVERY_STEPS}: loss ") for c in at.caption)

    cancel_on_page(at, "recovery", job)
    reached = trained(job)
    kept = reached // 5 * 5
    folder = Path(job.partial["folder"])
    assert torch.load(folder / CHECKPOINT, weights_only=True)["step"] == kept  # what the page says is kept
    (info,) = [i.value for i in at.info if "was cancelled" in i.value]
    assert f"cancelled at training step {reached} of {RECOVERY_STEPS}" in info
    assert f"checkpoint of step {kept} is kept" in info

    widget(at, "button", "Continue recovery").click().run()
    again = at.session_state["jobs"]["recovery"]
    assert again is not job
    deadline = time.monotonic() + 240
    while "training" not in again.phase and again.running:
        assert time.monotonic() < deadline, again.describe()
        time.sleep(0.05)
    assert again.phase == f"training (continued from step {kept})", again.describe()
    finish_job(at, "recovery")
    assert again.state == "done", again.error
    assert {m.label for m in at.metric} >= {"bits per byte, recovered", "training"}
    steps = json.loads((folder / LOG_FILE).read_text())["steps"]
    assert [s["step"] for s in steps] == list(range(1, RECOVERY_STEPS + 1))  # one trajectory across the cancel


def test_a_checkpoint_is_kept_only_where_the_training_wrote_one():
    from app.recover_state import kept_checkpoint

    assert kept_checkpoint(7, 400, 5) == 5 and kept_checkpoint(10, 400, 5) == 10 and kept_checkpoint(4, 400, 5) == 0
    assert kept_checkpoint(7, 400, 0) == 0 and kept_checkpoint(400, 400, 0) == 400


def test_a_phase_that_counts_nothing_tells_the_time_left_in_all_from_the_works_estimate():
    import threading

    go_on = threading.Event()

    def work(job):
        job.update(0, 0, "step 2 of 5: screening 9 candidates on their first batch", after=30.0)
        go_on.wait(10)
        job.update(3, 9, "step 2 of 5", "candidates", after=None)
        go_on.clear()
        go_on.wait(10)

    job = background.Job("estimate", work)
    time.sleep(0.2)
    assert job.describe() == "step 2 of 5: screening 9 candidates on their first batch, about 30 s left in all"
    go_on.set()
    time.sleep(0.2)
    assert job.describe().startswith("step 2 of 5: 3 of 9 candidates, about ") and "in all" not in job.describe()
    go_on.set()
    assert job.wait(10)
