"""The guided tour's results, shipped with a zoo model (``zoo/<name>/tour.json``) so that the tour opens at once.

A tour file holds what the tour shows before anything is measured: the model's size, its dense perplexity,
the leave-one-out map of its blocks, SSMs, attention and MLP sub-blocks, those it has
(``shedder.searching.sensitivity_map``), and a short greedy search over them with the perplexity after every step, all on one perplexity setting (the dashboard's default evaluation setting, so the
tour's numbers are the ones every page shows). It is keyed twice: by a hash of the weight and config files (read
without loading the model, so a stale file is caught at once) and by the model's fingerprint. A stale or
missing file is recomputed by :func:`make_tour` (the dashboard does it in the background and keeps the result
under the cache; ``python scripts/make_tour.py NAME`` rewrites the shipped file).
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Callable

from torch import nn

from ..measurement.calibration import calibration_windows
from ..measurement.perplexity import PerplexitySetting
from ..model.identity import model_fingerprint
from ..paths import write_text_atomic
from ..removal.catalogue import Component
from ..removal.masks import catalogue_of
from . import result_cache

log = logging.getLogger(__name__)

TOUR_FILE = "tour.json"
VERSION = 1
KINDS = ("block", "ssm", "attn", "mlp")  # those the model has
SEARCH_STEPS = 4
WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def files_digest(folder: str | Path) -> str | None:
    """sha256 over the folder's config and weight files (None when it has no weights)."""
    folder = Path(folder)
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not any(p.name != "config.json" for p in present):
        return None
    digest = hashlib.sha256()
    for path in present:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _cache_key(digest: str) -> dict:
    return {"files": digest, "version": VERSION}


def load_tour(folder: str | Path) -> dict | None:
    """The tour of the model in ``folder`` if it is fresh: the shipped file when it matches the folder's weight
    files, else one recomputed earlier (kept under the cache); None when there is none (or the weights are
    missing)."""
    folder = Path(folder)
    digest = files_digest(folder)
    if digest is None:
        return None
    shipped = folder / TOUR_FILE
    if shipped.is_file():
        try:
            tour = json.loads(shipped.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("Ignoring the unreadable tour file %s", shipped)
        else:
            if tour.get("files") == digest and tour.get("version") == VERSION:
                return tour
    return result_cache.load("tour", _cache_key(digest))


def make_tour(model: nn.Module, tokenizer, folder: str | Path, setting: PerplexitySetting | None = None,
              steps: int = SEARCH_STEPS, progress: Callable[[str, int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, save_to_cache: bool = True) -> dict | None:
    """Measure the tour of ``model`` (loaded from ``folder``): its sensitivity map of blocks, SSMs, attention and MLP
    sub-blocks (those it has) and a greedy search of ``steps`` steps over them, both on ``setting``. Kept under the cache (``save_to_cache``) and
    returned; None when ``should_stop()`` ended it early (the finished sensitivity scores are kept)."""
    from ..measurement.evaluator import EvalSettings
    from ..searching.search import Stage, search
    from ..searching.sensitivity_map import BATCH_SIZE, fill_map, load_map

    setting = setting or PerplexitySetting()
    say = progress or (lambda phase, done, total: None)
    catalogue = catalogue_of(model)
    fingerprint = model_fingerprint(model)
    windows = calibration_windows(setting.text, tokenizer, setting.seq_len, setting.tokens)
    targets = tuple(k for k in KINDS if catalogue.components([k]))  # the kinds this model has
    components = catalogue.components(list(targets))
    found = load_map(fingerprint, setting.text, setting.tokens, setting.seq_len)
    scoring = "scoring every " + ", ".join(targets)
    say(scoring, 0, len(found.missing(components)))
    fill_map(model, windows, found, components, should_stop=should_stop, progress=lambda d, t: say(scoring, d, t))
    if should_stop is not None and should_stop():
        return None
    steps = min(steps, len(components))
    trail = []

    def on_step(step: dict) -> None:
        trail.append(step)
        say("a greedy search", len(trail), steps)

    say("a greedy search", 0, steps)
    with tempfile.TemporaryDirectory() as out:
        search(model, windows, [Stage(targets, steps)], out, EvalSettings(batch_size=BATCH_SIZE), on_step=on_step,
               should_stop=should_stop)
    if len(trail) < steps:
        return None
    tour = {
        "version": VERSION, "files": files_digest(folder), "fingerprint": fingerprint,
        "model": {"name": Path(folder).name, "model_type": catalogue.model_type, "n_layers": catalogue.n_layers,
                  "total_params": catalogue.total_params,
                  "params": {k: v["params"] for k, v in catalogue.summary().items()}},
        "setting": setting.to_dict(),
        "sensitivity": {"kinds": list(targets), "base_ppl": found.base_ppl,
                        "scores": found.scores(components), "seconds": round(found.seconds, 2)},
        "search": {"stages": f"{','.join(targets)}:{steps}", "batch_size": BATCH_SIZE, "steps": [
            {"step": s["step"] + 1, "removed": s["removed"], "ppl": s["ppl"], "params_removed": s["params_removed"],
             "seconds": round(s["seconds"], 2)} for s in trail]},
    }
    if save_to_cache and tour["files"] is not None:
        result_cache.save("tour", _cache_key(tour["files"]), tour)
    return tour


def write_tour(tour: dict, folder: str | Path) -> Path:
    path = Path(folder) / TOUR_FILE
    write_text_atomic(path, json.dumps(tour, indent=1) + "\n")
    return path


def seed_sensitivity(tour: dict) -> None:
    """Put the tour's scores into the model's sensitivity map (``shedder.searching.sensitivity_map``), so the Sensitivity
    page shows them without scoring again (the same numbers: same evaluator, setting and batch size)."""
    from ..searching.sensitivity_map import component_key, load_map

    setting = tour["setting"]
    found = load_map(tour["fingerprint"], setting["text"], setting["tokens"], setting["seq_len"])
    added = False
    if found.base_ppl is None:
        found.base_ppl = tour["sensitivity"]["base_ppl"]
    for row in tour["sensitivity"]["scores"]:
        key = component_key(Component.from_dict(row))
        if key not in found.ppl:
            found.ppl[key] = row["ppl"]
            added = True
    if added:
        found.save()


def removed_after(tour: dict, step: int) -> list[Component]:
    """The components the tour's search removed in its first ``step`` steps."""
    return [Component.from_dict(s["removed"]) for s in tour["search"]["steps"][:step]]
