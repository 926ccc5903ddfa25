"""Sensitivity: how much calibration perplexity rises when each component alone is removed."""
import dataclasses

import pandas as pd
import streamlit as st

from app import jobs
from app.figures import (GROUP_COLUMNS, clicked_component, counted, group_heatmap, linear_scale, percent_scale,
                         sensitivity_heatmap, signed_log_percent)
from app.sidebar import model_or_stop, model_sidebar
from app.state import current_plan, evaluation_setting, remembered, sensitivity_map, set_plan, start_sensitivity
from shedder.errors import ShedderError
from shedder.removal.catalogue import GROUP_KINDS, SUB_BLOCK_KINDS, Component
from shedder.searching.scoring import Score, proxy_agreement

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
kinds = st.multiselect("Components", present, default=[k for k in present if k in SUB_BLOCK_KINDS],
                       **remembered(f"sensitivity-kinds-{choice.spec}"))
setting = evaluation_setting()
calib, tokens, seq_len = setting.text, setting.tokens, setting.seq_len
count = sum(1 for e in cat if e.component.kind in kinds)
st.caption(f"{counted(count, 'component')} to score on {setting.describe()} (the evaluation setting of every page, chosen in "
           "the sidebar). Results are kept on disk: the same settings reopen instantly. "
           "Click a heatmap cell to add that component to the current plan (or take it out again).")

if not kinds:
    st.stop()
components = cat.components(kinds)
try:
    found = sensitivity_map(choice, setting)
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
missing = found.missing(components)
job = jobs.running("sensitivity")
if job is not None:
    jobs.panel("sensitivity")
else:
    scored_here = len(components) - len(missing)
    c1, c2 = st.columns([1, 3])
    if missing:
        label = f"Score the {counted(len(missing), 'component')} not scored yet" if scored_here else "Compute"
        if c1.button(label, type="primary", key="sensitivity-compute"):
            start_sensitivity(choice, kinds, setting)
            st.rerun()
        c2.caption(f"{scored_here} of {counted(len(components), 'component')} scored; the others are scored in the "
                   "background (a Cancel button stops it within seconds and keeps what is done)." if scored_here else
                   "Scored in the background, on its own copy of the model: other pages and other users keep working; "
                   "Cancel stops it within seconds and keeps what is done.")
    elif c1.button("Recompute", key="sensitivity-recompute", help="Score every chosen component again"):
        start_sensitivity(choice, kinds, setting, fresh=True)
        st.rerun()
    ended = jobs.current("sensitivity")
    if ended is not None and ended.state == "cancelled":
        st.info(f"Cancelled; {counted(len(found.ppl), 'component')} scored so far are kept. Press the button to resume.")
    elif ended is not None and ended.state == "failed":
        st.error(f"Scoring failed: {ended.error}")
if found.base_ppl is None or len(missing) == len(components):
    if job is None:
        st.info("Press Compute to measure every chosen component.")
    st.stop()
scores = found.scores(components)
proxies = {name: [{**c.to_dict(), "value": v} for c, v in found.proxy_values(name, components).items()]
           for name in found.proxies}
proxies = {name: rows for name, rows in proxies.items() if rows}
result = {"base_ppl": found.base_ppl, "scores": scores, "proxies": proxies,
          "agreement": proxy_agreement([Score(Component.from_dict(r), r["ppl"], r["delta"]) for r in scores],
                                       {n: found.proxy_values(n, components) for n in proxies})}
if missing:
    st.caption(f"Showing the {counted(len(scores), 'component')} scored so far; {len(missing)} to go.")

base = result["base_ppl"]
st.metric("perplexity with nothing removed", f"{base:.3f}", help=f"On {setting.describe()}")
metric = st.radio("Colour by", ["perplexity change (measured)", *result["proxies"]], horizontal=True,
                  **remembered("sensitivity-colour"))
plan = current_plan(choice)
removed = plan.removed
clicks = st.session_state.setdefault("heatmap_clicks", 0)


def toggle_clicked(event) -> None:
    """A click on a heatmap cell adds its component to the current plan, or takes it out again."""
    component = clicked_component(event)
    if component is None:
        return
    now = [c for c in plan.removed if c != component] if component in plan.removed else [*plan.removed, component]
    set_plan(choice, dataclasses.replace(plan, removed=now))
    st.session_state["heatmap_clicks"] = clicks + 1  # new charts: no selection left over
    st.session_state["heatmap_toggled"] = (str(component), component not in plan.removed, len(now))
    st.rerun()


toggled = st.session_state.pop("heatmap_toggled", None)
if toggled:
    name, added, count = toggled
    st.success(f"{'Added' if added else 'Took'} {name} {'to' if added else 'out of'} the current plan: it now removes "
               f"{counted(count, 'component')} (Playground, Search, Export).")


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
    where = {(c.kind, c.layer): c for c in components if c.index is None}
    toggle_clicked(st.plotly_chart(sensitivity_heatmap(cat.n_layers, single, values, hover, scale, removed, where),
                                   width="stretch", on_select="rerun", selection_mode="points",
                                   key=f"heat-layers-{clicks}"))

for kind in [k for k in kinds if k in GROUP_KINDS]:
    grid = {(layer, index): (v, text) for (k, layer, index), (v, text) in cells.items() if k == kind}
    if not grid:
        continue
    st.subheader(f"{kind}: layers x {GROUP_COLUMNS[kind]}s")
    layers = sorted({layer for layer, _ in grid})
    groups = 1 + max(index for _, index in grid)
    toggle_clicked(st.plotly_chart(group_heatmap(kind, layers, groups, {k: v for k, (v, _) in grid.items()},
                                                 {k: t for k, (_, t) in grid.items()}, scale, removed, clickable=True),
                                   width="stretch", on_select="rerun", selection_mode="points",
                                   key=f"heat-{kind}-{clicks}"))

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
