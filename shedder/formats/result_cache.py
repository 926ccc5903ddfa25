"""Measured results on disk (``cache/results/<kind>/``), keyed by everything that determines them.

A key is a JSON-able dict (model fingerprint, data, settings ...); its hash names the file. Writes
are atomic, so an interrupted run never leaves half a result behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..paths import cache_dir, write_text_atomic

log = logging.getLogger(__name__)


def _path(kind: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "results" / kind / f"{digest}.json"


def load(kind: str, key: dict) -> dict | None:
    path = _path(kind, key)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("Ignoring unreadable cached result %s", path)
        return None
    return stored.get("value") if stored.get("key") == json.loads(json.dumps(key, default=str)) else None


def save(kind: str, key: dict, value: dict) -> None:
    path = _path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"key": key, "value": value}, default=str))
