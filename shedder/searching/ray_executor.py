"""Candidate evaluations on a Ray cluster: one model replica per worker, same answer as one process.

Each worker is a Ray actor that loads the model itself (from :class:`~shedder.searching.executor.RayOptions`
plus the driver's dtype; one GPU each when the cluster has GPUs) and keeps its own
:class:`~shedder.measurement.evaluator.Evaluator`, so prefix reuse works per worker: the first task of a step
runs the base plan once on that worker. The calibration windows are put in the object store once.

Search step (exact early stop across workers, as in the local search):
1. every candidate's first batch is evaluated (spread over the workers, a task per layer);
2. the driver orders the full evaluations by that first-batch NLL and hands candidates out in that
   order, a few queued per worker; each continues from its first batch;
3. whenever a candidate completes with a new best total, the driver broadcasts it; a worker reads
   the current bound between batches (a separate concurrency group delivers it during a task) and
   drops a candidate once its partial sum exceeds it. Per-batch sums are added in the same order as
   in one process, so totals are bit-identical and the pick is the same.

``score`` splits the calibration windows into contiguous shards of whole batches, one per worker
(``split="windows"``): every worker scores every component on its shard and returns per-batch sums,
which the driver adds in batch order. ``split="candidates"`` gives whole components to workers. A
worker keeps one Evaluator at a time (all windows, or its shard), so the same workers serve both.

A worker that dies (``RayActorError``) is replaced by a new actor and its unfinished tasks are
re-queued; results already returned are kept, and finished search steps are in the search's log.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from torch import nn

from ..errors import ShedderError
from ..measurement.calibration import Windows
from ..measurement.evaluator import CandidateResult, EvalSettings, Evaluator
from ..measurement.perplexity import model_device
from ..model.identity import model_fingerprint
from ..model.kernel_tuning import tuned_configs, use_configs
from ..model.loading import DTYPES, load_model, resolve_dtype
from ..model.sharding import SPREAD, synchronize
from ..paths import REPO_ROOT
from ..plan import Plan
from ..removal.catalogue import Component, catalogue_of
from .executor import RayOptions, ScoreOutcome, StepOutcome, better

log = logging.getLogger(__name__)

# Settings a worker must see as the driver does: results cache, offline mode, hub cache.
FORWARDED_ENV = ("SHEDDER_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")


def runtime_env() -> dict:
    """Actors import shedder from this checkout (the same path on every node) and see our settings."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    return {"env_vars": {**env, "PYTHONPATH": path}}


def connect(address: str | None) -> bool:
    """Join a Ray cluster (or start a local one); True when this call connected this process."""
    if ray.is_initialized():
        return False
    local = address is None and not os.environ.get("RAY_ADDRESS")
    named = address or os.environ.get("RAY_ADDRESS")
    if not local:
        check_reachable(named)
    try:
        if local:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = "Start one with `ray start --head` (README, Scaling out)."
        if named != "auto" and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            # Ray sends its token only to a cluster it finds itself (auto), never to a named address
            hint = ("If that cluster was started by `ray start --head` (token authentication by default), set "
                    "RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN), or use the "
                    "address auto on the head node.")
        raise ShedderError(f"Could not connect to the Ray cluster at {named}: {exc}. {hint}") from exc
    return True


def check_reachable(address: str) -> None:
    """Fail fast on an address where nothing listens (ray.init retries one for minutes); ``auto`` passes."""
    if address == "auto":
        return
    client = address.startswith("ray://")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep and client:
        host, port = address.removeprefix("ray://"), "10001"  # Ray Client's default port
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ShedderError(f"Ray address {address!r} should be auto, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT.")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise ShedderError(f"Nothing answers at {host}:{port} ({exc.strerror or exc}). Is the Ray cluster running? "
                           f"Start it with `ray start --head --port={port}` (README, Scaling out).") from exc


def _pci_address(device: torch.device) -> str | None:
    """``device``'s PCI address (domain:bus:device), where torch knows it."""
    props = torch.cuda.get_device_properties(device)
    pci = [getattr(props, f"pci_{part}_id", None) for part in ("domain", "bus", "device")]
    return f"{pci[0]:04x}:{pci[1]:02x}:{pci[2]:02x}" if None not in pci else None


def physical_gpu(device: torch.device) -> str:
    """Which physical GPU ``device`` is (its UUID and PCI address): every worker's ``cuda:0`` is a different one."""
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    where = _pci_address(device) or "pci unknown"
    return f"{props.name} GPU-{uuid} {where}" if uuid is not None else f"{props.name} {where}"


def near_cpus(device: torch.device) -> set[int] | None:
    """The CPUs of ``device``'s NUMA node, as the machine lists them for its PCI address (None where it does not)."""
    address = _pci_address(device)
    if address is None:
        return None
    try:
        listed = Path(f"/sys/bus/pci/devices/{address}.0/local_cpulist").read_text().strip()
    except OSError:
        return None
    cpus: set[int] = set()
    for part in filter(None, listed.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus or None


def pin_near_gpu() -> str | None:
    """Run this process on the CPUs nearest its first GPU (kernel launches and copies then stay on that socket);
    a description of what it did, or None where it could not (no such list, or none of those CPUs allowed)."""
    near = near_cpus(torch.device("cuda", 0))
    allowed = near & os.sched_getaffinity(0) if near and hasattr(os, "sched_setaffinity") else set()
    if not allowed:
        return None
    os.sched_setaffinity(0, allowed)
    return f"{len(allowed)} CPUs {min(allowed)}-{max(allowed)}"


def worker_dtype(dtype: str, device: str) -> str:
    """The dtype workers will use: ``auto`` means bfloat16 when they get GPUs, float32 otherwise. A driver
    loads its own copy (catalogue, fingerprint) with this dtype so that the weights match."""
    on_gpu = device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    return _name_of(resolve_dtype(dtype, torch.device("cuda" if on_gpu else "cpu")))


def _name_of(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


@dataclass
class TaskResult:
    value: Any  # a CandidateResult, or a shard's per-batch NLL sums
    seconds: float  # compute on the worker, base pass excluded
    base_seconds: float  # the step's base pass, when this task ran it
    work: int
    started: float  # wall clock on the worker
    ended: float


@ray.remote(concurrency_groups={"control": 1})
class Replica:
    """A model replica on one worker, with an Evaluator over all windows or over one shard of them."""

    def __init__(self, spec: dict, windows: Windows, settings: EvalSettings, grouping: Plan, fingerprint: str):
        started = time.perf_counter()
        torch.set_num_threads(spec["cpus"])
        self.pinned = pin_near_gpu() if spec.get("pin_cpus") and spec["device"] != "cpu" else None
        use_configs(spec.get("kernel_configs") or {})  # a replacement worker runs its predecessors' choices
        self.model, _ = load_model(spec["model"], spec["dtype"], spec["device"], spec["trust_remote_code"])
        if model_fingerprint(self.model) != fingerprint:
            raise ShedderError(f"The worker on {ray.util.get_node_ip_address()} loaded other weights for "
                               f"{spec['model']!r} than the driver has; every node must see the same checkpoint.")
        self.windows, self.settings, self.grouping = windows, settings, grouping
        self.evaluator: Evaluator | None = None
        self.batch_range: tuple[int, int] | None = None
        self.base: list[Component] | None = None
        self.bounds: dict[int, float] = {}  # step token -> best complete total the driver knows
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict:
        devices = sorted({p.device for p in self.model.parameters()}, key=str)
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(), "gpus": ray.get_gpu_ids(),
                "device": ",".join(map(str, devices)), "physical": [physical_gpu(d) for d in devices if d.type == "cuda"],
                "load_seconds": self.load_seconds, "cpus": self.pinned}

    def _use(self, batch_range: tuple[int, int] | None) -> Evaluator:
        """The Evaluator over batches ``[first, last)`` (None: all); one at a time, so stored states are freed."""
        if self.evaluator is None or batch_range != self.batch_range:
            windows = self.windows
            if batch_range is not None:
                first, last = batch_range
                size = self.settings.batch_size
                windows = Windows(windows.ids[first * size:last * size], windows.source, windows.seed)
            self.evaluator = None  # drop the old one's stored states first
            self.evaluator = Evaluator(self.model, windows, self.settings, self.grouping)
            self.batch_range, self.base = batch_range, None
        return self.evaluator

    def tune(self, configs: dict) -> dict:
        """Take ``configs`` (the driver's kernel choices), let the kernels choose the rest on one forward pass over
        the first window batch, and return all the choices (shared with the other workers)."""
        use_configs(configs)
        with torch.no_grad():
            self.model(input_ids=self.windows.ids[:self.settings.batch_size].to(model_device(self.model)),
                       use_cache=False)
        return tuned_configs()

    def use_kernel_configs(self, configs: dict) -> int:
        return use_configs(configs)

    @ray.method(concurrency_group="control")
    def set_bound(self, token: int, value: float) -> None:
        self.bounds[token] = min(self.bounds.get(token, math.inf), value)

    def _task(self, base: list[Component], compute: Callable[[], Any],
              batch_range: tuple[int, int] | None = None) -> TaskResult:
        started, work_before = time.time(), self._use(batch_range).work
        base_seconds = 0.0
        if self.base != base:
            clock = time.perf_counter()
            self.evaluator.set_base(base)
            self.base = list(base)
            synchronize(self.model)  # so that the base pass is timed as a whole
            base_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        value = compute()
        return TaskResult(value, time.perf_counter() - clock, base_seconds, self.evaluator.work - work_before,
                          started, time.time())

    def screen(self, base: list[Component], candidates: list[Component]) -> TaskResult:
        """The candidates' first batch (what the local search screens with); candidates of one layer run together
        where the evaluator groups them (a GPU)."""
        return self._task(base, lambda: list(self.evaluator.evaluate_many(candidates, bound=-math.inf)))

    def finish(self, token: int, base: list[Component], candidate: Component, screened: CandidateResult,
               bound: float) -> TaskResult:
        """Continue from the first batch until complete or above the bound (checked after every batch; on a GPU
        several batches run in one forward, ``Evaluator.evaluate_unit``)."""
        for old in [t for t in self.bounds if t < token]:
            del self.bounds[old]

        def run() -> CandidateResult:
            # the bound is read after every batch: the driver may have sent a lower one meanwhile
            [result] = self.evaluator.evaluate_unit([candidate], lambda: min(bound, self.bounds.get(token, math.inf)),
                                                    resume={candidate: screened})
            if result.complete:
                self.set_bound(token, result.nll_sum)  # a later candidate here may stop on it
            return result

        return self._task(base, run)

    def complete(self, base: list[Component], candidate: Component | None) -> TaskResult:
        return self._task(base, lambda: self.evaluator.evaluate(candidate))

    def batch_sums(self, base: list[Component], candidate: Component | None, batch_range: tuple[int, int]
                   ) -> TaskResult:
        """The exact NLL sum of every batch of a shard (the driver adds them in order)."""
        return self._task(base, lambda: [self._batch_sum(candidate, b) for b in range(len(self.evaluator.batches))],
                          batch_range)

    def _batch_sum(self, candidate: Component | None, batch: int) -> float:
        # Resuming from a zero sum at batch b's first window evaluates batch b alone: 0 + s == s exactly.
        windows = self.evaluator.windows
        start = CandidateResult(candidate, 0.0, False, batch * self.evaluator.batches[0].shape[0], len(windows),
                                windows.seq_len)
        return self.evaluator.evaluate(candidate, bound=-math.inf, resume=start).nll_sum


@dataclass
class Job:
    method: str
    key: Any  # the candidate (None: the base plan)
    args: Callable[[], tuple]  # built at submission, so that a bound is the newest one
    slot: int | None = None  # a shard's worker, or None for any worker


def _grouping_of(model: nn.Module, grouping: Plan) -> Plan:
    """The channel grouping the workers use: ``grouping``'s, its group size resolved for ``model``."""
    return Plan(channel_group_size=catalogue_of(model, grouping.channel_group_size).channel_group_size,
                channel_reorder=grouping.channel_reorder)


def _grouping_fields(grouping: Plan) -> dict:
    return {"channel_group_size": grouping.channel_group_size, "channel_reorder": grouping.channel_reorder}


class RayExecutor:
    """Runs search steps and score sweeps on Ray workers; see the module docstring.

    Pass an open one as ``executor=`` to several ``search`` / ``score`` calls to keep its workers
    (they must use the same model, windows and batch settings; checked). Close it when done.
    """

    def __init__(self, options: RayOptions, model: nn.Module, windows: Windows, settings: EvalSettings = EvalSettings(),
                 grouping: Plan | None = None):
        self.options, self.model, self.windows, self.settings = options, model, windows, settings
        self.grouping = _grouping_of(model, grouping or Plan())
        self.fingerprint = model_fingerprint(model)
        self.n_batches = math.ceil(len(windows) / settings.batch_size)
        self.started_ray = connect(options.address)
        self.use_gpu = self._check_resources()
        self.startup: dict = {}
        clock = time.perf_counter()
        self.windows_ref = ray.put(windows)
        self.startup["put_seconds"] = time.perf_counter() - clock
        self.workers: list = []
        self.replacements = 0
        self.timeline: list[dict] = []  # one record per finished task
        self.tokens = itertools.count()
        self.run_id, self.started_workers = uuid.uuid4().hex[:8], 0
        self.kernel_configs: dict = {}  # the Mamba kernels' choices every worker runs (GPU workers)

    def check_same(self, model: nn.Module, windows: Windows, grouping: Plan, settings: EvalSettings) -> None:
        """Refuse a search or score whose settings differ from the ones the workers were started with."""
        asked = {**asdict(settings), **_grouping_fields(_grouping_of(model, grouping))}
        have = {**asdict(self.settings), **_grouping_fields(self.grouping)}
        differ = [k for k in asked if asked[k] != have[k]]
        if model is not self.model and model_fingerprint(model) != self.fingerprint:
            differ.append("model")
        if windows is not self.windows and not torch.equal(windows.ids, self.windows.ids):
            differ.append("windows")
        if differ:
            raise ShedderError(f"This Ray executor was opened with other {', '.join(differ)}; open a new one.")

    # -- workers ---------------------------------------------------------------------------------
    def _check_resources(self) -> bool:
        options, resources = self.options, ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        if options.device.startswith("cuda") and gpus < 1:
            raise ShedderError("Workers on cuda asked for, but the Ray cluster has no GPUs; use --device cpu.")
        use_gpu = options.device != "cpu" and gpus >= 1
        if options.gpus_per_worker > 1 and not use_gpu:
            raise ShedderError("--gpus-per-worker needs GPUs, and the Ray cluster has none.")
        if use_gpu and gpus < options.workers * options.gpus_per_worker:
            raise ShedderError(f"{options.workers} workers x {options.gpus_per_worker} GPUs; the Ray cluster has "
                               f"{gpus:g} GPUs. Use fewer --workers.")
        if cpus < options.workers * options.cpus_per_worker:
            raise ShedderError(f"{options.workers} workers x {options.cpus_per_worker} CPUs; the Ray cluster has "
                               f"{cpus:g} CPUs. Use fewer --workers.")
        return use_gpu

    def _new_worker(self):
        options = self.options
        device = (SPREAD if options.gpus_per_worker > 1 else "cuda") if self.use_gpu else "cpu"
        spec = {"model": options.model, "dtype": _name_of(next(self.model.parameters()).dtype), "device": device, "trust_remote_code": options.trust_remote_code,
                "cpus": options.cpus_per_worker, "pin_cpus": options.pin_cpus, "kernel_configs": self.kernel_configs}
        self.started_workers += 1  # named, so that `ray list actors` shows what they are
        name = f"shedder-worker-{self.run_id}-{self.started_workers}"
        return Replica.options(name=name, num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker if self.use_gpu else 0,
                               runtime_env=runtime_env()).remote(
            spec, self.windows_ref, self.settings, self.grouping, self.fingerprint)

    def start_workers(self) -> None:
        """Start the workers (the first step or score does it anyway) and wait until they are ready."""
        if self.workers:
            return
        clock = time.perf_counter()
        self.workers = [self._new_worker() for _ in range(self.options.workers)]
        try:
            infos = ray.get([w.info.remote() for w in self.workers])
        except ray.exceptions.RayActorError as exc:
            raise ShedderError(f"A Ray worker could not start: {_last_line(exc)}") from exc
        if self.use_gpu:  # every worker runs the same kernel configurations (see shedder.model.kernel_tuning)
            try:
                self.kernel_configs = ray.get(self.workers[0].tune.remote(tuned_configs()))
                ray.get([w.use_kernel_configs.remote(self.kernel_configs) for w in self.workers[1:]])
            except ray.exceptions.RayActorError as exc:
                raise ShedderError(f"A Ray worker failed while its kernels were tuned: {_last_line(exc)}") from exc
        self.startup.update(workers=infos, start_seconds=time.perf_counter() - clock,
                            tuned_kernels=len(self.kernel_configs))

    def _replace(self, slot: int, error: Exception) -> None:
        if getattr(error, "actor_init_failed", False):
            raise ShedderError(f"A Ray worker could not start: {_last_line(error)}") from error
        self.replacements += 1
        if self.replacements > self.options.max_replacements:
            raise ShedderError(f"Ray workers died {self.replacements} times; last: {_last_line(error)}") from error
        log.warning("Ray worker %d died (%s); starting a new one and re-running its tasks.", slot, _last_line(error))
        try:
            ray.kill(self.workers[slot])
        except Exception:  # already gone
            pass
        self.workers[slot] = self._new_worker()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker)
            except Exception:  # already gone
                pass
        self.workers = []

    def close(self) -> None:
        self._stop_workers()
        if self.started_ray:
            ray.shutdown()

    # -- dispatch --------------------------------------------------------------------------------
    def _dispatch(self, jobs: list[Job], on_result: Callable[[Job, TaskResult], None],
                  should_stop: Callable[[], bool] | None) -> bool:
        """Run ``jobs`` (a few queued per worker, in order); False when ``should_stop`` said so."""
        shared = deque(j for j in jobs if j.slot is None)
        own = [deque(j for j in jobs if j.slot == slot) for slot in range(len(self.workers))]
        inflight: dict[Any, tuple[int, Job, float]] = {}
        while shared or any(own) or inflight:
            if should_stop is not None and should_stop():
                for ref in inflight:  # queued ones are dropped; a running one ends by itself
                    ray.cancel(ref)
                return False
            for slot, worker in enumerate(self.workers):
                queue = own[slot] or shared
                while queue and sum(1 for s, _, _ in inflight.values() if s == slot) < self.options.pipeline_depth:
                    job = queue.popleft()
                    inflight[getattr(worker, job.method).remote(*job.args())] = (slot, job, time.time())
                    queue = own[slot] or shared
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref not in inflight:  # a dead worker's task, already re-queued
                    continue
                slot, job, submitted = inflight.pop(ref)
                try:
                    out: TaskResult = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    lost = [job]
                    for other in [r for r, (s, _, _) in inflight.items() if s == slot]:
                        lost.append(inflight.pop(other)[1])
                    for j in reversed(lost):  # back at the front, in their order
                        (own[slot] if j.slot is not None else shared).appendleft(j)
                    self._replace(slot, exc)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), ShedderError) else None
                    raise cause or ShedderError(f"A Ray worker failed: {_last_line(exc)}") from exc
                self.timeline.append({"method": job.method, "candidate": str(job.key), "worker": slot,
                                      "submitted": submitted, "started": out.started, "ended": out.ended,
                                      "received": time.time(), "seconds": out.seconds,
                                      "base_seconds": out.base_seconds, "work": out.work})
                on_result(job, out)
        return True

    # -- the two things an executor does -------------------------------------------------------------
    def run_step(self, base, candidates, rank, early_stop, on_candidate=None, should_stop=None):
        self.start_workers()
        token, base = next(self.tokens), list(base)
        work = 0
        screened: dict[Component, CandidateResult] = {}

        def keep_screened(job: Job, out: TaskResult) -> None:
            nonlocal work
            screened.update((result.component, result) for result in out.value)
            work += out.work

        if early_stop:
            by_layer: dict[int, list[Component]] = {}
            for candidate in candidates:
                by_layer.setdefault(candidate.layer, []).append(candidate)
            jobs = [Job("screen", tuple(group), lambda group=group: (base, group)) for group in by_layer.values()]
            if not self._dispatch(jobs, keep_screened, should_stop):
                return None
            order = sorted(candidates, key=lambda c: (screened[c].nll_sum, rank[c]))
        else:
            order = candidates
        results: list[CandidateResult] = []
        best: CandidateResult | None = None

        def keep_result(job: Job, out: TaskResult) -> None:
            nonlocal best, work
            work += out.work
            results.append(out.value)
            if out.value.complete and better(out.value, best, rank):
                best = out.value
                for worker in self.workers:
                    worker.set_bound.remote(token, best.nll_sum)
            if on_candidate is not None:
                on_candidate(len(results), len(candidates))

        def bound() -> float:
            return best.nll_sum if best is not None else math.inf

        if early_stop:
            jobs = [Job("finish", c, lambda c=c: (token, base, c, screened[c], bound())) for c in order]
        else:
            jobs = [Job("complete", c, lambda c=c: (base, c)) for c in order]
        if not self._dispatch(jobs, keep_result, should_stop):
            return None
        return StepOutcome(results, best, work)

    def score(self, base, components, progress=None, should_stop=None):
        base, wanted = list(base), [None, *components]
        work, done = 0, {}
        self.start_workers()
        if self.options.split == "candidates":
            jobs = [Job("complete", c, lambda c=c: (base, c)) for c in wanted]
        else:  # contiguous shards of whole batches, one per worker
            n = min(len(self.workers), self.n_batches)
            cuts = [round(i * self.n_batches / n) for i in range(n + 1)]
            shards = list(zip(cuts[:-1], cuts[1:]))
            jobs = [Job("batch_sums", c, lambda c=c, shard=shard: (base, c, shard), slot)
                    for c in wanted for slot, shard in enumerate(shards)]
        parts: dict[Component | None, dict[int, list[float]]] = {}

        def keep(job: Job, out: TaskResult) -> None:
            nonlocal work
            work += out.work
            if job.slot is None:
                done[job.key] = out.value
            else:
                parts.setdefault(job.key, {})[job.slot] = out.value
                if len(parts[job.key]) < len(shards):
                    return
                total = 0.0
                for slot in range(len(shards)):  # batch order, as one process adds them
                    for batch_sum in parts[job.key][slot]:
                        total += batch_sum
                n = len(self.windows)
                done[job.key] = CandidateResult(job.key, total, True, n, n, self.windows.seq_len)
            if progress is not None and job.key is not None:
                progress(sum(1 for c in done if c is not None), len(components))

        self._dispatch(jobs, keep, should_stop)
        if None not in done:
            raise ShedderError("Scoring stopped before the base plan was evaluated.")
        return ScoreOutcome(done[None], [done[c] for c in components if c in done], work)


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
