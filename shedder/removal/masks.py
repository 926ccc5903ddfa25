"""Reversible removal of components, through one context manager: ``with masked(model, plan): ...``.

Each kind's mask is declared with the kind (``shedder.kinds``; the README's "Supported models" table): a
removed block's layer returns its input, a removed SSM's scan returns its input, a removed sub-block or group
contributes exactly zero. All of them change this model instance only, through one :class:`Edits` stack:
every change is recorded before it is made and undone in reverse order on exit, also after an exception, which
restores bit-identical weights. One re-entrant lock per model serialises masked use, so two threads can never
mix two plans on one model.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Iterable, Iterator

from torch import nn

from ..families import describe_model
from ..kinds import KINDS, Grouping, MaskSetting
from ..kinds.edits import Edits, passthrough
from ..plan import Plan, as_plan
from .catalogue import Component, catalogue_of, validate

_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that guards masked use of ``model`` (re-entrant: masks may nest in one thread)."""
    with _locks_guard:
        if model not in _locks:
            _locks[model] = threading.RLock()
        return _locks[model]


@contextmanager
def masked(model: nn.Module, plan: Plan | Iterable[Component] = ()) -> Iterator[nn.Module]:
    """Remove the plan's components from ``model`` inside the block; restore it exactly on exit.

    ``plan`` is a :class:`Plan` (its channel grouping applies), or a list of components (default grouping)."""
    plan = as_plan(plan)
    components = validate(model, plan.removed, plan.channel_group_size)
    grouping = Grouping(catalogue_of(model, plan.channel_group_size).channel_group_size, plan.channel_reorder)
    family, layers = describe_model(model)
    setting = MaskSetting(grouping, family.block_output)
    with model_lock(model):
        edits = Edits()
        try:
            for c in components:
                KINDS[c.kind].mask(edits, layers[c.layer], c.index, setting)
            yield model
        finally:
            edits.undo_all()


__all__ = ["Edits", "catalogue_of", "masked", "model_lock", "passthrough"]
