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
