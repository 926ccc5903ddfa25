"""Nothing is lost under concurrency and kills: atomic writes with temporary files of their own, one writer
per output folder (a stale lock of a killed run is taken over), and no staging folder left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.folder_lock import lock_path, output_lock
from shedder.measurement.calibration import Windows
from shedder.paths import UMASK, write_text_atomic
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.searching.search import Stage, search
from tiny_models import build, tiny_tokenizer, token_ids
from conftest import ROOT

WRITER = textwrap.dedent("""
    import json, sys
    from shedder.paths import write_text_atomic
    path, name = sys.argv[1], sys.argv[2]
    errors = 0
    for i in range(300):
        try:
            write_text_atomic(__import__("pathlib").Path(path), json.dumps({"writer": name, "i": i, "pad": "x" * 20000}))
        except Exception:
            errors += 1
    print(errors)
""")


def test_two_writers_and_a_reader_never_collide(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "{}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), name], env=env, stdout=subprocess.PIPE,
                                text=True) for name in ("a", "b")]
    invalid = reads = 0
    while any(w.poll() is None for w in writers) or reads < 60:
        try:
            json.loads(target.read_text())
        except ValueError:
            invalid += 1
        reads += 1
        time.sleep(0.002)
    errors = [int(w.communicate()[0]) for w in writers]
    assert errors == [0, 0] and invalid == 0 and reads >= 60
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o666 & ~UMASK


def windows() -> Windows:
    return Windows(ids=token_ids(batch=2, length=16), source="test", seed=None)


def test_a_second_search_into_a_busy_folder_is_refused(tmp_path):
    model, out = build("mamba2"), tmp_path / "run"
    with output_lock(out, "search"):
        with pytest.raises(ShedderError, match="being written by another search"):
            search(model, windows(), [Stage(("block",), 1)], out)
    assert not (out / "log.json").exists()
    record = search(model, windows(), [Stage(("block",), 1)], out)  # the lock went with the first run
    assert len(record["steps"]) == 1 and not lock_path(out).exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from shedder.folder_lock import output_lock
    with output_lock(sys.argv[1], "search"):
        print("held", flush=True)
        time.sleep(600)
""")


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ShedderError, match=f"process {holder.pid}"):
            search(build("mamba2"), windows(), [Stage(("block",), 1)], out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # a killed run cannot clean up ...
    record = search(build("mamba2"), windows(), [Stage(("block",), 1)], out)  # ... but its lock is stale
    assert len(record["steps"]) == 1


def test_a_lock_whose_process_id_was_reused_is_stale(tmp_path):
    out = tmp_path / "run"
    lock_path(out).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "started": 1,
                                          "what": "search", "since": 0}))
    with output_lock(out, "search"):  # the parent process lives, but it started at another time
        pass
    assert not lock_path(out).exists()


def test_extract_cleans_up_what_a_killed_extraction_left(tmp_path):
    model = build("mamba2")
    out = tmp_path / "pruned"
    left = tmp_path / ".pruned.x1y2.partial"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"\0" * 1024)
    extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("ssm", 1)]), out)
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~UMASK  # an ordinary folder, not mkdtemp's private one


def test_two_extractions_into_one_folder_at_once(tmp_path):
    model = build("mamba2")
    out = tmp_path / "pruned"
    with output_lock(out, "extraction"):
        with pytest.raises(ShedderError, match="being written by another extraction"):
            extract(model, tiny_tokenizer(), Plan.for_model(model, []), out)
    assert not out.exists()


def test_a_second_recovery_into_a_busy_folder_is_refused(mamba2_dir, tmp_path):
    from shedder.recovery.recover import Evaluation, RecoverySettings, recover

    out = tmp_path / "recovered"
    with output_lock(out, "recovery"):
        with pytest.raises(ShedderError, match="being written by another recovery"):
            recover(str(mamba2_dir), out, RecoverySettings(steps=1, batch_size=1, seq_len=16),
                    Evaluation(tokens=64, seq_len=16), device="cpu")
    assert not out.exists()


def test_plain_streamlit_run_listens_on_this_machine_only():
    """`streamlit run streamlit_app.py` from the project folder reads .streamlit/config.toml."""
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120).stdout
    settings = dict(line.split(" = ", 1) for line in shown.splitlines() if " = " in line and not line.startswith("#"))
    assert settings["address"] == '"127.0.0.1"' and int(settings["maxUploadSize"]) <= 1
