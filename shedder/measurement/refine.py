"""Measurements that refine while they run, for the dashboard's live view of a plan: latency as timed pairs
accumulate, accuracy over growing document subsets. Each calls back with a complete, honest result after every
round (with its spread or standard error and whether it is final), so a page can show "refining" numbers and
a cancelled run still leaves the last one.

Both are meant for a job's own model copy (:mod:`shedder.jobs`): latency pauses for foreground work between
timed pairs (never inside one, so no pause is timed), accuracy through the copy's layer guard.
"""
from __future__ import annotations

import statistics
from typing import Callable

from torch import nn

from ..errors import ShedderError
from ..plan import Plan
from ..speed.cost_model import ideal_speedups, model_cost
from ..speed.latency import (environment, extracted_model, generate_exactly, latency_verdict, random_prompt, spread,
                             timed_generate)
from .perplexity import model_device

MIN_PAIRS = 3  # the fewest timed pairs a latency result is given for (quartiles need a few)


def refining_latency(model: nn.Module, plan: Plan, prompt_len: int, new_tokens: int, repeats: int = 21,
                     warmup: int = 2, seed: int = 0, on_round: Callable[[dict], None] | None = None,
                     between_pairs: Callable[[], None] | None = None, round_size: int = 3,
                     phase: Callable[[str], None] = lambda text: None) -> dict:
    """:func:`shedder.speed.latency.compare_latency`'s measurement (dense and extracted timed in turns, the same
    result fields), reported through ``on_round`` after every ``round_size`` pairs from :data:`MIN_PAIRS` on,
    with ``final`` False until all ``repeats`` pairs are timed. ``between_pairs`` runs before every warm-up run
    and between timed pairs (a pause for foreground work, a cancellation check); it is never timed. ``phase``
    is told what runs before the pairs: extraction, each warm-up run."""
    if repeats < MIN_PAIRS:
        raise ShedderError(f"Latency needs at least {MIN_PAIRS} timed runs per model to show its spread.")
    # extraction builds on the CPU: the extracted model is timed on the dense model's device
    if plan.removed:
        phase("extracting the plan")
    small = extracted_model(model, plan).to(model_device(model)) if plan.removed else model
    prompt = random_prompt(model, 1, prompt_len, seed)
    times = {"dense": [], "extracted": []}
    first = {"dense": [], "extracted": []}
    ideal_costs = None
    if plan.removed:
        ideal_costs = ideal_speedups(model_cost(model, plan.with_removed([])), model_cost(model, plan), prompt_len,
                                     [1], prompt_len + new_tokens // 2)  # BenchSettings.mean_decode_context
    device = environment(model)["device_name"]
    params = sum(p.numel() for p in {id(p): p for p in small.parameters()}.values())

    def result(final: bool) -> dict:
        ratios = [d / e for d, e in zip(times["dense"], times["extracted"])]
        ideal = None
        if ideal_costs is not None:
            head = statistics.median(first["dense"])
            rest = statistics.median(times["dense"]) - head
            ideal = round((head + rest) / (head / ideal_costs["prefill_flops"] + rest / ideal_costs["decode_bytes"]["1"]), 4)
        speedup = spread(ratios)
        return {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": len(ratios), "warmup": warmup,
                "dense_ms": spread(times["dense"], 3), "extracted_ms": spread(times["extracted"], 3),
                "dense_first_token_ms": spread(first["dense"], 3), "extracted_first_token_ms": spread(first["extracted"], 3),
                "speedup": speedup, "ideal_speedup": ideal, "notes": latency_verdict(speedup, ideal), "params": params,
                "device": device, "final": final, "target_repeats": repeats}

    for run in range(warmup):
        for name, m in (("dense", model), ("extracted", small)):
            if between_pairs is not None:  # a first run may compile the kernels: a cancel need not wait for all
                between_pairs()
            phase(f"warming up: {name} model, run {run + 1} of {warmup}")
            generate_exactly(m, prompt, new_tokens)
    phase("timing pairs")
    latest = None
    for n in range(repeats):
        if between_pairs is not None:
            between_pairs()
        for name, m in (("dense", model), ("extracted", small)):
            head, total = timed_generate(m, prompt, new_tokens)
            first[name].append(1000 * head)
            times[name].append(1000 * total)
        done = n + 1
        if done == repeats or (done >= MIN_PAIRS and (done - MIN_PAIRS) % round_size == 0):
            latest = result(done == repeats)
            if on_round is not None:
                on_round(latest)
    return latest


def subset_sizes(limit: int, first: int = 10) -> list[int]:
    """Growing document counts per task ending at ``limit``: 10, 30, 100 ... (each about three times the last)."""
    sizes, n = [], min(first, limit)
    while n < limit:
        sizes.append(n)
        n = n * 3 if n * 3 < limit * 0.8 else limit
    return [*sizes, limit]


def refining_accuracy(model: nn.Module, tokenizer, tasks: list[str], plan: Plan, limit: int, seed: int = 0,
                      on_round: Callable[[int, dict, dict], None] | None = None,
                      progress: Callable[[int, int, str], None] | None = None) -> tuple[dict, dict]:
    """Dense and ``plan``'s zero-shot accuracy (``AccuracyReport.to_dict(with_docs=True)``) on growing seeded
    subsamples (:func:`subset_sizes`), each a complete measurement of its own with its standard errors;
    ``on_round(documents per task, dense, pruned)`` after each. Returns the last pair (``limit`` documents)."""
    from .evaluation import evaluate_accuracy

    dense = pruned = None
    for n in subset_sizes(limit):
        reports = []
        for name, removed in (("dense", Plan()), ("pruned", plan)):
            report = evaluate_accuracy(model, tokenizer, tasks, removed, limit=n, seed=seed, progress=(
                None if progress is None else lambda d, t, name=name, n=n: progress(d, t, f"{name} model, {n} documents per task")))
            reports.append(report.to_dict(with_docs=True))
        dense, pruned = reports
        if on_round is not None:
            on_round(n, dense, pruned)
    return dense, pruned


def changed_documents(dense: dict, pruned: dict) -> list[dict]:
    """The documents whose score (each task's paper metric) differs between two ``AccuracyReport.to_dict(
    with_docs=True)`` results on the same documents: task, document index, dense and pruned score."""
    rows = []
    for task, result in pruned["tasks"].items():
        metric = result["paper_metric"]
        before = dense["tasks"].get(task, {}).get("per_doc", {})
        for doc, scores in result.get("per_doc", {}).items():
            if doc in before and before[doc].get(metric) != scores.get(metric):
                rows.append({"task": task, "doc": int(doc), "metric": metric, "dense": before[doc][metric],
                             "pruned": scores[metric]})
    return sorted(rows, key=lambda r: (r["task"], r["doc"]))


def document_text(task: str, index: int, width: int = 160) -> tuple[str, str]:
    """(the document's prompt, its correct answer), shortened to ``width`` characters, for showing a document."""
    from .tasks import get_task

    spec = get_task(task)
    doc = spec.docs()[index]
    text = spec.doc_to_text(doc)
    answer = spec.doc_to_target(doc)
    if spec.doc_to_choice is not None:
        choices = spec.doc_to_choice(doc)
        if isinstance(text, int):  # the choices are the contexts (winogrande)
            text, answer = choices[text], answer
        elif isinstance(answer, int) and 0 <= answer < len(choices):
            answer = choices[answer]
    text, answer = str(text).strip(), str(answer).strip()
    return (text if len(text) <= width else text[:width - 1] + "…"), (answer if len(answer) <= 80 else answer[:79] + "…")
