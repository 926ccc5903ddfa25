"""Where the project keeps things on disk."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Results cache (git-ignored). Override with SHEDDER_CACHE."""
    path = Path(os.environ.get("SHEDDER_CACHE", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
