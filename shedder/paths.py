"""Where the project keeps things on disk."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from .errors import ShedderError

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Results cache (git-ignored). Override with SHEDDER_CACHE."""
    path = Path(os.environ.get("SHEDDER_CACHE", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling of its own, renamed over ``path``: readers see
    the old or the new file, never half of one, and two writers never share a temporary file."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(name, 0o666 & ~UMASK)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: reading it means setting it, which is not thread-safe later


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


NAME_MAX = 255  # bytes in one file or folder name on common file systems (ext4, APFS, NTFS counts characters)


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
    try:
        resolved = (root / Path(text).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a link loop, an unknown ~user
        raise ShedderError(f"{what} {text[:80]!r} is not a usable path ({exc}).") from None
    longest = max(resolved.parts, key=lambda part: len(part.encode()))
    if len(longest.encode()) > NAME_MAX:
        raise ShedderError(f"{what}: the name {longest[:40]!r}... has {len(longest.encode())} bytes; file systems "
                           f"allow at most {NAME_MAX}. Choose a shorter name.")
    if not any(resolved.is_relative_to(allowed) for allowed in (root, cache_dir().resolve())):
        raise ShedderError(f"{what} {text!r} ({resolved}) is outside the data folder {root}. Use a path inside it, "
                           "or start the dashboard with SHEDDER_DATA_ROOT set to a folder that contains it.")
    return resolved


# --- output paths, checked before the work -----------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe(folder: Path, option: str) -> None:
    """Create and delete a file in ``folder``: the only test of writability that holds for every user,
    root included (permission bits alone do not stop root; a read-only mount or an immutable folder does)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".shedder-write-test-"):
            pass
    except OSError as exc:
        raise ShedderError(f"{option} {folder}: cannot write there ({exc.strerror or exc}); "
                           "choose a folder you can write to.") from None


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """A folder a command will write into (it may not exist yet): refused now, before any work, when a file
    stands at or above it or when the place it would be made cannot be written."""
    path = Path(path).expanduser()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ShedderError(f"{option} {path}: {existing} is a file, not a folder; choose another path.")
    _probe(existing, option)
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """A file a command will write at the end (missing parent folders are made then): refused now when it
    is a folder, when a file stands above it, or when its folder cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ShedderError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result.json'}.")
    check_output_dir(path.parent, option)
    return path
