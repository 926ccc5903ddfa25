"""Long work off the caller's thread: cancellable, with true progress, a time-left estimate and partial results.

A :class:`Job` runs a function in a daemon thread. The function reports progress with
:meth:`Job.update` (the phase it is in, done of total), checks :meth:`Job.cancelled` between units of
work, and may publish partial results with :meth:`Job.publish`; whoever started the job reads them at any
time and may :meth:`Job.cancel` it.

Two rules keep one user's long job from stalling another user's interactive work on a shared machine:

- **Its own model.** :func:`private_copy` gives a job a copy of the model (taken under the shared model's
  lock), so the job never holds that lock and a toggle never waits for it.
- **Foreground first.** Interactive work runs inside :func:`foreground`; a job's model copy pauses at every
  layer boundary while any foreground work runs (:func:`guard`), and raises :class:`Cancelled` there once the
  job is cancelled, so a cancel acts within one layer's time.
- **But no starving.** A job waits at most ``MAX_WAIT`` seconds at a time and then runs as long as it waited
  (``JOB_SHARE``) before it pauses again (:func:`give_way`): foreground work that never stops slows a job to about
  half its speed, never to a halt.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from torch import nn

log = logging.getLogger(__name__)


class Cancelled(BaseException):
    """Raised inside a cancelled job's work (a BaseException, so no ``except Exception`` swallows it)."""


# --- foreground work has priority over jobs -----------------------------------------------------------------
_foreground = threading.Condition()
_foreground_count = 0


@contextmanager
def foreground() -> Iterator[None]:
    """Interactive work (a toggle's perplexity, a generation): jobs' models pause while it runs."""
    global _foreground_count
    with _foreground:
        _foreground_count += 1
    try:
        yield
    finally:
        with _foreground:
            _foreground_count -= 1
            _foreground.notify_all()


def foreground_active() -> bool:
    return _foreground_count > 0


def wait_for_foreground(cancelled: Callable[[], bool] = lambda: False, poll: float = 0.05,
                        limit: float | None = None) -> float:
    """Block while foreground work runs (returns the seconds waited); returns early once ``cancelled()``, or after
    ``limit`` seconds."""
    start = time.perf_counter()
    with _foreground:
        while _foreground_count > 0 and not cancelled():
            if limit is not None and time.perf_counter() - start >= limit:
                break
            _foreground.wait(poll)
    return time.perf_counter() - start


# --- jobs ----------------------------------------------------------------------------------------------------
_running: set["Job"] = set()  # every job of this process still running
_running_guard = threading.Lock()


def running_jobs() -> list["Job"]:
    with _running_guard:
        return list(_running)


def cancel_all(timeout: float = 30.0) -> bool:
    """Cancel every running job of this process and wait for them (whether all ended within ``timeout``)."""
    jobs = running_jobs()
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + timeout
    return all(job.wait(max(0.0, deadline - time.monotonic())) for job in jobs)


class Job:
    """One piece of long work in its own thread. ``state``: running, done, cancelled or failed."""

    def __init__(self, label: str, work: Callable[["Job"], Any], start: bool = True):
        self.label = label
        self._work = work
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.state = "running"
        self.result: Any = None
        self.partial: Any = None
        self.error: str | None = None
        self.phase = "starting"
        self.done = 0
        self.total = 0
        self.unit = ""  # what the current phase counts ("candidates", "steps")
        self.after: float | None = None  # the work's estimate of the seconds its later phases take
        self.started = time.time()
        self.ended: float | None = None
        self._phase_started = time.perf_counter()
        self._first_unit: float | None = None
        self.paused_s = 0.0  # seconds its model waited for foreground work
        self.free_until = 0.0  # (perf_counter) it runs without pausing until then: its fair share (give_way)
        self.thread = threading.Thread(target=self._run, name=f"job: {label}", daemon=True)
        if start:
            with _running_guard:
                _running.add(self)
            self.thread.start()

    # called by the work --------------------------------------------------------------------------------------
    def update(self, done: int, total: int, phase: str | None = None, unit: str | None = None,
               after: float | None = None) -> None:
        """``done`` of ``total`` ``unit``s of the current ``phase`` (a new phase restarts the time-left estimate);
        ``after``: the seconds the work expects its later phases to take (None: not known), so that the job's
        time left in all can be told."""
        with self._lock:
            if phase is not None and phase != self.phase:
                self.phase = phase
                self._phase_started = time.perf_counter()
                self._first_unit = None
            if done > 0 and self._first_unit is None:
                self._first_unit = time.perf_counter()
            self.done, self.total = done, total
            if unit is not None:
                self.unit = unit
            self.after = after

    def publish(self, partial: Any) -> None:
        """Results so far, readable while the job runs (and kept when it is cancelled)."""
        self.partial = partial

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the job is cancelled."""
        if self._cancel.is_set():
            raise Cancelled(self.label)

    # called by whoever started it ----------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def seconds_left(self) -> float | None:
        """Time left in the current phase at its rate so far (None before a unit is done)."""
        with self._lock:
            if not self.total or self.done <= 0:
                return None
            elapsed = time.perf_counter() - self._phase_started
            return elapsed / self.done * max(0, self.total - self.done)

    def seconds_left_in_all(self) -> float | None:
        """Time left in the current phase plus the work's estimate of its later phases (None when either is unknown);
        in a phase that counts nothing, the work's estimate of the rest (this phase included) less the phase's time
        so far."""
        left, after = self.seconds_left(), self.after
        if after is not None and not self.total:
            return max(0.0, after - (time.perf_counter() - self._phase_started))
        return None if left is None or after is None else left + after

    def describe(self) -> str:
        """'scoring components: 5 of 24, about 12 s left'; 'step 3 of 8: 41 of 120 candidates, about 20 s left
        (about 3 min in all)' when the work estimates its later phases."""
        text = self.phase
        if self.total:
            text += f": {self.done:,} of {self.total:,}" + (f" {self.unit}" if self.unit else "")
            left, in_all = self.seconds_left(), self.seconds_left_in_all()
            if left is not None and self.running and self.done < self.total:
                text += f", about {format_seconds(left)} left"
                if in_all is not None and in_all - left >= 1 and format_seconds(in_all) != format_seconds(left):
                    text += f" (about {format_seconds(in_all)} in all)"  # only when it says something more
        elif self.running and (in_all := self.seconds_left_in_all()) is not None:
            text += f", about {format_seconds(in_all)} left in all"
        if self.state == "cancelled":
            text += " (cancelled)"
        elif self.state == "failed":
            text += f" (failed: {self.error})"
        return text

    def _run(self) -> None:
        try:
            self.result = self._work(self)
            self.state = "cancelled" if self._cancel.is_set() else "done"
        except Cancelled:
            self.state = "cancelled"
        except BaseException as exc:  # noqa: BLE001  (shown to the user who started it)
            log.warning("Job %r failed:\n%s", self.label, traceback.format_exc())
            self.error = f"{exc}" if type(exc).__name__ == "ShedderError" else f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            self.ended = time.time()
            with _running_guard:
                _running.discard(self)


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# Fair share: foreground work comes first, but a job is never starved by it. A job waits at most MAX_WAIT seconds
# at a time, and after waiting w seconds it runs w * JOB_SHARE / (1 - JOB_SHARE) seconds without pausing, so that
# under foreground work that never stops (one user toggling without a break, several users at once) it still gets
# JOB_SHARE of the time. An occasional toggle still has the machine to itself: the job's free run after it ends
# before the next one comes.
JOB_SHARE = 0.5
MAX_WAIT = 2.0


def give_way(job: Job) -> None:
    """A point where ``job`` may stop or give way: raises :class:`Cancelled` once it is cancelled, and waits while
    foreground work runs (within its fair share, see ``JOB_SHARE``)."""
    job.check()
    if _foreground_count and time.perf_counter() >= job.free_until:
        waited = wait_for_foreground(job.cancelled, limit=MAX_WAIT)
        job.paused_s += waited
        job.free_until = time.perf_counter() + waited * JOB_SHARE / (1 - JOB_SHARE)
        job.check()


# --- a job's own model ---------------------------------------------------------------------------------------
def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for one job, taken under the model's lock (never mid-mask); the copy has its own
    lock, so the job never makes a user of the shared model wait."""
    from .removal.masks import model_lock

    with model_lock(model):
        clone = copy.deepcopy(model)
    clone.eval()
    return clone


@contextmanager
def guard(model: nn.Module, job: Job) -> Iterator[nn.Module]:
    """Inside the block every layer of ``model`` (a job's copy) first waits for foreground work to finish and
    raises :class:`Cancelled` once ``job`` is cancelled."""
    from .families import describe_model

    def before_layer(module, args):
        give_way(job)

    _, layers = describe_model(model)
    handles = [parts.layer.register_forward_pre_hook(before_layer) for parts in layers]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# --- a job whose model is built where it cannot be reached (e.g. loaded from disk inside the library) ------
_thread_jobs: dict[int, Job] = {}  # thread id -> the job every module forward in that thread answers to
_thread_jobs_guard = threading.Lock()
_global_hook = None


def _before_any_module(module, args):
    job = _thread_jobs.get(threading.get_ident())
    if job is not None:
        give_way(job)


@contextmanager
def guard_thread(job: Job) -> Iterator[None]:
    """As :func:`guard`, for every model this thread runs inside the block (one it loads itself, say): each
    module's forward first waits for foreground work and raises :class:`Cancelled` once ``job`` is cancelled.
    Modules run by other threads are not touched (a process-wide hook that returns at once for them)."""
    global _global_hook
    from torch.nn.modules.module import register_module_forward_pre_hook

    me = threading.get_ident()
    with _thread_jobs_guard:
        _thread_jobs[me] = job
        if _global_hook is None:
            _global_hook = register_module_forward_pre_hook(_before_any_module)
    try:
        yield
    finally:
        with _thread_jobs_guard:
            _thread_jobs.pop(me, None)
            if not _thread_jobs and _global_hook is not None:
                _global_hook.remove()
                _global_hook = None
