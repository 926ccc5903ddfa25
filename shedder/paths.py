"""Where the project keeps things on disk."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ShedderError

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Results cache (git-ignored). Override with SHEDDER_CACHE."""
    path = Path(os.environ.get("SHEDDER_CACHE", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def installed_package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (data-only packages)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def required_package_dir(import_name: str, what: str, pip: str, extra_hint: str = "") -> Path:
    """Like :func:`installed_package_dir`, with an error that says how to install it."""
    folder = installed_package_dir(import_name)
    if folder is None:
        raise ShedderError(f"{what} is not installed. Run the README's set-up, or `pip install --no-deps {pip}`"
                           f"{extra_hint}.")
    return folder
