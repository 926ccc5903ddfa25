"""The Model page's dense perplexity is a background job of the session (app/jobs.py): a demo model's shows in the
first page run, a long one is followed with its windows and a Cancel button, a cancelled one offers to compute it
again, a failed one says why, and the result lands in the perplexity cache every page reads."""
import threading

import pytest
from streamlit.testing.v1 import AppTest

import app.state as state
import shedder.measurement.perplexity as library
from app.state import DENSE_JOB, ModelChoice
from shedder.errors import ShedderError
from shedder.measurement.calibration import calibration_windows
from shedder.measurement.perplexity import PerplexitySetting, perplexity
from test_app import APP, run_until

DEMO = ModelChoice("demo-mamba2")


def model_page(choice: ModelChoice = DEMO) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = choice
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    return at


def shown(at: AppTest) -> str | None:
    return next((m.value for m in at.metric if m.label == "perplexity"), None)


def compute_again(at: AppTest):
    return next((b for b in at.button if b.label == "Compute again"), None)


@pytest.fixture(autouse=True)
def nothing_cached():
    state.masked_perplexity.clear()  # the cache is the process's: another test may have measured the demo model
    yield
    state.masked_perplexity.clear()


def test_the_demo_models_dense_perplexity_shows_in_the_first_run_measured_by_a_job():
    at = model_page()
    job = at.session_state["jobs"][DENSE_JOB]
    setting = PerplexitySetting()  # the default evaluation setting
    assert job.state == "done" and job.key == (DEMO, setting)
    model, tokenizer = state.loaded(DEMO)
    windows = calibration_windows(setting.text, tokenizer, setting.seq_len, setting.tokens)
    assert shown(at) == f"{perplexity(model, windows, batch_size=4).ppl:.3f}"
    assert not at.get("progress") and compute_again(at) is None


def test_a_second_visit_and_the_playground_reuse_the_cached_result(monkeypatch):
    first = model_page()
    value = shown(first)
    assert value is not None

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(state, "perplexity", no_measuring)
    job = first.session_state["jobs"][DENSE_JOB]
    first.switch_page("pages/playground.py").run()
    first.switch_page("pages/model.py").run()
    assert not first.exception, first.exception
    assert shown(first) == value and first.session_state["jobs"][DENSE_JOB] is job  # no second job

    other = model_page()  # another session: no job of its own
    assert shown(other) == value and DENSE_JOB not in other.session_state["jobs"]
    other.session_state["live-refine"] = False
    other.switch_page("pages/playground.py").run()
    assert not other.exception, other.exception
    assert next(m.value for m in other.metric if m.label == "perplexity") == value


def test_a_cancelled_measurement_shows_no_perplexity_and_offers_to_compute_it_again(monkeypatch):
    release, real, batches = threading.Event(), library.window_nll, []

    def slow_window_nll(*args):
        release.wait(60)
        batches.append(1)
        return real(*args)

    monkeypatch.setattr(library, "window_nll", slow_window_nll)
    monkeypatch.setattr(state, "INLINE_LOAD_S", 0.2)
    state.loaded(DEMO)  # loaded before: the page waits only for the perplexity
    at = model_page()
    job = at.session_state["jobs"][DENSE_JOB]
    assert job.running and shown(at) is None
    run_until(at, lambda: any(p.proto.text.startswith("Dense perplexity: measuring: 0 of 8 windows")
                              for p in at.get("progress")), timeout=60)

    at.button(key=f"cancel-{DENSE_JOB}").click().run()
    release.set()
    assert job.wait(10) and job.state == "cancelled"
    assert len(batches) == 1  # stopped after the batch it was in (8 windows: 2 batches of 4)
    at.run()
    assert not at.exception, at.exception
    assert shown(at) is None and not at.get("progress")
    assert any("Cancelled" in box.value for box in at.info)

    compute_again(at).click().run()
    assert not at.exception, at.exception
    again = at.session_state["jobs"][DENSE_JOB]
    assert again is not job
    assert again.wait(60) and again.state == "done"
    at.run()
    assert shown(at) == f"{again.result:.3f}"
    assert compute_again(at) is None


def test_a_failed_measurement_says_why_without_a_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise ShedderError("The weights produce NaN.")

    monkeypatch.setattr(state, "perplexity", broken)
    at = model_page()
    assert shown(at) is None
    assert [e.value for e in at.error] == ["Measuring the dense perplexity failed: The weights produce NaN."]
    assert compute_again(at) is not None
