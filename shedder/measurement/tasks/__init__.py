"""Zero-shot tasks as declarative configs (lm-eval's prompts and metrics), with offline documents.

``TASKS`` maps each lm-eval task name to its :class:`TaskSpec`; adding a task is adding a spec to
``zero_shot.SUITE``.
"""
from __future__ import annotations

from ...errors import ShedderError
from .spec import RenderedDoc, Request, TaskSpec
from .zero_shot import SUITE

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in SUITE}
PAPER_TASKS: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ShedderError(f"Unknown task {name!r}; choose from {', '.join(TASKS)}.")
    return TASKS[name]


def parse_task_list(text: str) -> list[str]:
    """``"hellaswag,piqa"`` -> names, checked; ``all`` or ``paper`` is the whole suite."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ShedderError(f"No task named in {text!r}; choose from {', '.join(TASKS)} (or all).")
    if names in (["all"], ["paper"]):
        return list(PAPER_TASKS)
    for name in names:
        get_task(name)
    if len(set(names)) != len(names):
        raise ShedderError(f"A task is listed twice in {text!r}.")
    return names


__all__ = ["TASKS", "PAPER_TASKS", "TaskSpec", "Request", "RenderedDoc", "get_task", "parse_task_list"]
