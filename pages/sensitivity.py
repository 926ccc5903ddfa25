"""Sensitivity: how much calibration perplexity rises when each component alone is removed."""
import pandas as pd
import streamlit as st

from app.figures import (GROUP_COLUMNS, counted, group_heatmap, linear_scale, percent_scale, sensitivity_heatmap,
                         signed_log_percent)
from app.sidebar import model_or_stop, model_sidebar
from app.state import current_plan, evaluation_setting, sensitivity
from shedder.catalogue import GROUP_KINDS, SUB_BLOCK_KINDS, Component
from shedder.errors import ShedderError

choice = model_sidebar()
st.title("Sensitivity")
st.caption(
    "Leave-one-out: each component is removed on its own and the calibration perplexity measured "
    "(Mamba-Shedder's importance score; lower = less important). Proxies are cheaper guesses, "
    "shown with how well their ranking agrees with the measured one."
)
_, _, cat = model_or_stop(choice)
PROXY_MEANING = {"block influence (1 - cos)": "block influence, 1 - cosine similarity of a layer's input and output",
                 "weight magnitude": "Frobenius norm of the columns of the output projection the head or channel group feeds"}

present = list(dict.fromkeys(e.component.kind for e in cat))
kinds = st.multiselect("Components", present, default=[k for k in present if k in SUB_BLOCK_KINDS])
setting = evaluation_setting()
calib, tokens, seq_len = setting.text, setting.tokens, setting.seq_len
count = sum(1 for e in cat if e.component.kind in kinds)
st.caption(f"{counted(count, 'component')} to score on {setting.describe()} (the evaluation setting of every page, chosen in "
           "the sidebar). Results are kept on disk: the same settings reopen instantly. "
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

base = result["base_ppl"]
st.metric("perplexity with nothing removed", f"{base:.3f}", help=f"On {setting.describe()}")
metric = st.radio("Colour by", ["perplexity change (measured)", *result["proxies"]], horizontal=True)
removed = current_plan(choice).removed


def label(row: dict) -> str:
    return f"{row['kind']} @ layer {row['layer']}" + (f" group {row['index']}" if "index" in row else "")


if metric.startswith("perplexity"):
    rows = result["scores"]
    percents = {(r["kind"], r["layer"], r.get("index")): 100 * r["delta"] / base for r in rows}
    cells = {key: (signed_log_percent(p), f"{label(r)}<br>perplexity {r['ppl']:.4f} ({r['delta']:+.4f}, {p:+.3g}%)")
             for r, (key, p) in zip(rows, percents.items())}
    scale = percent_scale(list(percents.values()))
    st.caption("Colour: the perplexity with that component alone removed, as a change relative to nothing removed "
               "(%, on a log scale). White = no change; lighter = cheaper to remove; blue = removal lowers "
               "perplexity. One scale for every chart on this page. Crossed cells: removed by the current plan; grey: "
               "no such component in that layer.")
else:
    rows = result["proxies"][metric]
    cells = {(r["kind"], r["layer"], r.get("index")): (r["value"], f"{label(r)}<br>{metric}: {r['value']:.5f}")
             for r in rows}
    scale = linear_scale([v for v, _ in cells.values()], metric)
    st.caption(f"Colour: {PROXY_MEANING.get(metric, metric)}, a cheap guess of importance (lighter = predicted "
               "cheaper to remove). One scale for every chart on this page. Crossed cells: removed by the current plan.")

single = [k for k in kinds if k in SUB_BLOCK_KINDS]
if single and any(k in {c[0] for c in cells} for k in single):
    st.subheader("Layers x components")
    values = {(k, layer): v for (k, layer, index), (v, _) in cells.items() if index is None}
    hover = {(k, layer): text for (k, layer, index), (_, text) in cells.items() if index is None}
    st.plotly_chart(sensitivity_heatmap(cat.n_layers, single, values, hover, scale, removed), width="stretch")

for kind in [k for k in kinds if k in GROUP_KINDS]:
    grid = {(layer, index): (v, text) for (k, layer, index), (v, text) in cells.items() if k == kind}
    if not grid:
        continue
    st.subheader(f"{kind}: layers x {GROUP_COLUMNS[kind]}s")
    layers = sorted({layer for layer, _ in grid})
    groups = 1 + max(index for _, index in grid)
    st.plotly_chart(group_heatmap(kind, layers, groups, {k: v for k, (v, _) in grid.items()},
                                  {k: t for k, (_, t) in grid.items()}, scale, removed), width="stretch")

if result["agreement"]:
    st.subheader("How well the proxies rank components")
    st.dataframe(pd.DataFrame([
        {"proxy": name, "kind": kind, "components": stats["n"],
         "Spearman with perplexity": "too few to rank" if stats["spearman"] is None else f"{stats['spearman']:+.3f}"}
        for name, per_kind in result["agreement"].items() for kind, stats in per_kind.items()
    ]), hide_index=True)

st.subheader("Least important first")
st.dataframe(pd.DataFrame([{
    "component": str(Component.from_dict(r)), "kind": r["kind"], "layer": r["layer"],
    "perplexity": round(r["ppl"], 4), "change": round(r["delta"], 4),
    "change (%)": round(100 * r["delta"] / base, 3),
} for r in sorted(result["scores"], key=lambda r: r["ppl"])[:20]]), hide_index=True)
st.caption(f"Perplexity on {setting.describe()} with the component alone removed; change against nothing removed.")
