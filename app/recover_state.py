"""The Recovery page's glue: where its runs live, extracting the current plan first, its figure and table."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from shedder.model.model_folders import extracted_dir, recovered_dir
from shedder.plan import Plan
from shedder.recovery.recover import Evaluation, RecoverySettings


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_folder(source: str, settings: RecoverySettings, evaluation: Evaluation, dense: str | None) -> Path:
    """One folder per source and settings: pressing Start again continues (or shows) the same run."""
    key = {"source": source, "settings": settings.resolved().trajectory(), "evaluation": evaluation.to_dict(),
           "dense": dense}
    name = Path(source).name[:100]  # a folder name of any length still gives a name the file system holds
    return recovered_dir() / f"{name}-{settings.method}-{settings.steps}steps-{_digest(key)}"


def plan_folder(plan: Plan) -> Path:
    """Where the dashboard extracts ``plan`` to (one folder per model and plan)."""
    return extracted_dir() / f"{plan.model_type}-{(plan.fingerprint or '')[:8]}-{_digest(plan.to_dict())}"


def extract_plan(model, tokenizer, plan: Plan) -> Path:
    """The plan's extracted model under the cache (written once)."""
    from shedder.extraction.extract import extract
    from shedder.removal.masks import model_lock

    folder = plan_folder(plan)
    if not (folder / "config.json").is_file():
        with model_lock(model):  # never copy weights another session has masked
            extract(model, tokenizer, plan, folder)
    return folder


def loss_curve(steps: list[dict], total: int) -> go.Figure:
    """Training loss per step, with the learning rate on a second axis."""
    x = [r["step"] for r in steps]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["loss"] for r in steps], name="training loss", mode="lines",
                             hovertemplate="step %{x}: loss %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[r["lr"] for r in steps], name="learning rate", yaxis="y2", mode="lines",
                             line=dict(dash="dot", width=1), hovertemplate="step %{x}: lr %{y:.2e}<extra></extra>"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=30), xaxis=dict(title="step", range=[0, total]),
                      yaxis=dict(title="loss"), yaxis2=dict(title="learning rate", overlaying="y", side="right",
                                                            showgrid=False),
                      legend=dict(orientation="h", y=1.12))
    return fig


def metrics_table(record: dict) -> pd.DataFrame:
    rows = []
    for name in ("dense", "pruned", "recovered"):
        metrics = record["metrics"].get(name)
        if metrics is None:
            continue
        accuracy = (metrics.get("accuracy") or {}).get("average")
        rows.append({"model": name, "perplexity": metrics["held_out"]["ppl"], "bits per byte": metrics["held_out"]["bpb"],
                     "zero-shot average": accuracy})
    return pd.DataFrame(rows)


# --- a recovery as a background job of the session (app/jobs.py) -------------------------------------------------
RECOVERY_JOB = "recovery"


class RecoveryProgress:
    """The recovery's callbacks as the job's progress (the model measured and its windows, the training step) and
    its partial result (the loss per step so far). Every callback is also where Cancel stops the run and where it
    gives way to other users' interactive work.

    Time left in all, while training: the steps left at this run's seconds per step, then the recovered model's
    held-out measurement: as many windows as the pruned one's (or the tokens asked for), at the seconds per window a
    measurement of this run took, or else at a third of a training window's time (a forward pass without the
    backward)."""

    def __init__(self, job, settings: RecoverySettings, evaluation: Evaluation):
        import time

        self.clock = time.perf_counter
        self.job, self.settings, self.evaluation = job, settings, evaluation
        self.steps: list[dict] = []
        self.first_step: int | None = None  # the step this run's training continued from
        self.windows = evaluation.tokens // evaluation.seq_len if evaluation.tokens else None
        self.window_seconds: float | None = None  # a held-out window's measurement, as this run measured
        self.measuring: tuple[str, float, int] | None = None  # (what, since, windows done then)

    def on_measure(self, stage: str, done: int, total: int) -> None:
        from shedder.jobs import give_way

        if self.measuring is None or self.measuring[0] != stage:
            self.measuring = (stage, self.clock(), done)
        elif done > self.measuring[2]:
            self.window_seconds = (self.clock() - self.measuring[1]) / (done - self.measuring[2])
        if "held-out" in stage:
            self.windows = total
        self.job.update(done, total, f"measuring {stage}", "windows")
        if done >= total and stage.startswith("pruned"):
            self.job.update(0, 0, "preparing the training")
        give_way(self.job)

    def on_step(self, record: dict, total: int) -> None:
        from shedder.jobs import give_way

        if self.first_step is None:
            self.first_step = record["step"] - 1
        self.steps.append(record)
        self.job.publish({**self.job.partial, "steps": list(self.steps), "first_step": self.first_step})
        start = self.first_step
        phase = "training" if not start else f"training (continued from step {start})"
        per_window = self.window_seconds or record["seconds"] / record["step"] / self.settings.batch_size / 3
        after = None if self.windows is None else self.windows * per_window
        self.job.update(record["step"] - start, total - start, phase, "steps", after)
        if record["step"] == total:
            self.job.update(0, 0, "saving the recovered model")
        give_way(self.job)  # after the step is recorded: it is done (and checkpointed when one was due)


def kept_checkpoint(last_step: int, total: int, every: int) -> int:
    """The step of the last checkpoint a run that reached ``last_step`` wrote (``shedder.recovery.finetune.train`` writes one
    every ``every`` steps, 0: none but the last step's, and after the last step); 0 when none."""
    if last_step >= total:
        return total
    return (last_step // every) * every if every > 0 else 0


def start_recovery(choice, source: str, folder: Path, settings: RecoverySettings, evaluation: Evaluation,
                   dense: str | None, plan: Plan | None = None):
    """Recover ``source`` into ``folder`` as this session's recovery job; with ``plan``, extract the plan from the
    sidebar's model first (from a copy, so that no other user's toggle waits for the extraction)."""
    from shedder.jobs import guard_thread, private_copy
    from shedder.recovery.recover import recover

    from . import jobs
    from .state import loaded

    model, tokenizer = loaded(choice) if plan is not None else (None, None)

    def work(job):
        # what the page tells of a cancelled run; each training step adds the loss so far
        job.publish({"folder": str(folder), "every": settings.checkpoint_every, "total": settings.steps, "steps": []})
        progress = RecoveryProgress(job, settings, evaluation)
        with guard_thread(job):  # every model this job runs gives way to foreground work and stops on Cancel
            if plan is not None and not (plan_folder(plan) / "config.json").is_file():
                job.update(0, 0, "copying the model")
                copy = private_copy(model)
                job.update(0, 0, "extracting the current plan")
                extract_plan(copy, tokenizer, plan)
                del copy
            job.update(0, 0, "loading the models")
            return recover(source, folder, settings, evaluation, dense, choice.device, "auto", choice.trust_remote_code,
                           progress.on_step, progress.on_measure)

    return jobs.start(RECOVERY_JOB, f"Recovery of {Path(source).name} ({settings.method}, {settings.steps} steps)", work)
