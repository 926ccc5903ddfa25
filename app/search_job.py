"""The Search page's greedy search as a background job of the session (:mod:`app.jobs`): on its own copy of the
model (another session's toggle never waits for it), stopped at its next layer by Cancel, with the step and
candidate it is at and the time left, in this step and in all. The search writes every finished step to its folder
as it goes, so a cancelled search keeps them and the same settings resume after the last one."""
from __future__ import annotations

import time
from pathlib import Path

from shedder.jobs import Job
from shedder.plan import Plan
from shedder.removal.catalogue import Catalogue, Component
from shedder.searching.search import Stage, candidates_for

from . import jobs, store
from .figures import trajectory_point

NAME = "search"


def stages_text(stages: list[Stage]) -> str:
    return "; ".join(f"{','.join(s.targets)}:{s.steps}" for s in stages)


class SearchProgress:
    """Turns the search's callbacks into the job's progress: 'step 3 of 8: 41 of 120 candidates, about 20 s left
    (about 3 min in all)', and its finished steps into the job's partial result.

    Time left in all: the candidates of the later steps (a step's candidates less one for each later step of its
    stage, the later stages' candidates as they stand now) at the seconds per candidate of this run's last finished
    step."""

    def __init__(self, job: Job, stages: list[Stage], catalogue: Catalogue, finished: list[dict], out_dir: Path):
        self.job, self.stages, self.catalogue, self.out_dir = job, stages, catalogue, out_dir
        self.total_steps = sum(s.steps for s in stages)
        self.steps = list(finished)  # every finished step, earlier runs' too
        self.removed = [Component.from_dict(s["removed"]) for s in finished]
        self.per_candidate: float | None = None  # seconds per candidate of this run's last finished step
        self.step_started = time.perf_counter()
        self.phase, self.candidates, self.later = "", 0, []

    def _where(self) -> tuple[int, int] | None:
        """(stage index, steps of that stage still to do, this one included) of the next step; None when done."""
        for index, stage in enumerate(self.stages):
            left = stage.steps - sum(1 for s in self.steps if s["stage"] == index)
            if left > 0:
                return index, left
        return None

    def begin_step(self) -> None:
        self._publish()
        where = self._where()
        if where is None:
            self.job.update(0, 0, "writing the final plan")
            return
        index, left = where
        self.candidates = len(candidates_for(self.catalogue, self.removed, self.stages[index].targets))
        self.later = [max(1, self.candidates - j) for j in range(1, left)]
        for stage in self.stages[index + 1:]:
            n = len(candidates_for(self.catalogue, self.removed, stage.targets))
            self.later += [max(1, n - j) for j in range(stage.steps)]
        self.phase = f"step {len(self.steps) + 1} of {self.total_steps}"
        self.step_started = time.perf_counter()
        # the search first screens every candidate on its first batch (which orders the full evaluations), then
        # evaluates them one by one: the count starts with the first full evaluation
        rest = None if self.per_candidate is None else self.per_candidate * (self.candidates + sum(self.later))
        self.job.update(0, 0, f"{self.phase}: screening {self.candidates} candidates on their first batch", after=rest)

    def _after(self, done_now: int) -> float | None:
        """Seconds the steps after this one should take: at the last finished step's seconds per candidate (later
        steps are alike; the first one also warms up), else at this step's so far."""
        if self.per_candidate is not None:
            return self.per_candidate * sum(self.later)
        if done_now == 0:
            return None
        return (time.perf_counter() - self.step_started) / done_now * sum(self.later)

    def on_candidate(self, done: int, total: int) -> None:
        self.job.update(done, total, self.phase, "candidates", self._after(done))

    def on_step(self, step: dict) -> None:
        self.per_candidate = (time.perf_counter() - self.step_started) / max(1, len(step["candidates"]))
        self.steps.append(step)
        self.removed.append(Component.from_dict(step["removed"]))
        self.begin_step()

    def _publish(self) -> None:
        self.job.publish({"out_dir": str(self.out_dir), "trail": [trajectory_point(s) for s in self.steps],
                          "steps_done": len(self.steps), "total_steps": self.total_steps})


def start_search(choice, stages: list[Stage], out_dir: Path, calib: str, tokens: int, seq_len: int, batch_size: int,
                 channel_group_size: int | None, channel_reorder: str | None) -> Job:
    """Run (or resume) the search of these settings into ``out_dir`` as this session's search job."""
    from shedder.jobs import guard, private_copy
    from shedder.measurement.evaluator import EvalSettings
    from shedder.measurement.calibration import calibration_windows
    from shedder.removal.masks import catalogue_of
    from shedder.searching.search import search

    from .state import loaded

    model, tokenizer = loaded(choice)

    def work(job: Job) -> dict:
        job.update(0, 0, "copying the model")
        copy = private_copy(model)  # taken under the model's lock; the job never holds that lock again
        job.update(0, 0, "cutting the calibration text")
        windows = calibration_windows(calib, tokenizer, seq_len, tokens)
        finished = store.read_log(out_dir)["steps"] if (out_dir / "log.json").is_file() else []
        progress = SearchProgress(job, stages, catalogue_of(copy, channel_group_size), finished, out_dir)
        progress.begin_step()
        with guard(copy, job):  # pauses for foreground work at every layer; Cancel stops it at the next one
            return search(copy, windows, stages, out_dir, EvalSettings(batch_size=batch_size),
                          Plan(channel_group_size=channel_group_size, channel_reorder=channel_reorder),
                          on_step=progress.on_step, on_candidate=progress.on_candidate, should_stop=job.cancelled)

    return jobs.start(NAME, f"Search of {Path(choice.spec).name} ({stages_text(stages)})", work)
