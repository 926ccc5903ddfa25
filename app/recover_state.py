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
