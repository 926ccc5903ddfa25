"""The Search page's searches on a Ray cluster: submit, follow, stop (no streamlit in here).

A submitted search runs in a detached Ray actor (:mod:`shedder.searching.ray_jobs`) that writes the search's
usual folder (``log.json``, ``steps/``, ``plan.json``) plus ``job.json``. Next to them this module keeps
``submitted.json`` (the actor's name, the cluster's address, a stop request), so that a page opened
later (a page switch, a reload, another session) finds the search, checks that the cluster still runs
it, and can stop it. Ray stays an optional dependency: nothing here imports it before it is needed.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shedder.errors import ShedderError
from shedder.paths import write_text_atomic

SUBMITTED_FILE = "submitted.json"
ACTIVE = ("pending", "running")
BUILT_IN_TEXTS = ("wiki", "wiki-test")

_lock = threading.Lock()  # one connection per dashboard process, shared by its sessions
_connected: str | None = None  # the address this process joined


def ray_missing() -> str | None:
    """Why searches cannot go to a cluster here, or None when they can."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed in the dashboard's environment (`pip install ray`, see requirements.txt)."
    return None


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the one started on this machine), leaving another one first."""
    global _connected
    address = address.strip()
    if not address:
        raise ShedderError("Give the Ray cluster's address: auto (started on this machine), HOST:PORT or ray://HOST:PORT.")
    import ray

    from shedder.searching.ray_executor import check_reachable, connect as join

    with _lock:
        if ray.is_initialized() and _connected == address:
            return
        check_reachable(address)  # before leaving the cluster joined now
        if ray.is_initialized():
            ray.shutdown()  # a detached search goes on without us
        _connected = None
        join(address)
        _connected = address


def dtype_name(model) -> str:
    """The name (as in ``shedder.model.loading.DTYPES``) of the dtype the dashboard's model is loaded in."""
    from shedder.model.loading import DTYPES

    dtype = next(model.parameters()).dtype
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ShedderError(f"The model is loaded in {dtype}; a cluster search needs one of {', '.join(DTYPES)}.")


def stages_text(stages) -> str:
    return ";".join(f"{','.join(s.targets)}:{s.steps}" for s in stages)


def make_job(spec: str, dtype: str, trust_remote_code: bool, stages, out_dir: Path, calib: str, tokens: int,
             seq_len: int, batch_size: int, channel_group_size: int | None, channel_reorder: str | None,
             workers: int, device: str, gpus_per_worker: int = 1):
    """The SearchJob for the Search page's settings: the same search a run in the dashboard makes."""
    from shedder.searching.ray_jobs import SearchJob

    if calib not in BUILT_IN_TEXTS and not Path(calib).is_absolute():
        # the search log records the text as given; the cluster's processes do not share our directory
        raise ShedderError(f"Give the calibration file's absolute path for a cluster search (not {calib!r}).")
    local = Path(spec).expanduser()
    model = str(local.resolve()) if local.exists() else spec  # a folder: absolute; a zoo name or hub id: as is
    return SearchJob(model=model, stages=stages_text(stages), out_dir=str(out_dir), calib=calib, tokens=tokens,
                     seq_len=seq_len, batch_size=batch_size, dtype=dtype, device=device,
                     trust_remote_code=trust_remote_code, channel_group_size=channel_group_size,
                     channel_reorder=channel_reorder, workers=workers,
                     gpus_per_worker=gpus_per_worker)


def submit(job, address: str) -> str:
    """Start ``job`` on the cluster at ``address``; returns the search's name."""
    from shedder.searching.ray_jobs import submit_search
    from shedder.searching.search import parse_stages

    connect(address)
    try:
        name = submit_search(job, address)
    except ShedderError:
        raise
    except Exception as exc:  # whatever Ray says, the page shows it as an error
        raise ShedderError(f"The Ray cluster at {address} did not take the search: {type(exc).__name__}: {exc}") from exc
    _write_submitted(Path(job.out_dir), name=name, address=address, submitted=time.time(),
                     steps_total=sum(s.steps for s in parse_stages(job.stages)), stop_requested=None)
    return name


def _write_submitted(out: Path, **fields) -> None:
    record = {**_read_submitted(out), **fields}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SUBMITTED_FILE, json.dumps(record, indent=1) + "\n")


def _read_submitted(out: Path) -> dict:
    path = out / SUBMITTED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def has_job(out: Path) -> bool:
    """Whether a search was ever submitted to a cluster with this folder (cheap: no Ray import)."""
    return (out / SUBMITTED_FILE).is_file() or (out / "job.json").is_file()


@dataclass
class ClusterSearch:
    """A submitted search as the page shows it."""

    out_dir: Path
    state: str  # pending, running, finished, stopped, failed, or lost (the cluster no longer runs it)
    name: str | None
    address: str | None
    error: str | None
    steps_done: int
    steps_total: int | None
    stopping: bool
    fingerprint: str | None  # of the weights the cluster searches (from the log), once it has started
    trail: list[dict]  # per finished step: step, ppl, stage, label

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def follow(out_dir: Path, check_alive: bool = True) -> ClusterSearch:
    """The state of the search submitted with ``out_dir``, from its files and (``check_alive``) the cluster."""
    from shedder.searching.ray_jobs import search_progress

    from app.figures import trajectory_point

    out = Path(out_dir)
    mine = _read_submitted(out)
    progress = search_progress(out)
    if mine.get("name") and progress["name"] != mine["name"]:
        progress.update(state="pending", error=None)  # job.json is an earlier search's, ours has not started yet
    search = ClusterSearch(out, progress["state"], mine.get("name") or progress["name"], mine.get("address"),
                           progress["error"], progress["steps_done"], progress["steps_total"] or mine.get("steps_total"),
                           bool(mine.get("stop_requested")), progress["fingerprint"],
                           [trajectory_point(step) for step in progress["steps"]])
    gone = _why_not_running(search) if search.active and check_alive and search.address else None
    if gone:
        again = search_progress(out)  # it may have ended between the two reads
        if again["name"] == search.name and again["state"] not in ACTIVE:
            return follow(out, check_alive=False)
        search.state = "lost"
        search.error = f"{gone} Its finished steps are kept: submit it again, or run it here, to resume."
    return search


def _why_not_running(search: ClusterSearch) -> str | None:
    """None while the cluster still has the search's actor; otherwise why it cannot be followed."""
    import ray

    from shedder.searching.ray_jobs import NAMESPACE

    try:
        connect(search.address)
    except ShedderError as exc:
        return f"The Ray cluster that ran this search cannot be reached: {exc}"
    try:
        ray.get_actor(search.name, namespace=NAMESPACE)
    except ValueError:
        return f"The Ray cluster at {search.address} no longer runs this search (killed, or the cluster restarted)."
    except Exception as exc:  # the cluster went away while we asked
        return f"The Ray cluster at {search.address} did not answer: {type(exc).__name__}: {exc}"
    return None


def active_searches(root: Path) -> list[ClusterSearch]:
    """Submitted searches under ``root`` (a model's search folder) that the cluster still runs."""
    if not root.is_dir():
        return []
    folders = sorted({p.parent for name in (SUBMITTED_FILE, "job.json") for p in root.glob(f"*/{name}")})
    return [s for s in (follow(f) for f in folders) if s.active]


def stop(search: ClusterSearch) -> None:
    """Ask the search to stop after its current candidate (finished steps are kept)."""
    from shedder.searching.ray_jobs import stop_search

    address = search.address or "auto"
    connect(address)
    stop_search(search.name, address)
    _write_submitted(search.out_dir, stop_requested=time.time())
