"""A session's long jobs (`shedder.jobs`), as the pages show them: started by name (a new job of a name cancels
the old one), followed in a fragment that refreshes itself with a progress bar, the time left and a Cancel
button; the whole page reruns once when a job ends, to show its results."""
from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

from shedder.jobs import Job, format_seconds


def jobs() -> dict[str, Job]:
    """This session's jobs by name (one job per name at a time)."""
    return st.session_state.setdefault("jobs", {})


def current(name: str) -> Job | None:
    return jobs().get(name)


def running(name: str) -> Job | None:
    job = current(name)
    return job if job is not None and job.running else None


def start(name: str, label: str, work: Callable[[Job], Any]) -> Job:
    """Start ``work`` as this session's job ``name``; a job of that name still running is cancelled first
    (without waiting for it: it stops at its next layer or unit of work)."""
    old = current(name)
    if old is not None and old.running:
        old.cancel()
    job = Job(label, work)
    jobs()[name] = job
    st.session_state.setdefault("jobs_followed", set()).add(name)
    return job


def cancel(name: str) -> None:
    job = current(name)
    if job is not None:
        job.cancel()


def panel(name: str, every: float = 1.0, cancel_label: str = "Cancel",
          show: Callable[[Job], None] | None = None) -> None:
    """The job ``name``'s progress (its phase, done of total, time left) and a Cancel button, refreshed every
    ``every`` seconds while it runs, with ``show(job)`` drawing its partial results under them; once it ends the
    page reruns to show the results."""

    @st.fragment(run_every=every)
    def follow() -> None:
        job = current(name)
        followed = st.session_state.setdefault("jobs_followed", set())
        if job is None:
            return
        if not job.running:
            if name in followed:  # it ended since the page last drew: the page shows its results
                followed.discard(name)
                st.rerun(scope="app")
            return
        with st.container(border=True):
            elapsed = format_seconds(max(0.0, time.time() - job.started))
            st.progress(job.fraction, text=f"{job.label}: {job.describe()} ({elapsed} so far)")
            if job.cancelled():
                st.caption("Cancelling: it stops at its next layer.")
            elif st.button(cancel_label, key=f"cancel-{name}", help="Stops within seconds; what is finished is kept."):
                job.cancel()  # (the fragment's next run, within a second, draws it cancelling)
                st.caption("Cancelling: it stops at its next layer.")
            if show is not None:
                show(job)

    follow()
