"""Plotly figures; pure functions of library results."""
from __future__ import annotations

import plotly.graph_objects as go

from shedder.catalogue import SUB_BLOCK_KINDS

ROLE_COLOURS = {
    "SSM": "#2a9d8f",
    "attention": "#e76f51",
    "MLP": "#e9c46a",
    "SSM + MLP": "#8ab17d",
    "attention + MLP": "#f4a261",
    "SSM + attention": "#9b5de5",
    "SSM + attention + MLP": "#6a4c93",
    "block": "#adb5bd",
}


def architecture_strip(roles: list[str]) -> go.Figure:
    """One cell per layer, coloured by what the layer holds."""
    fig = go.Figure()
    for role in dict.fromkeys(roles):
        layers = [i for i, r in enumerate(roles) if r == role]
        fig.add_trace(go.Bar(
            x=layers, y=[1] * len(layers), name=role, marker_color=ROLE_COLOURS.get(role, "#577590"),
            hovertemplate="layer %{x}: " + role + "<extra></extra>",
        ))
    fig.update_layout(
        barmode="overlay", bargap=0.08, height=170, margin=dict(l=10, r=10, t=10, b=30),
        yaxis=dict(visible=False), xaxis=dict(title="layer", dtick=max(1, len(roles) // 16)),
        legend=dict(orientation="h", y=1.25), showlegend=True,
    )
    return fig


def parameter_breakdown(summary: dict[str, dict[str, int]], total: int) -> go.Figure:
    kinds = [k for k in summary if k in SUB_BLOCK_KINDS]
    fig = go.Figure(go.Bar(
        x=kinds, y=[summary[k]["params"] for k in kinds],
        text=[f"{summary[k]['params'] / total:.1%}" for k in kinds],
        customdata=[summary[k]["count"] for k in kinds],
        hovertemplate="%{x}: %{y:,} parameters in %{customdata} components<extra></extra>",
    ))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=30), yaxis_title="parameters")
    return fig


def sensitivity_heatmap(layers: int, kinds: list[str], values: dict[tuple[str, int], float],
                        hover: dict[tuple[str, int], str], title: str) -> go.Figure:
    """Layers (x) by component kind (y); empty cells where a layer has no such component."""
    z = [[values.get((kind, layer)) for layer in range(layers)] for kind in kinds]
    text = [[hover.get((kind, layer), "not in this layer") for layer in range(layers)] for kind in kinds]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(layers)), y=kinds, text=text, hovertemplate="%{text}<extra></extra>",
        colorscale="YlOrRd", colorbar=dict(title=title), xgap=2, ygap=2,
    ))
    fig.update_layout(height=120 + 45 * len(kinds), margin=dict(l=10, r=10, t=10, b=30),
                      xaxis=dict(title="layer", dtick=max(1, layers // 16)))
    return fig


def group_heatmap(layers: list[int], groups: int, values: dict[tuple[int, int], float],
                  hover: dict[tuple[int, int], str], title: str) -> go.Figure:
    """Layers (y) by group index (x) for heads or channel groups."""
    z = [[values.get((layer, g)) for g in range(groups)] for layer in layers]
    text = [[hover.get((layer, g), "") for g in range(groups)] for layer in layers]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(groups)), y=[str(layer) for layer in layers], text=text,
        hovertemplate="%{text}<extra></extra>", colorscale="YlOrRd", colorbar=dict(title=title),
    ))
    fig.update_layout(height=120 + 22 * len(layers), margin=dict(l=10, r=10, t=10, b=30),
                      xaxis_title="group", yaxis_title="layer")
    return fig


def trajectory_point(step: dict) -> dict:
    """A search step (as in ``log.json`` or ``on_step``) as a point of :func:`search_trajectory`."""
    from shedder.catalogue import Component

    return {"step": step["step"] + 1, "ppl": step["ppl"], "stage": step["stage"],
            "label": str(Component.from_dict(step["removed"]))}


def search_trajectory(points: list[dict], selected: int | None = None) -> go.Figure:
    """Perplexity after each search step (``points``: step, ppl, label, stage), step 0 = the start."""
    fig = go.Figure(go.Scatter(
        x=[p["step"] for p in points], y=[p["ppl"] for p in points], mode="lines+markers",
        text=[p["label"] for p in points], hovertemplate="after step %{x}: %{text}<br>perplexity %{y:.4f}<extra></extra>",
        marker=dict(size=8, color=[p.get("stage", 0) for p in points], colorscale="Viridis"), line=dict(color="#adb5bd"),
    ))
    if selected is not None:
        chosen = [p for p in points if p["step"] == selected]
        fig.add_trace(go.Scatter(x=[p["step"] for p in chosen], y=[p["ppl"] for p in chosen], mode="markers",
                                 marker=dict(size=16, symbol="circle-open", color="#e63946", line=dict(width=3)),
                                 hoverinfo="skip", showlegend=False))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=30), showlegend=False,
                      xaxis=dict(title="components removed (search step)", dtick=max(1, len(points) // 16)),
                      yaxis_title="calibration perplexity")
    return fig


def pareto_front(points: list[dict], x_better: str, y_better: str) -> list[dict]:
    """The points no other point beats on both axes (``*_better``: "high" or "low"), ordered by x."""
    sx = 1 if x_better == "high" else -1
    sy = 1 if y_better == "high" else -1

    def beaten(p: dict) -> bool:
        return any(sx * q["x"] >= sx * p["x"] and sy * q["y"] >= sy * p["y"] and (q["x"], q["y"]) != (p["x"], p["y"])
                   for q in points)

    return sorted((p for p in points if not beaten(p)), key=lambda p: p["x"])


def pareto_chart(points: list[dict], x_title: str, y_title: str, x_better: str, y_better: str) -> go.Figure:
    """Every plan as a point (``points``: x, y, name, source), the non-dominated ones joined by a line."""
    fig = go.Figure()
    symbols = {"search step": "circle", "saved plan": "diamond", "dense": "star"}
    for source in dict.fromkeys(p["source"] for p in points):
        mine = [p for p in points if p["source"] == source]
        fig.add_trace(go.Scatter(
            x=[p["x"] for p in mine], y=[p["y"] for p in mine], mode="markers", name=source,
            text=[p["name"] for p in mine], marker=dict(size=11, symbol=symbols.get(source, "circle")),
            hovertemplate="%{text}<br>" + x_title + ": %{x:.4g}<br>" + y_title + ": %{y:.4g}<extra></extra>",
        ))
    front = pareto_front(points, x_better, y_better)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[p["x"] for p in front], y=[p["y"] for p in front], mode="lines", name="Pareto front",
                                 line=dict(color="#e63946", dash="dot"), hoverinfo="skip"))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=10, b=30), xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", y=1.12))
    return fig


def accuracy_bars(rows: list[dict]) -> go.Figure:
    """Per task, one bar per plan (``rows``: plan, task, value, stderr), error bars = standard error."""
    fig = go.Figure()
    for plan in dict.fromkeys(r["plan"] for r in rows):
        mine = [r for r in rows if r["plan"] == plan]
        fig.add_trace(go.Bar(
            name=plan, x=[r["task"] for r in mine], y=[r["value"] for r in mine],
            error_y=dict(type="data", array=[r["stderr"] or 0 for r in mine], visible=True),
            hovertemplate=plan + "<br>%{x}: %{y:.3f} ± %{error_y.array:.3f}<extra></extra>",
        ))
    fig.update_layout(barmode="group", height=340, margin=dict(l=10, r=10, t=10, b=30),
                      yaxis=dict(title="accuracy (paper's metric)", range=[0, 1]), legend=dict(orientation="h", y=1.12))
    return fig
