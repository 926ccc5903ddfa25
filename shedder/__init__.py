"""shedder: training-free structured pruning of Mamba, Mamba-2 and hybrid language models.

The public API, by layer (each name is imported on first use, so ``import shedder`` stays light):

- model: ``load_model``, ``family_for``, ``supported_model_types``, ``may_run_code`` (consent for a folder's code)
- removal: ``KINDS`` (what each component kind is), ``Component``, ``Catalogue``, ``build_catalogue``, ``masked``,
  ``Plan``
- measurement: ``calibration_windows``, ``perplexity``, ``evaluate_accuracy``, ``EvalSettings`` (how candidates
  are evaluated: batch size, memory for stored states, prefix reuse, layer groups)
- search: ``score``, ``Stage``, ``parse_stages``, ``search``
- extraction and speed: ``extract``, ``build_extracted``, ``benchmark``
- recovery: ``recover``, ``RecoverySettings``
"""
from __future__ import annotations

from importlib import import_module

from .errors import ShedderError
from .removal.catalogue import Catalogue, Component, build_catalogue
from .removal.masks import masked

_LAZY = {  # public name: the module (under shedder) that defines it
    "load_model": "model.loading", "may_run_code": "model.trust",
    "family_for": "families", "supported_model_types": "families", "KINDS": "kinds", "Plan": "plan",
    "calibration_windows": "measurement.calibration", "perplexity": "measurement.perplexity",
    "evaluate_accuracy": "measurement.evaluation", "EvalSettings": "measurement.evaluator",
    "score": "searching.scoring", "Stage": "searching.search", "parse_stages": "searching.search",
    "search": "searching.search",
    "extract": "extraction.extract", "build_extracted": "extraction.extract", "benchmark": "speed.latency",
    "recover": "recovery.recover", "RecoverySettings": "recovery.recover",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'shedder' has no attribute {name!r}")
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["Catalogue", "Component", "ShedderError", "build_catalogue", "masked", *_LAZY]
