"""The Search page submits a search to a running Ray cluster and follows it: streamlit's AppTest against
a real cluster started by `ray start --head` in a subprocess (2 CPUs, ended by its pid afterwards)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from streamlit.testing.v1 import AppTest  # noqa: E402

from app.state import ModelChoice  # noqa: E402
from shedder.measurement.calibration import calibration_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings  # noqa: E402
from shedder.model.identity import model_fingerprint  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.searching.search import parse_stages, search  # noqa: E402
from test_app import APP  # noqa: E402

HERE, CLUSTER = "here (in the dashboard)", "a Ray cluster"
TOKENS, WINDOW = 1024, 128  # the page's smallest choices: 8 windows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """The address of a Ray cluster of this machine, as a user starts it (`ray start --head`)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths live under it
    script = Path(sys.executable).with_name("ray")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]
    command += ["start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(temp / "start.log", "w")
    # a cluster private to this test: no token to hand around (the page's address is an explicit one)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.time() + 60
        while "Ray runtime started" not in (temp / "start.log").read_text():
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start failed:\n{(temp / 'start.log').read_text()}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()  # the page connected this process
        process.terminate()  # --block: the command stops the cluster's processes when it ends
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def open_search(model_dir, dtype: str = "auto", workspace: str | None = None) -> AppTest:
    """The Search page in a new session (``workspace``: in the page's address, as a reload keeps it)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_choice"] = ModelChoice(str(model_dir), dtype=dtype)
    if workspace:
        at.query_params["workspace"] = workspace
    at.switch_page("pages/search.py").run()
    assert not at.exception, at.exception
    return at


def widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def button(at: AppTest, label: str):
    return widget(at.button, label)


def settle(at: AppTest, address: str, calib: str | None = None) -> AppTest:
    """Two steps of blocks and SSMs on the page's smallest calibration set, to the cluster at ``address``."""
    widget(at.multiselect, "Candidates").set_value(["block", "ssm"])
    widget(at.number_input, "Steps").set_value(2)
    widget(at.select_slider, "Tokens").set_value(TOKENS)
    widget(at.select_slider, "Window").set_value(WINDOW)
    if calib is not None:
        widget(at.selectbox, "Calibration text").set_value("a .txt file")
        at.run()
        widget(at.text_input, "Path of the .txt file").set_value(calib)
    widget(at.radio, "Where the search runs").set_value(CLUSTER)
    at.run()
    widget(at.text_input, "Ray address").set_value(address)
    widget(at.number_input, "Workers").set_value(2)
    widget(at.selectbox, "Worker device").set_value("cpu")
    at.run()
    assert not at.exception, at.exception
    return at


def following(at: AppTest) -> str | None:
    """The page's live line about a search on the cluster, if it shows one."""
    return next((m.value for m in at.markdown if m.value.startswith("**Searching on the Ray cluster**")), None)


def wait_until_ended(at: AppTest, out_dir: Path, limit: float = 90) -> list[str]:
    """Rerun the page (as its 2 s fragment does) until the job has ended; the live lines seen meanwhile."""
    seen, deadline = [], time.time() + limit
    while time.time() < deadline:
        at.run()
        assert not at.exception, at.exception
        if line := following(at):
            seen.append(line)
        state = json.loads((out_dir / "job.json").read_text())["state"] if (out_dir / "job.json").is_file() else None
        if state in ("finished", "stopped", "failed"):
            at.run()  # the fragment saw the end: the whole page shows the result
            return seen
        time.sleep(1)
    pytest.fail(f"The cluster search did not end within {limit} s; seen: {seen}")


def test_a_search_submitted_from_the_page_runs_on_the_cluster_and_is_followed(mamba2_dir, cluster):
    # bfloat16 in the dashboard: the cluster must search those weights, not the float32 it would pick itself
    at = settle(open_search(mamba2_dir, dtype="bfloat16"), cluster)
    button(at, "Submit to cluster").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    (out_dir,) = [Path(p) for p in at.session_state["search_runs"].values()]
    assert following(at) is not None

    # a page opened afresh (a reload of the session, other settings) picks the running search up
    other = open_search(mamba2_dir, dtype="bfloat16", workspace=at.session_state["workspace"])
    assert following(other) is not None
    # no search here on the folder the cluster writes
    widget(at.radio, "Where the search runs").set_value(HERE).run()
    assert button(at, "Run search").disabled
    assert any("running on the Ray cluster" in c.value for c in at.caption)

    seen = wait_until_ended(at, out_dir)
    job = json.loads((out_dir / "job.json").read_text())
    assert job["state"] == "finished", job
    assert job["job"]["workers"] == 2 and job["job"]["device"] == "cpu"
    assert any("steps done" in line for line in seen)
    assert following(at) is None and not at.warning  # (a warning: the cluster searched other weights)
    assert any("ran on the Ray cluster" in c.value and "finished" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["components removed"] == "2"  # the Results section shows it
    assert button(at, "Finished").disabled

    model, tokenizer = load_model(str(mamba2_dir), "bfloat16", "cpu")
    log = json.loads((out_dir / "log.json").read_text())
    assert log["settings"]["fingerprint"] == model_fingerprint(model) == out_dir.parent.name
    windows = calibration_windows("wiki", tokenizer, WINDOW, TOKENS)
    local = search(model, windows, parse_stages("block,ssm:2"), settings=EvalSettings(batch_size=4))
    assert json.loads((out_dir / "plan.json").read_text())["removed"] == local["removed"]
    assert [s["ppl"] for s in log["steps"]] == [s["ppl"] for s in local["steps"]]


def test_a_search_that_fails_on_the_cluster_shows_why(mamba2_dir, cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(tmp_path))  # a path the page accepts, to a file that is not there
    missing = tmp_path / "no-such-text.txt"
    at = settle(open_search(mamba2_dir), cluster, calib=str(missing))
    button(at, "Submit to cluster").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    (out_dir,) = [Path(p) for p in at.session_state["search_runs"].values()]
    wait_until_ended(at, out_dir)
    errors = [e.value for e in at.error]
    assert any(e.startswith("The search failed on the Ray cluster:") and "no-such-text.txt" in e for e in errors), errors
    widget(at.radio, "Where the search runs").set_value(HERE).run()
    assert not button(at, "Run search").disabled  # a failed cluster search does not hold the folder


def test_the_stop_button_stops_the_search_on_the_cluster(mamba2_dir, cluster):
    at = settle(open_search(mamba2_dir), cluster)
    widget(at.number_input, "Steps").set_value(6).run()  # every block and SSM: far more than it does before the stop
    button(at, "Submit to cluster").click().run()
    (out_dir,) = [Path(p) for p in at.session_state["search_runs"].values()]
    button(at, "Stop").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert "stopping after the current candidate" in following(at)
    assert button(at, "Stop").disabled
    wait_until_ended(at, out_dir)
    done = len(json.loads((out_dir / "log.json").read_text())["steps"]) if (out_dir / "log.json").is_file() else 0
    assert json.loads((out_dir / "job.json").read_text())["state"] == "stopped" and done < 6
    assert any(f"stopped after {done} of 6 steps" in i.value for i in at.info)
    resume = "Submit to cluster" if not done else f"Resume on cluster ({done} of 6 steps done)"
    assert not button(at, resume).disabled  # a re-submit resumes it


def test_a_search_killed_on_the_cluster_does_not_hold_its_folder(mamba2_dir, cluster):
    at = settle(open_search(mamba2_dir), cluster)
    button(at, "Submit to cluster").click().run()
    (out_dir,) = [Path(p) for p in at.session_state["search_runs"].values()]
    name = json.loads((out_dir / "submitted.json").read_text())["name"]
    ray.kill(ray.get_actor(name, namespace="shedder"))  # as a restarted cluster would lose it
    deadline = time.time() + 30
    while following(at.run()) is not None and time.time() < deadline:
        time.sleep(0.5)
    assert any("no longer runs this search" in e.value for e in at.error), [e.value for e in at.error]
    widget(at.radio, "Where the search runs").set_value(HERE).run()
    assert not button(at, "Run search").disabled


def test_an_address_without_a_cluster_gives_an_error(mamba2_dir):
    at = settle(open_search(mamba2_dir), f"127.0.0.1:{free_port()}")
    button(at, "Submit to cluster").click().run()
    assert not at.exception, at.exception
    assert "Nothing answers at 127.0.0.1" in at.error[0].value
    assert "search_runs" not in at.session_state

    widget(at.text_input, "Ray address").set_value("not an address").run()
    button(at, "Submit to cluster").click().run()
    assert "should be auto, HOST:PORT" in at.error[0].value

    widget(at.selectbox, "Calibration text").set_value("a .txt file").run()
    widget(at.text_input, "Path of the .txt file").set_value("/outside/the/data/folder.txt").run()
    assert any("outside the data folder" in e.value for e in at.error)
    assert button(at, "Submit to cluster").disabled
    assert following(at) is None and not at.exception


def test_without_ray_the_cluster_option_says_so(mamba2_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    at = open_search(mamba2_dir)
    widget(at.radio, "Where the search runs").set_value(CLUSTER).run()
    assert not at.exception, at.exception
    assert "Ray is not installed" in at.warning[0].value
    assert not [b for b in at.button if b.label == "Submit to cluster"]
