"""Whether code shipped inside a model folder may run: one rule for every command and page.

transformers runs a folder's own Python files when its ``config.json`` or ``tokenizer_config.json`` names
them in ``auto_map`` and the caller passes ``trust_remote_code=True``. shedder passes that only when
:func:`may_run_code` says so: the user opted in (``--trust-remote-code``, the dashboard's checkbox), or
the folder is provably an extraction of this shedder, which :func:`not_own_extraction` checks file by file.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..families import supported_model_types


def may_run_code(source: str | Path, opted_in: bool) -> bool:
    """Whether loading ``source`` may run code from it: the user opted in, or it is our own extraction."""
    return opted_in or not_own_extraction(source) is None


def needs_its_code(folder: Path) -> bool:
    """A pruned layout: its config names the family's model type, but only the folder's code builds it."""
    try:
        return "pruned_layout" in _json(folder / "config.json")
    except (OSError, ValueError):
        return False


def not_own_extraction(source: str | Path) -> str | None:
    """None when ``source`` is a folder written by ``shedder extract`` (or ``recover``) whose code is exactly
    this shedder's template; otherwise the reason it is not.

    Its ``config.json`` must hold a ``pruned_layout`` and exactly the template's ``auto_map``; every ``.py``
    file anywhere in the folder must be one of the template's files, byte for byte, for the family its
    ``model_type`` names; no other JSON file (the tokenizer's included) may carry an ``auto_map`` or
    ``custom_pipelines``."""
    from ..extraction.pruned_modeling import AUTO_MAP, FILES, model_file_text

    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        return f"{source} is not a local model folder"
    try:
        config = _json(folder / "config.json")
        family = config.get("model_type")
        if "pruned_layout" not in config:
            return "its config.json has no pruned_layout"
        if family not in supported_model_types():
            return f"its model type {family!r} is not one shedder's extraction writes"
        if config.get("auto_map") != AUTO_MAP:
            return f"config.json's auto_map {config.get('auto_map')!r} is not the one shedder writes"
        for name in FILES:
            if not (folder / name).is_file():
                return f"{name} is missing"
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).as_posix()
            if relative not in FILES:
                return f"it holds {relative}, which is not shedder's model code"
            if path.read_bytes() != model_file_text(relative, family).encode("utf-8"):
                return f"{relative} differs from this shedder's model code"
        for path in sorted(folder.glob("*.json")):
            if path.name == "config.json":
                if "custom_pipelines" in config:
                    return "config.json names custom pipelines"
                continue
            data = _json(path)
            if isinstance(data, dict) and ("auto_map" in data or "custom_pipelines" in data):
                return f"{path.name} names code of its own (auto_map)"
    except (OSError, ValueError) as exc:
        return f"its files could not be read ({exc})"
    return None


def _json(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    if path.name == "config.json" and not isinstance(data, dict):
        raise ValueError("config.json is not a JSON object")
    return data
