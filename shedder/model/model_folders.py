"""Folders of pruned and recovered models: what their files say, and which ones the dashboard made.

An extracted folder (``python -m shedder extract``) holds ``plan.json`` with the source model's type,
layer count and weight fingerprint; a recovered one also holds ``recovery.json``. A checkpoint that
needs its own modeling code names it in ``config.json``'s ``auto_map`` and ships the file beside the
weights.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import cache_dir

log = logging.getLogger(__name__)

RESULT_FILE = "recovery.json"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def local_dir(spec: str) -> Path | None:
    """The folder a model spec (a path or zoo name) loads from; None for hub ids and packaged files."""
    from .loading import resolve_source

    path = Path(resolve_source(spec)).expanduser()
    return path.resolve() if (path / "config.json").is_file() else None


def config_json(folder: Path | None) -> dict:
    return (read_json(folder / "config.json") or {}) if folder is not None else {}


def code_files(folder: Path | None) -> list[Path]:
    """The Python files beside the weights of a checkpoint whose config names its own code (``auto_map``);
    all of them, since a modeling file may import its neighbours."""
    if not config_json(folder).get("auto_map"):
        return []
    return sorted(folder.glob("*.py"))


def checkpoint_dtype(folder: Path | None) -> torch.dtype:
    from .loading import DTYPES

    config = config_json(folder)
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return DTYPES.get(name, torch.float32)


def find_dense_model(folder: Path | None) -> str | None:
    """The dense model an extracted folder's ``plan.json`` was made from, when it is a zoo model here.

    A plan records the source's model type, layer count and weight fingerprint; zoo folders with
    the same type and layer count are loaded and their fingerprint compared.
    """
    from .identity import model_fingerprint
    from .loading import load_model
    from .zoo import zoo_models

    plan_file = None if folder is None else folder / "plan.json"
    if plan_file is None or not plan_file.is_file():
        return None
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    source = plan.get("model") or {}
    if not source.get("fingerprint"):
        log.info("%s has no source fingerprint; pass the dense model explicitly to measure the share recovered",
                 plan_file)
        return None
    for candidate in zoo_models():
        location = Path(candidate.location) if candidate.available and candidate.location else None
        if location is None or not location.is_dir():
            continue
        config = config_json(location)
        if config.get("model_type") != source.get("model_type"):
            continue
        if source.get("n_layers") not in (None, config.get("num_hidden_layers")):
            continue
        model, _ = load_model(str(location), "float32", "cpu")
        same = model_fingerprint(model) == source["fingerprint"]
        del model
        if same:
            log.info("The dense reference of %s is the zoo model %s", folder, candidate.name)
            return candidate.name
    return None


def extracted_dir() -> Path:
    """Where the dashboard writes the models it extracts."""
    return cache_dir() / "extracted"


def recovered_dir() -> Path:
    """Where the dashboard writes the models it recovers."""
    return cache_dir() / "recovered"


@dataclass(frozen=True)
class LocalModel:
    path: str
    kind: str  # "recovered" or "extracted"
    description: str
    modified: float


def local_models(roots: list[Path] | None = None) -> list[LocalModel]:
    """Extracted and recovered models in ``roots`` (default: the dashboard's folders), newest first."""
    from .zoo import is_checkpoint_folder

    roots = [recovered_dir(), extracted_dir()] if roots is None else roots
    folders = [f for root in roots if root.is_dir() for f in root.iterdir()]
    found = []
    for folder in folders:
        if not folder.is_dir() or folder.name.startswith(".") or not is_checkpoint_folder(folder):
            continue
        record = read_json(folder / RESULT_FILE)
        if record is not None:
            share = record["recovered_share"].get("bpb")
            after = record["metrics"]["recovered"]["held_out"]["bpb"]
            text = f"recovered ({record['settings']['method']}, {record['settings']['steps']} steps), bpb {after:.4f}"
            text += f", {share:.0%} of the pruning loss won back" if share is not None else ""
            found.append(LocalModel(str(folder), "recovered", text, folder.stat().st_mtime))
        elif (folder / "plan.json").is_file():
            plan = read_json(folder / "plan.json") or {}
            text = f"extracted, {len(plan.get('removed', []))} components removed"
            found.append(LocalModel(str(folder), "extracted", text, folder.stat().st_mtime))
    return sorted(found, key=lambda m: m.modified, reverse=True)
