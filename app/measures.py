"""Measurements of a plan that take long (accuracy, latency): measured on demand through the library,
kept on disk with `shedder.result_cache`, and looked up without measuring by every page that shows them
(Playground, Export & compare, the Search page's Pareto chart)."""
from __future__ import annotations

import json

import streamlit as st

from shedder import result_cache
from shedder.masks import model_lock
from shedder.plan import Plan

from .state import ModelChoice, catalogue, fingerprint, loaded

# A subsample small enough for a CPU (the demo model scores about 1.5 documents per second on 2 cores).
ACCURACY_DEFAULTS = {"tasks": ["arc_easy", "piqa"], "limit": 20, "seed": 0}
# A short prompt and a few new tokens: quick enough to measure on demand on a CPU.
LATENCY_DEFAULTS = {"prompt_len": 64, "new_tokens": 8}


def accuracy_settings() -> dict:
    """The accuracy settings last used in this session (pages show measurements made with them)."""
    return {**ACCURACY_DEFAULTS, **st.session_state.get("accuracy_settings", {})}


def use_accuracy_settings(tasks: list[str], limit: int) -> dict:
    st.session_state["accuracy_settings"] = {"tasks": list(tasks), "limit": int(limit), "seed": 0}
    return accuracy_settings()


def latency_settings() -> dict:
    return dict(LATENCY_DEFAULTS)


def plan_identity(choice: ModelChoice, plan: Plan) -> dict:
    """What a measurement of ``plan`` on the loaded model depends on (removal order does not matter)."""
    model = loaded(choice)[0]
    parameter = next(model.parameters())
    removed = sorted(json.dumps(c.to_dict(), sort_keys=True) for c in plan.removed)
    grouped = any(c.kind == "mlp_channels" for c in plan.removed)
    return {
        "fingerprint": fingerprint(choice), "dtype": str(parameter.dtype), "device": parameter.device.type,
        "removed": removed,
        "channel_group_size": catalogue(choice, plan.channel_group_size).channel_group_size if grouped else None,
        "channel_reorder": plan.channel_reorder if grouped else None,
    }


def accuracy(choice: ModelChoice, plan: Plan, tasks: list[str], limit: int, seed: int = 0,
             compute: bool = False, progress=None) -> dict | None:
    """Zero-shot accuracy of ``plan`` on ``limit`` documents per task (``AccuracyReport.to_dict``).

    Without ``compute``: the stored result or None. With it: measured now (lm-eval's per-document
    scores are cached too, so a dense run is scored once) and stored."""
    from shedder.evaluation import evaluate_accuracy

    key = {**plan_identity(choice, plan), "tasks": sorted(tasks), "limit": limit, "seed": seed, "version": 1}
    if not compute:
        return result_cache.load("dashboard-accuracy", key)
    model, tokenizer = loaded(choice)
    with model_lock(model):  # it fingerprints the model outside its masks
        report = evaluate_accuracy(model, tokenizer, tasks, plan, limit=limit, seed=seed, progress=progress)
    result = report.to_dict()
    result_cache.save("dashboard-accuracy", key, result)
    return result


def _timing(record: dict, new_tokens: int) -> dict:
    """Time to first token plus the remaining tokens at the measured batch-1 decode rate."""
    ttft = record["ttft_ms"]["median"]
    rate = record["decode"]["1"]["generate"]["tokens_per_s"]["median"]
    return {"total_ms": ttft + 1000 * (new_tokens - 1) / rate, "ttft_ms": ttft, "tokens_per_s": rate,
            "params": record["params"]}


def latency(choice: ModelChoice, plan: Plan, prompt_len: int, new_tokens: int, compute: bool = False,
            progress=None) -> dict | None:
    """Time of a ``prompt_len``-token prefill plus ``new_tokens`` greedy tokens at batch 1 (time to first
    token, then the rest at the measured decode rate) of the physically extracted model (the loaded
    model itself for an empty plan), with the dense model timed alongside; measured by
    `shedder.latency.benchmark` (medians of 5 runs after a warm-up).

    Without ``compute``: the stored result or None. With it: measured now (the extractor's
    ShedderError, e.g. for kinds it cannot extract yet, reaches the caller) and stored."""
    from shedder.latency import BenchSettings, benchmark

    key = {**plan_identity(choice, plan), "prompt_len": prompt_len, "new_tokens": new_tokens, "version": 1}
    if not compute:
        return result_cache.load("dashboard-latency", key)
    model, tokenizer = loaded(choice)
    settings = BenchSettings(prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=(1,), repeats=5, warmup=1,
                             static_loop=False)
    with model_lock(model):  # extraction copies weights: never while another session has them masked
        report = benchmark(model, tokenizer, plan if plan.removed else None, settings,
                           progress=progress or (lambda _: None))
    dense = _timing(report["dense"], new_tokens)
    result = {**_timing(report["extracted"], new_tokens), "dense": dense} if plan.removed else {**dense, "dense": dense}
    result["speedup"] = dense["total_ms"] / result["total_ms"]
    result["device"] = report["environment"]["device_name"]
    result_cache.save("dashboard-latency", key, result)
    if plan.removed:  # the dense run is a measurement of the empty plan too
        dense_key = {**plan_identity(choice, Plan()), **{k: key[k] for k in ("prompt_len", "new_tokens", "version")}}
        result_cache.save("dashboard-latency", dense_key, {**dense, "dense": dense, "speedup": 1.0,
                                                           "device": result["device"]})
    return result
