import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# model code that tests load (with consent) is copied here, not into the user's cache
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf-modules-"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own results cache."""
    monkeypatch.setenv("SHEDDER_CACHE", str(tmp_path / "cache"))
    yield
    from shedder.jobs import cancel_all

    cancel_all()  # background work a test started ends with it (never writing into the next test's cache)


def run_cli(*args, cache):
    """``python -m shedder ARGS`` offline, with its own results cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SHEDDER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "shedder", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="session")
def mamba2_dir(tmp_path_factory):
    """A tiny Mamba-2 saved as a transformers folder, like a user's local checkpoint."""
    from tiny_models import save_tiny

    directory = tmp_path_factory.mktemp("tiny-mamba2")
    save_tiny("mamba2", directory)
    return directory
