"""The anatomy diagram of one layer (``shedder.anatomy``): the residual stream, each part that adds to it,
the modules inside each part with their parameters, and what removing each kind frees."""
from __future__ import annotations

import plotly.graph_objects as go

from app.figures import PART_COLOURS
from shedder.anatomy import LayerAnatomy

COLOUR_OF_KIND = {"ssm": PART_COLOURS["SSM"], "attn": PART_COLOURS["attention"], "mlp": PART_COLOURS["MLP"],
                  "rest": "#f1f3f5"}
REMOVAL_WORD = {"ssm": "remove the SSM (the scan)", "attn": "remove the attention", "mlp": "remove the MLP"}


def _modules_text(part, limit: int = 8) -> str:
    rows = [f"{m.name} {m.params:,}" + (" (scan only)" if m.scan_only else "") for m in part.modules[:limit]]
    if len(part.modules) > limit:
        rows.append(f"... {len(part.modules) - limit} more")
    return "<br>".join(rows)


def anatomy_figure(anatomy: LayerAnatomy) -> go.Figure:
    """Parts from the bottom (input) to the top (output), each joined to the residual stream by a "+"."""
    fig = go.Figure()
    height, gap = 1.0, 0.35
    parts = [p for p in anatomy.parts if p.kind != "rest"] + [p for p in anatomy.parts if p.kind == "rest"]
    top = len(parts) * (height + gap)
    fig.add_shape(type="line", x0=0, x1=0, y0=-0.4, y1=top, line=dict(color="#495057", width=3))
    fig.add_annotation(x=0, y=-0.55, text="input hidden states", showarrow=False, font=dict(size=12))
    fig.add_annotation(x=0, y=top + 0.15, text="output hidden states", showarrow=False, font=dict(size=12))
    for i, part in enumerate(parts):
        y0 = i * (height + gap)
        y1 = y0 + height
        colour = COLOUR_OF_KIND[part.kind]
        fig.add_shape(type="rect", x0=0.8, x1=6.0, y0=y0, y1=y1, fillcolor=colour, opacity=0.35,
                      line=dict(color=colour, width=2))
        if part.kind != "rest":
            fig.add_shape(type="line", x0=0, x1=0.8, y0=(y0 + y1) / 2, y1=(y0 + y1) / 2,
                          line=dict(color="#495057", width=2))
            fig.add_annotation(x=0, y=(y0 + y1) / 2, text="<b>+</b>", showarrow=False, bgcolor="white",
                               bordercolor="#495057", borderpad=2, font=dict(size=14))
        title = f"<b>{part.title}</b>: {part.params:,} parameters"
        if part.freed is not None:
            title += f"; {REMOVAL_WORD[part.kind]} frees {part.freed:,}"
        if part.groups is not None:
            title += f"; {part.groups[1]} {part.groups[0]}, each removable"
        fig.add_annotation(x=0.9, y=y1 - 0.08, text=title, showarrow=False, xanchor="left", yanchor="top",
                           align="left", font=dict(size=13))
        fig.add_annotation(x=0.9, y=y1 - 0.32, text=_modules_text(part), showarrow=False, xanchor="left",
                           yanchor="top", align="left", font=dict(size=11, color="#343a40"))
    block = (f"remove the block: the layer returns its input, frees {anatomy.block_freed:,}"
             if anatomy.block_freed is not None else "this layer is removed through its part, not as a block")
    fig.add_shape(type="rect", x0=-0.5, x1=6.2, y0=-0.3, y1=top - gap + 0.1, line=dict(color="#868e96", dash="dash"))
    fig.add_annotation(x=6.2, y=top - gap + 0.1, text=f"layer {anatomy.layer} ({anatomy.params:,} parameters): {block}",
                       showarrow=False, xanchor="right", yanchor="bottom", font=dict(size=12, color="#495057"))
    fig.update_layout(height=int(140 * len(parts) + 120), margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      xaxis=dict(visible=False, range=[-0.8, 6.4]), yaxis=dict(visible=False, range=[-0.8, top + 0.5]),
                      showlegend=False)
    return fig
