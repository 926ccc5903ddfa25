"""A model that takes long to load: the page follows the load with its time so far and a Cancel button instead of
hanging in its own run, opens once the model is there, and Cancel goes back at once."""
import threading
from pathlib import Path

from streamlit.testing.v1 import AppTest

import app.state as state
from app.state import ModelChoice
from test_app import APP, bamba_dir, run_until  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba folder)


def slow_loads(monkeypatch, spec: str) -> threading.Event:
    """Loads of ``spec`` wait for the returned event; a page waits a tenth of a second before following a load."""
    release, real = threading.Event(), state.load_model

    def load_model(*args):
        if args[0] == spec:
            release.wait(60)
        return real(*args)

    monkeypatch.setattr(state, "load_model", load_model)
    monkeypatch.setattr(state, "INLINE_LOAD_S", 0.1)
    return release


def following(at) -> bool:
    return any("Loading" in box.value for box in at.info) and any(b.label == "Cancel" for b in at.button)


def test_a_slow_load_is_followed_then_the_page_opens(bamba_dir, monkeypatch):
    release = slow_loads(monkeypatch, str(bamba_dir))
    state.loaded.clear()
    state._ready.clear()
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    assert following(at) and "so far" in at.info[0].value and not at.metric  # the page waits, showing why

    release.set()
    run_until(at, lambda: not following(at) and at.metric, timeout=120)
    assert not at.exception, at.exception
    assert next(m for m in at.metric if m.label == "architecture").value == "bamba"


def test_cancel_goes_back_to_the_model_loaded_before(bamba_dir, monkeypatch, tmp_path):
    other = tmp_path / "other"  # the same weights in another folder: a choice not loaded yet
    other.mkdir()
    for path in Path(bamba_dir).iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/model.py").run()
    assert next(m for m in at.metric if m.label == "architecture").value == "bamba"

    release = slow_loads(monkeypatch, str(other))
    release_later = threading.Timer(30, release.set)  # never left waiting, whatever happens
    release_later.start()
    try:
        next(t for t in at.sidebar.text_input if t.label == "Folder or hub id").set_value(str(other)).run()
        assert following(at), [box.value for box in at.info]
        next(b for b in at.button if b.label == "Cancel").click().run()
        assert not at.exception, at.exception
        assert at.session_state["model_choice"] == ModelChoice(str(bamba_dir))
        assert ModelChoice(str(other)) not in state._loads  # nobody waits for it any more
    finally:
        release.set()
        release_later.cancel()


def test_a_load_on_a_gpu_runs_the_model_once_before_it_is_ready(monkeypatch):
    """The GPU kernels compile on their first use: a load on a GPU runs the model once, so that this lands in the
    load (followed, cancellable) and not in the first measurement. The GPU is stood in for."""
    import torch

    from shedder.jobs import Job

    ran = []
    monkeypatch.setattr(state, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(state, "compile_kernels", ran.append)
    job = Job("Loading demo-mamba2", lambda job: state._load(ModelChoice("demo-mamba2"), job))
    job.wait(300)
    assert job.state == "done" and ran == [job.result[0]]
    assert job.phase.startswith("running the model once")
