"""Sensitivity: how much calibration perplexity rises when each component alone is removed."""
import math

import pandas as pd
import streamlit as st

from app.figures import group_heatmap, sensitivity_heatmap
from app.sidebar import model_or_stop, model_sidebar
from app.state import sensitivity
from shedder.catalogue import GROUP_KINDS, SUB_BLOCK_KINDS
from shedder.errors import ShedderError

choice = model_sidebar()
st.title("Sensitivity")
st.caption(
    "Leave-one-out: each component is removed on its own and the calibration perplexity measured "
    "(Mamba-Shedder's importance score; lower = less important). Proxies are cheaper guesses, "
    "shown with how well their ranking agrees with the measured one."
)
_, _, cat = model_or_stop(choice)

present = list(dict.fromkeys(e.component.kind for e in cat))
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
kinds = c1.multiselect("Components", present, default=[k for k in present if k in SUB_BLOCK_KINDS])
calib = c2.selectbox("Text", ["wiki", "wiki-test"], help="wiki: calibration split; wiki-test: held out")
tokens = c3.select_slider("Tokens", [1024, 2048, 4096, 8192, 16384, 65536], value=2048)
seq_len = c4.select_slider("Window", [128, 256, 512, 1024, 2048], value=256)
count = sum(1 for e in cat if e.component.kind in kinds)
st.caption(f"{count} components to score. Results are kept on disk: the same settings reopen instantly. "
           "Any click elsewhere stops a running computation.")

if not kinds:
    st.stop()
try:
    result = sensitivity(choice, tuple(kinds), calib, tokens, seq_len)
    if st.button("Recompute" if result else "Compute", type="primary"):
        bar = st.progress(0.0, text="Scoring ...")
        result = sensitivity(choice, tuple(kinds), calib, tokens, seq_len, compute=True,
                             progress=lambda d, t: bar.progress(d / t, text=f"Scored {d} of {t} components"))
        bar.empty()
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
if result is None:
    st.info("Press Compute to measure every chosen component.")
    st.stop()

scores = pd.DataFrame(result["scores"])
base = result["base_ppl"]
st.metric("perplexity with nothing removed", f"{base:.3f}")
metric = st.radio("Colour by", ["perplexity increase (measured)", *result["proxies"]], horizontal=True)


def label(row: dict) -> str:
    return f"{row['kind']} @ layer {row['layer']}" + (f" group {row['index']}" if "index" in row else "")


if metric.startswith("perplexity"):
    rows, colour_title = result["scores"], "Δ ppl (log10)"
    cells = {(r["kind"], r["layer"], r.get("index")):
             (math.log10(max(r["delta"], 0) + 1e-3), f"{label(r)}<br>ppl {r['ppl']:.4f} ({r['delta']:+.4f})")
             for r in rows}
else:
    rows, colour_title = result["proxies"][metric], metric
    cells = {(r["kind"], r["layer"], r.get("index")): (r["value"], f"{label(r)}<br>{metric}: {r['value']:.5f}")
             for r in rows}

single = [k for k in kinds if k in SUB_BLOCK_KINDS]
if single and any(k in {c[0] for c in cells} for k in single):
    st.subheader("Layers x components")
    values = {(k, layer): v for (k, layer, index), (v, _) in cells.items() if index is None}
    hover = {(k, layer): text for (k, layer, index), (_, text) in cells.items() if index is None}
    st.plotly_chart(sensitivity_heatmap(cat.n_layers, single, values, hover, colour_title), width="stretch")

for kind in [k for k in kinds if k in GROUP_KINDS]:
    grid = {(layer, index): (v, text) for (k, layer, index), (v, text) in cells.items() if k == kind}
    if not grid:
        continue
    st.subheader(f"{kind}: layers x groups")
    layers = sorted({layer for layer, _ in grid})
    groups = 1 + max(index for _, index in grid)
    st.plotly_chart(group_heatmap(layers, groups, {k: v for k, (v, _) in grid.items()},
                                  {k: t for k, (_, t) in grid.items()}, colour_title), width="stretch")

if result["agreement"]:
    st.subheader("How well the proxies rank components")
    st.dataframe(pd.DataFrame([
        {"proxy": name, "kind": kind, "Spearman with perplexity": stats["spearman"], "components": stats["n"]}
        for name, per_kind in result["agreement"].items() for kind, stats in per_kind.items()
    ]), hide_index=True)

st.subheader("Least important first")
st.dataframe(scores.sort_values("ppl").head(20), hide_index=True)
