"""Long work off the page's thread (shedder.jobs), the growing sensitivity map, measurements that refine, per-token
loss, the guided tour's shipped results, and workspaces: on tiny models built here."""
import json
import threading
import time

import pytest
import torch

from shedder import jobs
from shedder.measurement.calibration import Windows
from shedder.measurement.evaluator import EvalSettings
from shedder.model.identity import model_fingerprint
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from tiny_models import build, token_ids


def windows(n: int = 6, length: int = 16) -> Windows:
    return Windows(token_ids(n, length, seed=3), "test", None)


def test_a_job_reports_progress_time_left_and_its_result():
    def work(job):
        for n in range(5):
            job.update(n, 5, "counting")
            time.sleep(0.05)
        job.update(5, 5, "counting")
        return "done"

    job = jobs.Job("count", work)
    time.sleep(0.12)
    assert job.running and job.phase == "counting" and 0 < job.done < 5
    assert job.seconds_left() is not None and "left" in job.describe()
    assert job.wait(10) and job.state == "done" and job.result == "done" and job.fraction == 1.0


def test_a_failing_job_says_why():
    def work(job):
        raise ValueError("no such thing")

    job = jobs.Job("fail", work)
    assert job.wait(10) and job.state == "failed" and "no such thing" in job.error


def test_cancel_stops_a_job_inside_a_forward_pass_within_seconds():
    model = build("mamba2")
    copy = jobs.private_copy(model)
    assert copy is not model and all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters()))
    started = threading.Event()

    def work(job):
        with jobs.guard(copy, job), torch.no_grad():
            while True:  # forever, unless the guard stops it
                started.set()
                copy(input_ids=token_ids(2, 64))

    job = jobs.Job("forever", work)
    assert started.wait(30)
    time.sleep(0.2)
    asked = time.perf_counter()
    job.cancel()
    assert job.wait(5), "a cancelled job must stop at its next layer"
    assert time.perf_counter() - asked < 5 and job.state == "cancelled"
    # the guard's hooks are gone: the copy computes as the model does
    with torch.no_grad():
        assert torch.equal(copy(input_ids=token_ids()).logits, model(input_ids=token_ids()).logits)


def test_a_job_pauses_while_foreground_work_runs():
    copy = jobs.private_copy(build("mamba2"))
    forwards = []

    def work(job):
        with jobs.guard(copy, job), torch.no_grad():
            while not job.cancelled():
                copy(input_ids=token_ids(1, 8))
                forwards.append(time.perf_counter())

    job = jobs.Job("busy", work)
    time.sleep(0.5)
    assert forwards, "the job runs"
    with jobs.foreground():
        time.sleep(0.3)  # the one forward in flight may finish
        during = len(forwards)
        time.sleep(1.0)
        assert len(forwards) <= during + 1 and jobs.foreground_active()
    time.sleep(0.5)
    assert len(forwards) > during + 1, "the job goes on after the foreground work"
    job.cancel()
    assert job.wait(10) and job.paused_s > 0.5


def test_the_sensitivity_map_grows_resumes_and_equals_score(tmp_path):
    from shedder.searching.scoring import score
    from shedder.searching.sensitivity_map import BATCH_SIZE, fill_map, load_map

    model = build("bamba")
    data = windows()
    fingerprint = model_fingerprint(model)
    empty = load_map(fingerprint, "test", 96, 16)
    assert empty.base_ppl is None and not empty.ppl
    blocks = model_components(model, ["block"])
    calls = []
    stop_after = 2
    fill_map(model, data, empty, blocks, progress=lambda d, t: calls.append((d, t)),
             should_stop=lambda: len(calls) >= stop_after)
    stored = load_map(fingerprint, "test", 96, 16)
    assert len(stored.ppl) == stop_after  # a stopped run keeps what it finished, on disk
    more = blocks + model_components(model, ["ssm"])
    calls.clear()
    fill_map(model, data, stored, more, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(more) - stop_after, len(more) - stop_after)  # only what was missing
    base, scores, _ = score(model, data, ["block", "ssm"], settings=EvalSettings(batch_size=BATCH_SIZE))
    final = load_map(fingerprint, "test", 96, 16)
    assert final.base_ppl == pytest.approx(base, rel=1e-9)
    mine = {(r["kind"], r["layer"]): r["ppl"] for r in final.scores(more)}
    assert mine == pytest.approx({(s.component.kind, s.component.layer): s.ppl for s in scores}, rel=1e-9)


def model_components(model, kinds):
    from shedder.removal.masks import catalogue_of

    return catalogue_of(model).components(kinds)


def test_latency_refines_round_by_round_and_ends_final():
    from shedder.measurement.refine import refining_latency

    model = build("mamba2")
    rounds, phases = [], []
    result = refining_latency(model, Plan.for_model(model, [Component("block", 1)]), prompt_len=8, new_tokens=2,
                              repeats=9, warmup=1, on_round=rounds.append, round_size=3, phase=phases.append)
    assert phases == ["extracting the plan", "warming up: dense model, run 1 of 1",
                      "warming up: extracted model, run 1 of 1", "timing pairs"]
    assert [r["speedup"]["runs"] for r in rounds] == [3, 6, 9]
    assert [r["final"] for r in rounds] == [False, False, True] and result is rounds[-1]
    assert result["extracted_ms"]["runs"] == 9 and result["ideal_speedup"] > 1


def test_live_latency_times_the_extracted_model_on_the_dense_models_device(monkeypatch):
    """Extraction builds on the CPU; on a GPU the live latency once timed a CPU copy against the GPU model."""
    import shedder.measurement.refine as refine

    moved, real = [], refine.extracted_model

    def spy(model, plan):
        small = real(model, plan)
        to = small.to
        small.to = lambda *args, **kwargs: moved.append(args[0] if args else kwargs.get("device")) or to(*args, **kwargs)
        return small

    monkeypatch.setattr(refine, "extracted_model", spy)
    model = build("mamba2")
    refine.refining_latency(model, Plan.for_model(model, [Component("block", 1)]), prompt_len=8, new_tokens=2,
                            repeats=3, warmup=0)
    assert moved == [next(model.parameters()).device]


def test_a_cancel_during_the_warm_up_acts_before_the_next_run(monkeypatch):
    """The warm-up runs (a first one may compile the GPU kernels for a long time) check for a cancel one by one."""
    import shedder.measurement.refine as refine

    runs = []
    monkeypatch.setattr(refine, "generate_exactly", lambda m, prompt, n: runs.append("warm-up"))
    monkeypatch.setattr(refine, "timed_generate", lambda m, prompt, n: runs.append("timed") or (0.1, 0.2))

    def cancel_after_one_run():
        if runs:
            raise RuntimeError("cancelled")

    model = build("mamba2")
    with pytest.raises(RuntimeError, match="cancelled"):
        refine.refining_latency(model, Plan.for_model(model, [Component("block", 1)]), prompt_len=8, new_tokens=2,
                                repeats=3, warmup=2, between_pairs=cancel_after_one_run)
    assert runs == ["warm-up"]


def test_subset_sizes_grow_to_the_limit_and_changed_documents_are_found():
    from shedder.measurement.refine import changed_documents, subset_sizes

    assert subset_sizes(100) == [10, 30, 100] and subset_sizes(5) == [5] and subset_sizes(20) == [10, 20]
    dense = {"tasks": {"piqa": {"paper_metric": "acc_norm", "per_doc": {"1": {"acc_norm": 1.0}, "4": {"acc_norm": 0.0},
                                                                        "7": {"acc_norm": 1.0}}}}}
    pruned = {"tasks": {"piqa": {"paper_metric": "acc_norm", "per_doc": {"1": {"acc_norm": 0.0}, "4": {"acc_norm": 1.0},
                                                                         "7": {"acc_norm": 1.0}}}}}
    assert [(r["doc"], r["dense"], r["pruned"]) for r in changed_documents(dense, pruned)] == [(1, 1.0, 0.0), (4, 0.0, 1.0)]


def test_token_losses_average_to_the_models_own_loss_and_change_with_a_removal():
    from shedder.measurement.token_loss import token_losses

    model = build("mamba2")
    ids = token_ids(1, 20)[0]
    losses = token_losses(model, ids)
    with torch.no_grad():
        own = model(input_ids=ids[None], labels=ids[None]).loss
    assert len(losses) == 19 and sum(losses) / 19 == pytest.approx(float(own), rel=1e-5)
    pruned = token_losses(model, ids, [Component("ssm", 0)])
    assert pruned != losses
    assert token_losses(model, ids) == losses  # the removal was undone


def test_the_tour_is_fresh_for_its_weights_recomputed_when_stale_and_seeds_the_map(tmp_path):
    from shedder.formats.tour import files_digest, load_tour, make_tour, removed_after, seed_sensitivity, write_tour
    from shedder.measurement.perplexity import PerplexitySetting
    from shedder.model.loading import load_model
    from shedder.searching.sensitivity_map import load_map
    from tiny_models import save_tiny

    folder = tmp_path / "tiny"
    save_tiny("mamba2", folder)
    model, tokenizer = load_model(str(folder))
    setting = PerplexitySetting("wiki-test", 512, 64)
    assert load_tour(folder) is None  # nothing shipped yet
    tour = make_tour(model, tokenizer, folder, setting, steps=2, save_to_cache=False)
    write_tour(tour, folder)
    assert load_tour(folder) == json.loads(json.dumps(tour))
    scores = sorted(tour["sensitivity"]["scores"], key=lambda r: r["ppl"])
    first = tour["search"]["steps"][0]
    assert (first["removed"]["kind"], first["removed"]["layer"]) == (scores[0]["kind"], scores[0]["layer"])
    assert first["ppl"] == pytest.approx(scores[0]["ppl"], rel=1e-9)  # the search's first pick: the lightest cell
    assert len(removed_after(tour, 2)) == 2
    seed_sensitivity(tour)
    seeded = load_map(tour["fingerprint"], "wiki-test", 512, 64)
    assert seeded.base_ppl == tour["sensitivity"]["base_ppl"] and len(seeded.ppl) == len(tour["sensitivity"]["scores"])

    with torch.no_grad():  # new weights: the shipped file is stale
        next(model.parameters()).add_(0.01)
    model.save_pretrained(folder)
    assert files_digest(folder) != tour["files"] and load_tour(folder) is None
    again = make_tour(model, tokenizer, folder, setting, steps=2)
    assert again["fingerprint"] != tour["fingerprint"] and load_tour(folder) == json.loads(json.dumps(again))


def test_saved_plans_belong_to_a_workspace():
    from app import store

    model = build("mamba2")
    fingerprint = model_fingerprint(model)
    plan = Plan.for_model(model, [Component("block", 0)])
    store.save_plan(fingerprint, "mine", plan, workspace="session-aaaa")
    store.save_plan(fingerprint, "theirs", plan, workspace="session-bbbb")
    store.save_plan(fingerprint, "ours", plan, workspace="lab")
    assert list(store.saved_plans(fingerprint, "session-aaaa")) == ["mine"]
    assert list(store.saved_plans(fingerprint, "lab")) == ["ours"]
    store.delete_plan(fingerprint, "theirs", workspace="session-aaaa")  # not in this workspace: nothing happens
    assert list(store.saved_plans(fingerprint, "session-bbbb")) == ["theirs"]
    assert store.search_root(fingerprint, "lab") != store.search_root(fingerprint, "session-aaaa")
    assert store.workspace_dir(store.SHARED) == store.workspace_dir(None)  # outside a session: the shared one
