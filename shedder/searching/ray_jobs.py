"""Searches submitted to a running Ray cluster, to follow from the dashboard (or any other process).

:func:`submit_search` starts the search in a detached Ray actor: it goes on when the submitting
process exits, spreads its candidates over Ray workers like ``search --executor ray``, and writes its
usual output directory (``log.json``, ``steps/``, ``plan.json``) plus ``job.json`` (state, error).
:func:`search_progress` reads those files back, so the directory must be one both the cluster and the
reader see (the same machine, or a shared file system). :func:`stop_search` asks the search to stop
after the candidate in progress; running the same job again resumes it from its log.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from ..errors import ShedderError
from ..paths import write_text_atomic
from .executor import RayOptions
from .ray_executor import connect, runtime_env, worker_dtype

NAMESPACE = "shedder"
JOB_FILE = "job.json"


@dataclass
class SearchJob:
    """What the CLI's ``search`` takes, as one record."""

    model: str
    stages: str  # e.g. "block,ssm:8" or "block,attn,mlp:3;ssm:18"
    out_dir: str
    calib: str = "wiki"
    tokens: int | None = 65536
    seq_len: int = 512
    seed: int | None = None
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    channel_group_size: int | None = None
    channel_reorder: str | None = None
    early_stop: bool = True
    workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: int = 1


def _write_state(out: Path, **fields) -> None:
    path = out / JOB_FILE
    state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    state.update(fields, updated=time.time())
    write_text_atomic(path, json.dumps(state, indent=1) + "\n")


@ray.remote(num_cpus=0, max_concurrency=2)
class SearchRunner:
    """Runs one search to its end on the cluster (detached), then exits."""

    def __init__(self, job: SearchJob, name: str):
        self.job, self.name, self.stopping = job, name, False

    def request_stop(self) -> None:
        self.stopping = True

    def run(self) -> None:
        from ..measurement.calibration import calibration_windows
        from ..measurement.evaluator import EvalSettings
        from ..model.loading import load_model
        from ..plan import Plan
        from .search import parse_stages, search

        job, out = self.job, Path(self.job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stages = parse_stages(job.stages)
        _write_state(out, name=self.name, state="running", error=None, job=asdict(job), started=time.time(),
                     steps_total=sum(s.steps for s in stages))
        try:
            model, tokenizer = load_model(job.model, worker_dtype(job.dtype, job.device), "cpu", job.trust_remote_code)
            windows = calibration_windows(job.calib, tokenizer, job.seq_len, job.tokens, job.seed)
            options = RayOptions(model=job.model, device=job.device, trust_remote_code=job.trust_remote_code,
                                 workers=job.workers, cpus_per_worker=job.cpus_per_worker,
                                 gpus_per_worker=job.gpus_per_worker)
            grouping = Plan(channel_group_size=job.channel_group_size, channel_reorder=job.channel_reorder)
            record = search(model, windows, stages, out, EvalSettings(batch_size=job.batch_size), grouping,
                            early_stop=job.early_stop,
                            should_stop=lambda: self.stopping, executor=options)
            _write_state(out, state="finished" if "removed" in record else "stopped", ended=time.time())
        except Exception as exc:  # the reader learns why from job.json
            _write_state(out, state="failed", error=f"{type(exc).__name__}: {exc}", ended=time.time())
        ray.actor.exit_actor()


def submit_search(job: SearchJob, address: str | None = "auto") -> str:
    """Start ``job`` on the Ray cluster at ``address`` (``auto``: the one running on this machine);
    returns the search's name, for :func:`stop_search`. Progress: ``search_progress(job.out_dir)``."""
    from .search import parse_stages

    parse_stages(job.stages)  # bad input fails here, not on the cluster
    connect(address)
    name = f"shedder-search-{uuid.uuid4().hex[:8]}"
    runner = SearchRunner.options(name=name, namespace=NAMESPACE, lifetime="detached",
                                  runtime_env=runtime_env()).remote(job, name)
    runner.run.remote()
    return name


def stop_search(name: str, address: str | None = "auto") -> None:
    """Ask a submitted search to stop after its current candidate (its finished steps are kept)."""
    connect(address)
    try:
        ray.get_actor(name, namespace=NAMESPACE).request_stop.remote()
    except ValueError as exc:
        raise ShedderError(f"No running search named {name!r} on this Ray cluster (finished or never started).") from exc


def search_progress(out_dir: str | Path) -> dict:
    """State of a submitted search from its files: ``state`` (``pending``, ``running``, ``finished``,
    ``stopped``, ``failed``), ``error``, ``steps_done``, ``steps_total``, the searched weights'
    ``fingerprint`` (once started) and per finished step its pick, stage, perplexity and seconds."""
    out = Path(out_dir)
    job = json.loads((out / JOB_FILE).read_text(encoding="utf-8")) if (out / JOB_FILE).is_file() else {}
    log_path = out / "log.json"
    log = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {"steps": []}
    steps = log["steps"]
    return {
        "state": job.get("state", "pending"), "error": job.get("error"), "name": job.get("name"),
        "steps_done": len(steps), "steps_total": job.get("steps_total"),
        "fingerprint": log.get("settings", {}).get("fingerprint"),
        "steps": [{"step": s["step"], "removed": s["removed"], "stage": s["stage"], "ppl": s["ppl"],
                   "seconds": s["seconds"]} for s in steps],
        "plan": str(out / "plan.json") if (out / "plan.json").is_file() else None,
    }
