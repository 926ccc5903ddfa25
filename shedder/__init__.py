"""shedder: training-free structured pruning of Mamba, Mamba-2 and hybrid language models.

The public API, by layer (each name is imported on first use, so ``import shedder`` stays light):

- model: ``load_model``, ``family_for``, ``supported_model_types``, ``may_run_code`` (consent for a folder's code)
- removal: ``KINDS`` (what each component kind is), ``Component``, ``Catalogue``, ``build_catalogue``, ``masked``,
  ``Plan``
- measurement: ``calibration_windows``, ``perplexity``, ``evaluate_accuracy``, ``score``
- search: ``Stage``, ``parse_stages``, ``search``
- extraction and speed: ``extract``, ``build_extracted``, ``benchmark``
- recovery: ``recover``, ``RecoverySettings``
"""
from __future__ import annotations

from importlib import import_module

from .catalogue import Catalogue, Component, build_catalogue
from .errors import ShedderError
from .masks import masked

_LAZY = {
    "load_model": "loading", "family_for": "families", "supported_model_types": "families",
    "may_run_code": "trust", "KINDS": "kinds", "Plan": "plan", "calibration_windows": "calibration", "perplexity": "perplexity",
    "evaluate_accuracy": "evaluation", "score": "scoring", "Stage": "search", "parse_stages": "search",
    "search": "search", "extract": "extract", "build_extracted": "extract", "benchmark": "latency",
    "recover": "recover", "RecoverySettings": "recover",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'shedder' has no attribute {name!r}")
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["Catalogue", "Component", "ShedderError", "build_catalogue", "masked", *_LAZY]
