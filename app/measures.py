"""Measurements of a plan that take long (accuracy, latency): measured on demand through the library,
kept on disk with `shedder.formats.result_cache`, and looked up without measuring by every page that shows them
(Playground, Export & compare, the Search page's Pareto chart)."""
from __future__ import annotations

import json

import streamlit as st

from shedder.errors import ShedderError
from shedder.formats import result_cache
from shedder.plan import Plan

from .state import ModelChoice, catalogue, fingerprint, loaded

# 100 documents per task: a paired difference against dense then has a standard error of about 0.03 (20 gave
# about 0.10); still a few minutes on a CPU (the demo model scores about 1.5 documents per second on 2 cores).
ACCURACY_DEFAULTS = {"tasks": ["arc_easy", "piqa"], "limit": 100, "seed": 0}
# A short prompt and a few new tokens, dense and extracted timed in turns 21 times each: quick enough to
# measure on demand on a CPU, and enough runs for a median with its interquartile range.
LATENCY_DEFAULTS = {"prompt_len": 64, "new_tokens": 8}
LATENCY_REPEATS, LATENCY_WARMUP = 21, 2


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
    """Zero-shot accuracy of ``plan`` on ``limit`` documents per task (``AccuracyReport.to_dict`` with the
    per-document scores, so that a comparison with dense is paired).

    Without ``compute``: the stored result or None. With it: measured now (lm-eval's per-document
    scores are cached too, so a dense run is scored once) and stored."""
    from shedder.measurement.evaluation import evaluate_accuracy

    key = {**plan_identity(choice, plan), "tasks": sorted(tasks), "limit": limit, "seed": seed, "version": 2}
    if not compute:
        return result_cache.load("dashboard-accuracy", key)
    from shedder.jobs import private_copy

    model, tokenizer = loaded(choice)
    copy = private_copy(model)  # its own copy: other sessions' toggles never wait for the lock meanwhile
    report = evaluate_accuracy(copy, tokenizer, tasks, plan, limit=limit, seed=seed, progress=progress)
    result = report.to_dict(with_docs=True)
    result_cache.save("dashboard-accuracy", key, result)
    return result


def against_dense(result: dict, dense: dict) -> dict:
    """Per task and for the average: ``result`` minus ``dense`` on the same documents (``PairedDifference``)."""
    from shedder.measurement.evaluation import AccuracyReport

    return AccuracyReport.from_dict(result).paired_against(AccuracyReport.from_dict(dense))


def latency(choice: ModelChoice, plan: Plan, prompt_len: int, new_tokens: int, compute: bool = False,
            progress=None) -> dict | None:
    """The newest latency measurement of ``plan`` (``shedder.speed.latency.compare_latency``: dense and extracted
    timed in turns, medians with their spread, the ideal speedup and notes), with ``history``: every
    measurement of this plan so far, oldest first. ``total_ms`` is the extracted model's median.

    Without ``compute``: the stored result or None. With it: measured now (the extractor's ShedderError,
    e.g. for kinds it cannot extract yet, reaches the caller), added to the history and stored."""
    import datetime

    from shedder.speed.latency import compare_latency

    key = {**plan_identity(choice, plan), "prompt_len": prompt_len, "new_tokens": new_tokens, "version": 2}
    stored = result_cache.load("dashboard-latency", key)
    if not compute:
        return stored
    from shedder.jobs import private_copy

    copy = private_copy(loaded(choice)[0])  # taken under the lock: never weights another session has masked
    measured = compare_latency(copy, plan, prompt_len, new_tokens, LATENCY_REPEATS, LATENCY_WARMUP, progress=progress)
    measured["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    history = [*(stored or {}).get("history", []), {k: v for k, v in measured.items() if k != "history"}]
    result = {**measured, "total_ms": measured["extracted_ms"]["median"], "history": history}
    result_cache.save("dashboard-latency", key, result)
    return result


def model_source(choice: ModelChoice) -> dict:
    """Where the loaded model comes from, as a person would find it again: a zoo name, a folder or a hub id."""
    from pathlib import Path

    from shedder.model.loading import zoo_names

    if choice.spec in zoo_names():
        where = {"zoo": choice.spec}
    elif Path(choice.spec).expanduser().exists():
        where = {"path": str(Path(choice.spec).expanduser().resolve())}
    else:
        where = {"hub_id": choice.spec}
    return {**where, "dtype": choice.dtype, "device": choice.device}


def plan_file(choice: ModelChoice, plan: Plan, setting) -> str:
    """The plan as a JSON file that says what it is (under "about"): the model (zoo name, path or hub id),
    the evaluation setting and what was measured for it: perplexity, accuracy with standard errors and its
    paired change against dense, latency with its spread (each where measured)."""
    from .state import plan_perplexity

    measured: dict = {"perplexity": {"value": round(plan_perplexity(choice, plan, setting), 4),
                                     "dense": round(plan_perplexity(choice, Plan(), setting), 4),
                                     "on": setting.to_dict(), "described": setting.describe()}}
    acc_settings = accuracy_settings()
    acc, dense_acc = accuracy(choice, plan, **acc_settings), accuracy(choice, Plan(), **acc_settings)
    if acc is not None and dense_acc is not None:
        paired = against_dense(acc, dense_acc)
        measured["accuracy"] = {"documents_per_task": acc_settings["limit"], "seed": acc_settings["seed"],
                                "tasks": {task: {**d.to_dict(), "value_stderr": acc["tasks"][task]["stderr"].get(
                                    d.metric)} if task != "average" else d.to_dict() for task, d in paired.items()}}
    timed = latency(choice, plan, **latency_settings())
    if timed is not None:
        measured["latency"] = {k: timed[k] for k in ("prompt_len", "new_tokens", "repeats", "speedup", "extracted_ms",
                                                     "dense_ms", "ideal_speedup", "notes", "device", "when")}
        measured["latency"]["measurements"] = len(timed["history"])
    about = {"model": {**model_source(choice), "model_type": plan.model_type, "fingerprint": plan.fingerprint},
             "evaluation": setting.to_dict(), "measured": measured}
    return json.dumps({**plan.to_dict(), "about": about}, indent=1)


# --- live: accuracy and latency refine in the background after every change of the plan ------------------
def _latency_key(choice: ModelChoice, plan: Plan, prompt_len: int, new_tokens: int) -> dict:
    return {**plan_identity(choice, plan), "prompt_len": prompt_len, "new_tokens": new_tokens, "version": 2}


def _accuracy_key(choice: ModelChoice, plan: Plan, tasks: list[str], limit: int, seed: int) -> dict:
    return {**plan_identity(choice, plan), "tasks": sorted(tasks), "limit": limit, "seed": seed, "version": 2}


def _store_latency(key: dict, measured: dict) -> dict:
    """Add a finished latency measurement to the plan's history (as :func:`latency` with ``compute`` does)."""
    import datetime

    stored = result_cache.load("dashboard-latency", key)
    measured = {k: v for k, v in measured.items() if k not in ("final", "target_repeats")}
    measured["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    history = [*(stored or {}).get("history", []), {k: v for k, v in measured.items() if k != "history"}]
    result = {**measured, "total_ms": measured["extracted_ms"]["median"], "history": history}
    result_cache.save("dashboard-latency", key, result)
    return result


def refine_key(choice: ModelChoice, plan: Plan) -> str:
    """What the live measurements of ``plan`` depend on: a new key means new measurements."""
    return json.dumps({**plan_identity(choice, plan), "accuracy": accuracy_settings(), "latency": latency_settings()},
                      sort_keys=True)


def start_refining(choice: ModelChoice, plan: Plan, want_latency: bool, want_accuracy: bool):
    """This session's live job for ``plan`` (any earlier one is cancelled): on its own copy of the model, first
    the latency (pairs accumulating, pausing for foreground work between pairs), then the accuracy of the dense
    and pruned models on growing document subsets. Partial results are published as they come (``job.partial``:
    {"latency": ..., "accuracy": {"docs": n, "dense": ..., "pruned": ...}}); the final ones are stored where
    :func:`latency` and :func:`accuracy` find them."""
    from shedder.jobs import guard, private_copy, wait_for_foreground
    from shedder.measurement.refine import refining_accuracy, refining_latency

    from . import jobs

    model, tokenizer = loaded(choice)
    lat, acc = latency_settings(), accuracy_settings()
    lat_key = _latency_key(choice, plan, lat["prompt_len"], lat["new_tokens"])
    acc_keys = {name: _accuracy_key(choice, p, acc["tasks"], acc["limit"], acc["seed"])
                for name, p in (("dense", Plan()), ("pruned", plan))}
    partial: dict = {}

    def work(job):
        job.update(0, 0, "copying the model")
        copy = private_copy(model)
        if want_latency:
            def phase(text):
                job.update(0, LATENCY_REPEATS if text == "timing pairs" else 0, f"latency: {text}")

            def between_pairs():
                job.check()
                job.paused_s += wait_for_foreground(job.cancelled)
                job.check()

            def on_round(result):
                partial["latency"] = result
                job.publish(dict(partial))
                job.update(result["repeats"], LATENCY_REPEATS, "latency: timing pairs")

            try:
                measured = refining_latency(copy, plan, lat["prompt_len"], lat["new_tokens"], LATENCY_REPEATS,
                                            LATENCY_WARMUP, on_round=on_round, between_pairs=between_pairs, round_size=1,
                                            phase=phase)
            except ShedderError as exc:  # e.g. a plan the extractor refuses: say why, and go on to accuracy
                partial.pop("latency", None)
                partial["latency_error"] = str(exc)
            else:
                partial["latency"] = {**_store_latency(lat_key, measured), "final": True}
            job.publish(dict(partial))
        if want_accuracy:
            def on_docs(n, dense, pruned):
                partial["accuracy"] = {"docs": n, "final": n == acc["limit"], "dense": dense, "pruned": pruned}
                job.publish(dict(partial))
                if n == acc["limit"]:
                    result_cache.save("dashboard-accuracy", acc_keys["dense"], dense)
                    result_cache.save("dashboard-accuracy", acc_keys["pruned"], pruned)

            with guard(copy, job):
                refining_accuracy(copy, tokenizer, acc["tasks"], plan, acc["limit"], acc["seed"], on_round=on_docs,
                                  progress=lambda d, t, phase: job.update(d, t, f"accuracy: {phase}"))
        return partial

    job = jobs.start("refine", f"Refining {len(plan.removed)} removed", work)
    job.key = refine_key(choice, plan)
    return job
