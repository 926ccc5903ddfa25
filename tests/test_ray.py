"""The Ray executor gives the local answer: a local Ray instance with 2 CPU workers and a tiny model."""
import dataclasses
import json
import logging
import socket
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from shedder.cli import main  # noqa: E402
from shedder.errors import ShedderError  # noqa: E402
from shedder.measurement.calibration import cut_windows, tokenize_text  # noqa: E402
from shedder.measurement.evaluator import EvalSettings  # noqa: E402
from shedder.model.loading import load_model  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402
from shedder.searching.executor import RayOptions  # noqa: E402
from shedder.searching.ray_executor import RayExecutor, check_reachable  # noqa: E402
from shedder.searching.ray_jobs import SearchJob, search_progress, submit_search  # noqa: E402
from shedder.searching.scoring import score  # noqa: E402
from shedder.searching.search import parse_stages, search  # noqa: E402
from tiny_models import SAMPLE_TEXT, build, tiny_tokenizer, train_briefly  # noqa: E402

SEQ_LEN, N_WINDOWS, BATCH = 16, 6, 2
SETTINGS = EvalSettings(batch_size=BATCH, group_layers=True)  # candidates together, as on a GPU


@pytest.fixture(scope="module")
def cluster():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each worker; tiny models only lose time to threads on a busy CPU
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 << 20,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A briefly trained 8-layer Mamba-2 saved as a folder (what every worker loads) and its windows."""
    tokenizer = tiny_tokenizer()
    windows = cut_windows(tokenize_text(SAMPLE_TEXT, tokenizer, use_cache=False), SEQ_LEN, SEQ_LEN * N_WINDOWS,
                          source="sample")
    model = train_briefly(build("mamba2", num_hidden_layers=8), windows.ids, steps=12, lr=1e-2)
    folder = tmp_path_factory.mktemp("trained-mamba2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "calib.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    loaded, _ = load_model(str(folder), "float32", "cpu")
    return folder, loaded, windows


@pytest.fixture(scope="module")
def pool(cluster, checkpoint):
    """Two workers kept open across the tests below (their start is most of the time)."""
    folder, model, windows = checkpoint
    executor = RayExecutor(RayOptions(model=str(folder), device="cpu", workers=2), model, windows, SETTINGS)
    yield executor
    executor.close()


def plan_and_ppls(record):
    return record["removed"], [s["ppl"] for s in record["steps"]]


def test_a_submitted_search_runs_detached_and_reports_progress(cluster, checkpoint, tmp_path):
    # before the tests that keep a pool of workers open: the search needs a CPU of the cluster for its own
    folder, model, windows = checkpoint
    out = tmp_path / "job"
    job = SearchJob(model=str(folder), stages="block,ssm:2", out_dir=str(out), calib=str(folder / "calib.txt"),
                    tokens=SEQ_LEN * N_WINDOWS, seq_len=SEQ_LEN, batch_size=BATCH, device="cpu", workers=1)
    name = submit_search(job, address=None)
    assert name.startswith("shedder-search-")
    local = search(model, windows, parse_stages("block,ssm:2"), settings=SETTINGS)  # while it runs
    deadline, progress = time.time() + 120, {}
    while time.time() < deadline:
        progress = search_progress(out)
        if progress["state"] in ("finished", "failed", "stopped"):
            break
        time.sleep(0.5)
    assert progress["state"] == "finished", progress
    assert [s["removed"] for s in progress["steps"]] == local["removed"]
    assert [s["ppl"] for s in progress["steps"]] == [s["ppl"] for s in local["steps"]]
    assert progress["steps_done"] == progress["steps_total"] == 2
    assert json.loads((out / "plan.json").read_text())["removed"] == local["removed"]
    while any(a["name"] == name for a in ray.util.list_named_actors(all_namespaces=True)):
        time.sleep(0.2)  # the detached search exits by itself, freeing its CPUs


def test_cli_search_on_ray(cluster, checkpoint, tmp_path, capsys):
    folder, model, windows = checkpoint
    common = ["search", "--model", str(folder), "--targets", "block,ssm", "--steps", "2", "--device", "cpu",
              "--calib", str(folder / "calib.txt"), "--tokens", str(SEQ_LEN * N_WINDOWS), "--seq-len", str(SEQ_LEN),
              "--batch-size", str(BATCH)]
    assert main([*common, "--workers", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--gpus-per-worker need --executor ray" in capsys.readouterr().err
    assert main([*common, "--executor", "ray", "--workers", "1", "--out", str(tmp_path / "run")]) == 0
    local = search(model, windows, parse_stages("block,ssm:2"), settings=SETTINGS)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["removed"] == local["removed"]


@pytest.mark.parametrize("split", ["windows", "candidates"])
def test_score_on_ray_equals_local(pool, checkpoint, split):
    folder, model, windows = checkpoint
    pool.options = dataclasses.replace(pool.options, split=split)
    base = [Component("ssm", 0)]
    local = score(model, windows, ["block", "ssm"], base, settings=SETTINGS)
    remote = score(model, windows, ["block", "ssm"], base, settings=SETTINGS, executor=pool)
    assert remote[0] == local[0] and remote[1] == local[1]  # base perplexity and every score, exactly


def test_search_on_ray_gives_the_local_plan_even_when_a_worker_dies(pool, checkpoint, caplog):
    folder, model, windows = checkpoint
    stages = parse_stages("block,ssm:3")
    local = search(model, windows, stages, settings=SETTINGS)
    killed = []

    def kill_one_worker(done, total):  # mid-step: the dead worker's queued candidates must re-run elsewhere
        if done == 3 and not killed:
            ray.kill(pool.workers[0])
            killed.append(done)

    with caplog.at_level(logging.WARNING, logger="shedder.searching.ray_executor"):
        remote = search(model, windows, stages, settings=SETTINGS, on_candidate=kill_one_worker, executor=pool)
    assert killed and pool.replacements == 1 and "died" in caplog.text
    assert plan_and_ppls(remote) == plan_and_ppls(local)
    for ours, theirs in zip(remote["steps"], local["steps"]):
        assert len(ours["candidates"]) == len(theirs["candidates"])
        exact = {(c["kind"], c["layer"]): c["ppl"] for c in theirs["candidates"]}
        for c in ours["candidates"]:  # complete ones are bit-identical; stopped ones have a lower bound only
            if c["ppl"] is not None:
                assert c["ppl"] == exact[(c["kind"], c["layer"])]
            else:
                assert c["ppl_lower_bound"] > ours["ppl"]
    assert any(c["ppl"] is None for s in remote["steps"] for c in s["candidates"]), "early stop never triggered"


def test_workers_that_run_several_batches_per_forward_give_the_local_plan(pool, checkpoint):
    """With layer groups on (as on a GPU; the pool's settings) a worker screens a layer's candidates together and
    finishes a candidate in forwards of several window batches, still adding and checking the bound batch by batch:
    the plan and perplexities of one-at-a-time evaluation in one process, exactly."""
    folder, model, windows = checkpoint
    stages = parse_stages("block,ssm:3")
    local = search(model, windows, stages, settings=EvalSettings(batch_size=BATCH, group_layers=False))
    remote = search(model, windows, stages, settings=SETTINGS, executor=pool)
    assert SETTINGS.group_layers and plan_and_ppls(remote) == plan_and_ppls(local)


def test_a_search_stopped_mid_step_resumes_on_ray(pool, checkpoint, tmp_path):
    folder, model, windows = checkpoint
    stages = parse_stages("block:2;ssm:2")
    whole = search(model, windows, stages, settings=SETTINGS)
    evaluated = []  # steps 0 and 1 have 8 and 7 candidates: stop two candidates into step 2
    search(model, windows, stages, tmp_path / "run", settings=SETTINGS, executor=pool,
           on_candidate=lambda done, total: evaluated.append(done), should_stop=lambda: len(evaluated) >= 8 + 7 + 2)
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())["steps"]) == 2
    resumed_steps = []
    resumed = search(model, windows, stages, tmp_path / "run", settings=SETTINGS, on_step=resumed_steps.append,
                     executor=pool)
    assert [s["step"] for s in resumed_steps] == [2, 3]  # finished steps are not recomputed
    assert plan_and_ppls(resumed) == plan_and_ppls(whole)
    assert sorted(p.name for p in (tmp_path / "run" / "steps").iterdir()) == [f"step_00{i}.json" for i in range(4)]


def test_an_open_executor_refuses_other_settings(pool, checkpoint):
    folder, model, windows = checkpoint
    with pytest.raises(ShedderError, match="other batch_size"):
        search(model, windows, parse_stages("block:1"), settings=EvalSettings(batch_size=BATCH + 1), executor=pool)


def test_a_dead_or_malformed_address_fails_at_once():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.time()
    with pytest.raises(ShedderError, match=f"Nothing answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.time() - started < 5
    with pytest.raises(ShedderError, match="should be auto, HOST:PORT"):
        check_reachable("headnode")


def test_gpus_per_worker_needs_a_cluster_with_gpus(cluster, checkpoint):
    folder, model, windows = checkpoint
    with pytest.raises(ShedderError, match="needs GPUs, and the Ray cluster has none"):
        RayExecutor(RayOptions(model=str(folder), device="auto", workers=1, gpus_per_worker=2), model, windows,
                    SETTINGS)
