"""Where the dashboard keeps a model's searches and named plans: folders under the cache, one per
model fingerprint, so that reopening the dashboard finds them again.

    cache/searches/<fingerprint>/<run>/   a search's resumable output (log.json, steps/, plan.json)
    cache/plans/<fingerprint>/<name>.json named plans in our plan format
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from shedder.errors import ShedderError
from shedder.paths import cache_dir
from shedder.plan import Plan

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.")


def search_root(fingerprint: str) -> Path:
    return cache_dir() / "searches" / fingerprint


def search_dir(fingerprint: str, settings: dict) -> Path:
    """The run folder for these settings: the same settings resume the same run."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    stages = ";".join(f"{','.join(targets)}:{steps}" for targets, steps in settings["stages"])
    return search_root(fingerprint) / f"{_slug(stages)[:60]}-{digest}"


def searches(fingerprint: str) -> list[Path]:
    """Run folders holding a log, newest first."""
    root = search_root(fingerprint)
    runs = [p.parent for p in root.glob("*/log.json")] if root.is_dir() else []
    return sorted(runs, key=lambda p: (p / "log.json").stat().st_mtime, reverse=True)


def read_log(run: Path) -> dict:
    try:
        return json.loads((run / "log.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ShedderError(f"Cannot read the search log in {run}: {exc}") from exc


def step_plan(run: Path, step: int) -> Plan:
    return Plan.load(run / "steps" / f"step_{step:03d}.json")


def plans_root(fingerprint: str) -> Path:
    return cache_dir() / "plans" / fingerprint


MAX_NAME = 100  # characters of a plan's name: far inside every file system's 255-byte limit on a file name
NAME_RULE = f"letters, digits, '.', '_', '+' or '-'; other characters become '-'; at most {MAX_NAME} characters"


def plan_name(text: str) -> str:
    """The name a plan is stored under (its file name without ``.json``)."""
    name = _slug(text.strip())
    if not name:
        raise ShedderError(f"Give the plan a name ({NAME_RULE}).")
    if len(name) > MAX_NAME:
        raise ShedderError(f"A plan's name has at most {MAX_NAME} characters; this one has {len(name)}. "
                           "Choose a shorter name.")
    return name


def saved_plans(fingerprint: str) -> dict[str, Plan]:
    """Named plans of this model, by name."""
    root = plans_root(fingerprint)
    if not root.is_dir():
        return {}
    plans = {}
    for path in sorted(root.glob("*.json")):
        try:
            plans[path.stem] = Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except Exception as exc:  # noqa: BLE001  (a damaged file must not hide the others)
            log.warning("Skipping the unreadable saved plan %s: %s", path, exc)
    return plans


def save_plan(fingerprint: str, name: str, plan: Plan, replace: bool = False) -> str:
    """Store ``plan`` under ``name`` as :func:`plan_name` spells it. A saved plan of that name (in any letter
    case: some file systems ignore it) is replaced only with ``replace``; otherwise a ShedderError says so."""
    stored = plan_name(name)
    root = plans_root(fingerprint)
    root.mkdir(parents=True, exist_ok=True)
    taken = [p for p in root.glob("*.json") if p.stem.lower() == stored.lower()]
    if taken and not replace:
        spelt = f" ('{name.strip()}' is stored as {stored})" if name.strip() != stored else ""
        raise ShedderError(f"A saved plan is already named {taken[0].stem}{spelt}: choose another name, or tick "
                           "'Replace a saved plan of that name'.")
    target = taken[0] if taken else root / f"{stored}.json"  # replaced in place, under its own spelling
    plan.save(target)
    return target.stem


def delete_plan(fingerprint: str, name: str) -> None:
    """Delete the saved plan ``name`` (a name :func:`saved_plans` lists)."""
    path = plans_root(fingerprint) / f"{name}.json"
    if path.parent != plans_root(fingerprint):
        raise ShedderError(f"{name!r} is not the name of a saved plan.")
    path.unlink(missing_ok=True)
