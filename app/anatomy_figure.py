"""The anatomy diagram of one layer (``shedder.model.anatomy``): the residual stream, each part that adds to it,
the modules inside each part with their parameters, and what removing each kind frees."""
from __future__ import annotations

import plotly.graph_objects as go

from app.figures import PART_COLOURS
from shedder.model.anatomy import LayerAnatomy, Part

COLOUR_OF_KIND = {"ssm": PART_COLOURS["SSM"], "attn": PART_COLOURS["attention"], "mlp": PART_COLOURS["MLP"],
                  "rest": "#ced4da"}
REMOVAL_WORD = {"ssm": "removing the SSM (the scan)", "attn": "removing the attention", "mlp": "removing the MLP"}
ROW = 18  # pixels per text row
MAX_MODULES = 9


def _module_rows(part: Part) -> list[str]:
    rows = [f"{m.name}: {m.params:,}" + ("  (used only by the scan)" if m.scan_only else "")
            for m in part.modules[:MAX_MODULES]]
    if len(part.modules) > MAX_MODULES:
        rows.append(f"... and {len(part.modules) - MAX_MODULES} more")
    return rows


def _title_rows(part: Part) -> list[str]:
    rows = [f"<b>{part.title}</b>: {part.params:,} parameters"]
    detail = [f"{REMOVAL_WORD[part.kind]} frees {part.freed:,}"] if part.freed is not None else []
    if part.groups is not None:
        detail.append(f"{part.groups[1]} {part.groups[0]}, each removable on its own")
    if part.kind == "rest":
        detail.append("no removal kind takes these alone; they go with the block")
    rows.append("; ".join(detail))
    return rows


def anatomy_figure(anatomy: LayerAnatomy) -> go.Figure:
    """Parts from the bottom (input) to the top (output); a part that adds to the residual stream is joined
    to it by a "+". Units are text rows, so every box holds its text."""
    fig = go.Figure()
    parts = [p for p in anatomy.parts if p.kind == "rest"] + [p for p in anatomy.parts if p.kind != "rest"]
    y, gap = 1.0, 1.2
    for part in parts:
        titles, modules = _title_rows(part), _module_rows(part)
        height = len(titles) + len(modules) + 0.8
        y0, y1 = y, y + height
        colour = COLOUR_OF_KIND[part.kind]
        fig.add_shape(type="rect", x0=1.0, x1=10.0, y0=y0, y1=y1, fillcolor=colour, opacity=0.3,
                      line=dict(color=colour, width=2))
        if part.kind != "rest":
            middle = (y0 + y1) / 2
            fig.add_shape(type="line", x0=0, x1=1.0, y0=middle, y1=middle, line=dict(color="#495057", width=2))
            fig.add_annotation(x=0, y=middle, text="<b>+</b>", showarrow=False, bgcolor="white",
                               bordercolor="#495057", borderpad=2, font=dict(size=14))
        fig.add_annotation(x=1.15, y=y1 - 0.3, text="<br>".join(titles), showarrow=False, xanchor="left",
                           yanchor="top", align="left", font=dict(size=13, color="#212529"))
        fig.add_annotation(x=1.4, y=y1 - 0.3 - len(titles) * 1.05, text="<br>".join(modules), showarrow=False,
                           xanchor="left", yanchor="top", align="left", font=dict(size=11, color="#343a40"))
        y = y1 + gap
    top = y - gap
    fig.add_shape(type="line", x0=0, x1=0, y0=0, y1=top + 1.0, line=dict(color="#495057", width=3))
    fig.add_annotation(x=0, y=-0.2, text="input hidden states", showarrow=False, yanchor="top", font=dict(size=12))
    fig.add_annotation(x=0, y=top + 1.2, text="output hidden states", showarrow=False, yanchor="bottom",
                       font=dict(size=12))
    block = (f"removing the block (the layer returns its input) frees {anatomy.block_freed:,}"
             if anatomy.block_freed is not None else "removed through its part, not as a block")
    fig.add_shape(type="rect", x0=-0.6, x1=10.3, y0=0.5, y1=top + 0.5, line=dict(color="#868e96", dash="dash"))
    fig.add_annotation(x=10.3, y=top + 0.6, text=f"layer {anatomy.layer}, {anatomy.params:,} parameters: {block}",
                       showarrow=False, xanchor="right", yanchor="bottom", font=dict(size=12, color="#495057"))
    rows = top + 3.5
    fig.update_layout(height=int(rows * ROW + 40), margin=dict(l=10, r=10, t=20, b=20), plot_bgcolor="white",
                      xaxis=dict(visible=False, range=[-1.0, 10.5], fixedrange=True),
                      yaxis=dict(visible=False, range=[-1.6, top + 2.2], fixedrange=True), showlegend=False)
    return fig
