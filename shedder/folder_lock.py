"""One writer per output folder: a lock file beside the folder while a run writes it.

A second search, extraction or recovery into the same folder is refused while the first one lives. The lock
names its holder (host, process id and that process's start time), so a lock left behind by a killed run is
recognised on the same host and taken over.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ShedderError

log = logging.getLogger(__name__)


def lock_path(folder: Path) -> Path:
    folder = Path(folder).expanduser().resolve()
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def output_lock(folder: str | Path, what: str):
    """Hold ``folder``'s lock for the ``what`` (e.g. "search") writing it; :class:`ShedderError` if another
    live run holds it."""
    path = lock_path(Path(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
          "what": what, "since": time.time()}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None and _age(path) < 10:  # being written this moment, or unreadable: not ours to take
                holder = {"what": "run", "since": time.time() - _age(path)}
            if holder is not None and _alive(holder):
                raise ShedderError(
                    f"{Path(folder)} is being written by another {holder.get('what', 'run')} (process "
                    f"{holder.get('pid')} on {holder.get('host')}, since {_when(holder.get('since'))}). Wait for it "
                    f"to end or choose another output folder; if that run is gone, delete {path}.") from None
            log.warning("Taking over %s, left behind by a run that is gone.", path)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise ShedderError(f"Could not take the lock {path}: another run keeps taking it; try again.")
    try:
        yield
    finally:
        if _read(path) == me:
            path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")  # gone meanwhile


def _alive(holder: dict) -> bool:
    """Whether the run that wrote ``holder`` still lives; one on another host is assumed to."""
    if "pid" not in holder:
        return True
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: alive
    started = holder.get("started")
    return started is None or _process_start(pid) in (None, started)  # else the pid was reused


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _when(stamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if isinstance(stamp, (int, float)) else "?"
