"""Plotly figures; pure functions of library results."""
from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from shedder.removal.catalogue import SUB_BLOCK_KINDS

def counted(n: int, noun: str, plural: str | None = None) -> str:
    """ "1 component", "3 components": a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


PART_COLOURS = {"SSM": "#2a9d8f", "attention": "#e76f51", "MLP": "#e9c46a", "block": "#adb5bd"}
PART_OF_KIND = {"ssm": "SSM", "attn": "attention", "mlp": "MLP"}
GROUPS_OF_PART = {"SSM": "ssm_heads", "attention": "attn_heads", "MLP": "mlp_channels"}
REMOVED_COLOUR = "#dee2e6"


def layer_parts(cat) -> list[list[str]]:
    """What each layer of the catalogue holds, in strip order: "SSM", "attention", "MLP", or "block"
    for a layer with no separately removable part."""
    parts = [[] for _ in range(cat.n_layers)]
    for entry in cat:
        part = PART_OF_KIND.get(entry.component.kind)
        if part is not None and part not in parts[entry.component.layer]:
            parts[entry.component.layer].append(part)
    order = list(PART_COLOURS)
    return [sorted(p, key=order.index) or ["block"] for p in parts]


def _legend_entry(fig: go.Figure, name: str, colour: str, pattern: str = "") -> None:
    """A legend item only (it draws nothing)."""
    fig.add_trace(go.Bar(x=[None], y=[None], name=name, hoverinfo="skip",
                         marker=dict(color=colour, pattern=dict(shape=pattern, fgcolor="#495057", solidity=0.3),
                                     line=dict(color="#adb5bd", width=1))))


def architecture_strip(cat, removed=()) -> go.Figure:
    """One column per layer made of one cell per part it holds (SSM, attention, MLP), every cell drawn
    once with an explicit width; parts the plan ``removed`` are grey and crossed, parts with some heads
    or channel groups removed are hatched."""
    parts = layer_parts(cat)
    gone = {(c.kind, c.layer) for c in removed}
    partly = {}
    for c in removed:
        if c.index is not None:
            partly.setdefault((c.kind, c.layer), set()).add(c.index)
    totals = {}
    for entry in cat:
        if entry.component.index is not None:
            totals[(entry.component.kind, entry.component.layer)] = totals.get(
                (entry.component.kind, entry.component.layer), 0) + 1
    fig = go.Figure()
    for part, colour in PART_COLOURS.items():
        layers = [i for i, p in enumerate(parts) if part in p]
        if not layers:
            continue
        kind = next((k for k, v in PART_OF_KIND.items() if v == part), "block")
        colours, patterns, notes = [], [], []
        for layer in layers:
            whole = ("block", layer) in gone or (kind, layer) in gone
            some = partly.get((GROUPS_OF_PART.get(part), layer), set())
            colours.append(REMOVED_COLOUR if whole else colour)
            patterns.append("x" if whole else "/" if some else "")
            notes.append(("removed with its block" if ("block", layer) in gone else "removed") if whole else
                         f"{len(some)} of {totals[(GROUPS_OF_PART[part], layer)]} "
                         f"{'channel groups' if part == 'MLP' else 'heads'} removed" if some else "kept")
        fig.add_trace(go.Bar(
            x=layers, y=[1] * len(layers), width=[0.9] * len(layers), name=part, customdata=notes, showlegend=False,
            marker=dict(color=colours, pattern=dict(shape=patterns, fgcolor="#495057", solidity=0.3),
                        line=dict(color="white", width=1)),
            hovertemplate="layer %{x}: " + part + " (%{customdata})<extra></extra>",
        ))
        _legend_entry(fig, part, colour)  # the legend shows the part's colour, whatever its first cell shows
    if gone:
        _legend_entry(fig, "removed in the current plan", REMOVED_COLOUR, "x")
    if partly:
        _legend_entry(fig, "some heads or channel groups removed", "#ffffff", "/")
    fig.update_layout(
        barmode="stack", height=190, margin=dict(l=10, r=10, t=40, b=30),
        yaxis=dict(visible=False), xaxis=dict(title="layer", dtick=max(1, cat.n_layers // 16), range=[-0.6, cat.n_layers - 0.4]),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, traceorder="normal"), showlegend=True,
    )
    return fig


def parameter_breakdown(summary: dict[str, dict[str, int]], total: int) -> go.Figure:
    kinds = [k for k in summary if k in SUB_BLOCK_KINDS]
    fig = go.Figure(go.Bar(
        x=kinds, y=[summary[k]["params"] for k in kinds],
        text=[f"{summary[k]['params'] / total:.1%}" for k in kinds],
        customdata=[counted(summary[k]["count"], "component") for k in kinds],
        hovertemplate="%{x}: %{y:,} parameters in %{customdata}<extra></extra>",
    ))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=30), yaxis_title="parameters")
    return fig


# --- sensitivity heatmaps: one colour scale for every chart of a page ---------------------------------

# white at no change, warmer = removal costs more, blue = removal lowers perplexity
DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.62, "#fee0b6"], [0.75, "#fdb863"],
             [0.88, "#e66101"], [1.0, "#7f2704"]]
SEQUENTIAL = [[0.0, "#fffbe6"], [0.5, "#fd8d3c"], [1.0, "#7f2704"]]
EMPTY_CELL = "#dfe3e8"  # where a layer has no such component (white means no change)
PERCENT_FLOOR = 0.01  # percent: changes below this are drawn as nearly white


@dataclass(frozen=True)
class HeatScale:
    """The one colour scale of a page's heatmaps: the value range, colours and colour bar ticks."""

    zmin: float
    zmax: float
    colorscale: list
    title: str
    tickvals: tuple = ()
    ticktext: tuple = ()

    def colorbar(self) -> dict:
        """A horizontal colour bar under the chart: room for every tick label, and clear of the toolbar."""
        bar = dict(title=dict(text=self.title, side="right"), orientation="h", thickness=12, len=0.75, x=0.5,
                   xanchor="center", y=0.02, yanchor="bottom", yref="container", outlinewidth=0)
        if self.tickvals:
            bar.update(tickvals=list(self.tickvals), ticktext=list(self.ticktext))
        return bar


def signed_log_percent(percent: float) -> float:
    """A relative change in percent on a symmetric log scale: 0 stays 0, the sign is kept."""
    return math.copysign(math.log10(1 + abs(percent) / PERCENT_FLOOR), percent)


def percent_scale(percents: list[float]) -> HeatScale:
    """The scale for relative perplexity changes (in %) of every chart of a page, centred on no change."""
    top = max([abs(signed_log_percent(p)) for p in percents] + [signed_log_percent(1.0)])
    ticks = [p for p in (0.01, 0.1, 1, 10, 100, 1000, 10000) if signed_log_percent(p) <= top * 1.001][-4:]
    values = [-signed_log_percent(p) for p in reversed(ticks)] + [0.0] + [signed_log_percent(p) for p in ticks]
    text = [f"-{p:g}%" for p in reversed(ticks)] + ["0"] + [f"+{p:g}%" for p in ticks]
    return HeatScale(-top, top, DIVERGING, "perplexity change (%, log scale)", tuple(values), tuple(text))


def linear_scale(values: list[float], title: str) -> HeatScale:
    """The scale for a proxy's values over every chart of a page."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    return HeatScale(low, high if high > low else low + 1e-12, SEQUENTIAL, title)


def _removed_marks(fig: go.Figure, x: list, y: list) -> None:
    if x:
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="removed in the current plan",
                                 marker=dict(symbol="x-thin", size=16, line=dict(width=3, color="#343a40")),
                                 hovertemplate="removed in the current plan<extra></extra>"))


def _click_targets(fig: go.Figure, x: list, y: list, components: list, text: list) -> None:
    """An invisible marker on every cell that holds a component (its dict as JSON in customdata), so that a click
    on the cell selects it (streamlit's on_select); it also carries the cell's hover text."""
    import json

    fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="click to toggle", showlegend=False,
                             customdata=[json.dumps(c.to_dict(), sort_keys=True) for c in components], text=text,
                             marker=dict(symbol="square", size=18, opacity=0.0),
                             hovertemplate="%{text}<br><i>click: toggle in the current plan</i><extra></extra>"))


def clicked_component(event):
    """The component of the heatmap cell clicked (a plotly_chart selection event), or None."""
    import json

    from shedder.removal.catalogue import Component

    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", []) or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str) and data.startswith("{"):
            return Component.from_dict(json.loads(data))
    return None


def _heat_layout(fig: go.Figure, height: int) -> None:
    fig.update_layout(height=height + 90, margin=dict(l=10, r=10, t=36, b=110), legend=dict(orientation="h", y=1.0,
                      yanchor="bottom", x=0), plot_bgcolor=EMPTY_CELL)


def sensitivity_heatmap(layers: int, kinds: list[str], values: dict[tuple[str, int], float],
                        hover: dict[tuple[str, int], str], scale: HeatScale, removed=(), components: dict | None = None
                        ) -> go.Figure:
    """Layers (x) by component kind (y); empty cells where a layer has no such component; the plan's
    ``removed`` components (and every part of a removed block) crossed out. ``components``: (kind, layer) ->
    Component, to make each such cell clickable (:func:`clicked_component`)."""
    z = [[values.get((kind, layer)) for layer in range(layers)] for kind in kinds]
    text = [[hover.get((kind, layer), "not in this layer") for layer in range(layers)] for kind in kinds]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(layers)), y=kinds, text=text, hovertemplate="%{text}<extra></extra>", name="components",
        colorscale=scale.colorscale, zmin=scale.zmin, zmax=scale.zmax, colorbar=scale.colorbar(), xgap=2, ygap=2,
    ))
    if components:
        cells = [(layer, kind) for kind in kinds for layer in range(layers) if (kind, layer) in components]
        _click_targets(fig, [c[0] for c in cells], [c[1] for c in cells], [components[(k, l)] for l, k in cells],
                       [hover.get((k, l), "") for l, k in cells])
    blocks = {c.layer for c in removed if c.kind == "block"}
    marks = [(layer, kind) for kind in kinds for layer in range(layers)
             if (kind, layer) in values and (layer in blocks or any(c.kind == kind and c.layer == layer for c in removed))]
    _removed_marks(fig, [m[0] for m in marks], [m[1] for m in marks])
    _heat_layout(fig, 140 + 45 * len(kinds))
    fig.update_layout(xaxis=dict(title="layer", dtick=max(1, layers // 16)), yaxis=dict(type="category"))
    return fig


GROUP_COLUMNS = {"ssm_heads": "head", "attn_heads": "head", "mlp_channels": "channel group"}


def group_heatmap(kind: str, layers: list[int], groups: int, values: dict[tuple[int, int], float],
                  hover: dict[tuple[int, int], str], scale: HeatScale, removed=(), clickable: bool = False) -> go.Figure:
    """Layers (rows, their real numbers) by head or channel group (columns) for one group kind; ``clickable``:
    each cell with a value selects its component on a click (:func:`clicked_component`)."""
    rows, columns = [f"layer {layer}" for layer in layers], [str(g) for g in range(groups)]
    z = [[values.get((layer, g)) for g in range(groups)] for layer in layers]
    text = [[hover.get((layer, g), "") for g in range(groups)] for layer in layers]
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=rows, text=text, hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1, name=kind,
        colorscale=scale.colorscale, zmin=scale.zmin, zmax=scale.zmax, colorbar=scale.colorbar(),
    ))
    if clickable:
        from shedder.removal.catalogue import Component

        cells = [(layer, g) for layer in layers for g in range(groups) if (layer, g) in values]
        _click_targets(fig, [str(g) for _, g in cells], [f"layer {layer}" for layer, _ in cells],
                       [Component(kind, layer, g) for layer, g in cells], [hover.get(c, "") for c in cells])
    parent = {"ssm_heads": "ssm", "attn_heads": "attn", "mlp_channels": "mlp"}[kind]
    whole = {c.layer for c in removed if c.kind in ("block", parent)}
    marks = [(str(g), f"layer {layer}") for layer in layers for g in range(groups) if (layer, g) in values and (
        layer in whole or any(c.kind == kind and c.layer == layer and c.index == g for c in removed))]
    _removed_marks(fig, [m[0] for m in marks], [m[1] for m in marks])
    _heat_layout(fig, 150 + 26 * len(layers))
    fig.update_layout(xaxis=dict(title=GROUP_COLUMNS[kind], type="category"),
                      yaxis=dict(type="category", autorange="reversed"))
    return fig


def trajectory_point(step: dict) -> dict:
    """A search step (as in ``log.json`` or ``on_step``) as a point of :func:`search_trajectory`."""
    from shedder.removal.catalogue import Component

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
                      yaxis_title="search perplexity (its calibration text)")
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
