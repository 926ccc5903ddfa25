"""Where the dashboard keeps a model's searches and named plans: folders under the cache, one per workspace and
model fingerprint, so that reopening the dashboard finds them again.

    <workspace>/searches/<fingerprint>/<run>/   a search's resumable output (log.json, steps/, plan.json)
    <workspace>/plans/<fingerprint>/<name>.json named plans in our plan format

A workspace is ``cache/workspaces/<name>/``; the one named ``shared`` is ``cache/`` itself (where every search
and plan was kept before workspaces). Each browser session has its own workspace by default (its name kept in the
page's address, so a reload finds it again); a named one is shared by everyone who opens it. A session sees, and
can delete, only what is in its workspace.
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


SHARED = "shared"
SESSION_PREFIX = "session-"


def workspace_name(text: str) -> str:
    """A workspace's name as it is stored (letters, digits, '.', '_', '+', '-'; at most 60 characters)."""
    name = _slug(text.strip())[:60]
    if not name:
        raise ShedderError("Give the workspace a name (letters, digits, '.', '_', '+' or '-').")
    return name


def current_workspace() -> str:
    """The workspace of the browser session this runs in (chosen in the sidebar); ``shared`` outside a session."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx(suppress_warning=True) is None:
        return SHARED
    import streamlit as st

    return st.session_state.get("workspace") or SHARED


def workspace_dir(workspace: str | None = None) -> Path:
    name = workspace_name(workspace or current_workspace())
    return cache_dir() if name == SHARED else cache_dir() / "workspaces" / name


def search_root(fingerprint: str, workspace: str | None = None) -> Path:
    return workspace_dir(workspace) / "searches" / fingerprint


def search_dir(fingerprint: str, settings: dict, workspace: str | None = None) -> Path:
    """The run folder for these settings: the same settings resume the same run."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    stages = ";".join(f"{','.join(targets)}:{steps}" for targets, steps in settings["stages"])
    return search_root(fingerprint, workspace) / f"{_slug(stages)[:60]}-{digest}"


def searches(fingerprint: str, workspace: str | None = None) -> list[Path]:
    """Run folders holding a log, newest first."""
    root = search_root(fingerprint, workspace)
    runs = [p.parent for p in root.glob("*/log.json")] if root.is_dir() else []
    return sorted(runs, key=lambda p: (p / "log.json").stat().st_mtime, reverse=True)


def read_log(run: Path) -> dict:
    try:
        return json.loads((run / "log.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ShedderError(f"Cannot read the search log in {run}: {exc}") from exc


def step_plan(run: Path, step: int) -> Plan:
    return Plan.load(run / "steps" / f"step_{step:03d}.json")


def plans_root(fingerprint: str, workspace: str | None = None) -> Path:
    return workspace_dir(workspace) / "plans" / fingerprint


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


def saved_plans(fingerprint: str, workspace: str | None = None) -> dict[str, Plan]:
    """Named plans of this model in the workspace, by name."""
    root = plans_root(fingerprint, workspace)
    if not root.is_dir():
        return {}
    plans = {}
    for path in sorted(root.glob("*.json")):
        try:
            plans[path.stem] = Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except Exception as exc:  # noqa: BLE001  (a damaged file must not hide the others)
            log.warning("Skipping the unreadable saved plan %s: %s", path, exc)
    return plans


def save_plan(fingerprint: str, name: str, plan: Plan, replace: bool = False, workspace: str | None = None) -> str:
    """Store ``plan`` under ``name`` as :func:`plan_name` spells it. A saved plan of that name (in any letter
    case: some file systems ignore it) is replaced only with ``replace``; otherwise a ShedderError says so."""
    stored = plan_name(name)
    root = plans_root(fingerprint, workspace)
    root.mkdir(parents=True, exist_ok=True)
    taken = [p for p in root.glob("*.json") if p.stem.lower() == stored.lower()]
    if taken and not replace:
        spelt = f" ('{name.strip()}' is stored as {stored})" if name.strip() != stored else ""
        raise ShedderError(f"A saved plan is already named {taken[0].stem}{spelt}: choose another name, or tick "
                           "'Replace a saved plan of that name'.")
    target = taken[0] if taken else root / f"{stored}.json"  # replaced in place, under its own spelling
    plan.save(target)
    return target.stem


def delete_plan(fingerprint: str, name: str, workspace: str | None = None) -> None:
    """Delete the saved plan ``name`` (a name :func:`saved_plans` lists) of the workspace: only its own."""
    root = plans_root(fingerprint, workspace)
    path = root / f"{name}.json"
    if path.parent != root:
        raise ShedderError(f"{name!r} is not the name of a saved plan.")
    path.unlink(missing_ok=True)


def shown_path(path: str | Path) -> str:
    """``path`` as the pages show it: relative to the folder the dashboard runs in when inside it (short, and
    what a Python session started there opens as it is), absolute otherwise."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(resolved)
