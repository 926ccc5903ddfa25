"""Playground: remove components by hand and watch perplexity, size, latency, accuracy and generations."""
import json

import pandas as pd
import streamlit as st

from app.measures import accuracy, accuracy_settings, latency, latency_settings, use_accuracy_settings
from app.sidebar import model_or_stop, model_sidebar
from app.state import (catalogue, continuation, current_plan, masked_perplexity, moot, params_freed, plan_version,
                       update_removed)
from shedder.catalogue import GROUP_KINDS, SUB_BLOCK_KINDS
from shedder.errors import ShedderError
from shedder.plan import Plan
from shedder.tasks import PAPER_TASKS

KIND_HELP = {
    "block": "the whole residual layer: it returns its input",
    "ssm": "the scan inside the Mamba mixer: y = x (gate, norm and output projection still run)",
    "attn": "the attention sub-block: it adds nothing to the residual stream",
    "mlp": "the MLP sub-block: it adds nothing to the residual stream",
}

choice = model_sidebar()
st.title("Playground")
st.caption("Pick components to remove (exactly as Mamba-Shedder defines removal) and see what it costs. "
           "Nothing is changed for good: every evaluation restores the model afterwards.")
model, tokenizer, _ = model_or_stop(choice)
plan = current_plan(choice)
cat = catalogue(choice, plan.channel_group_size)
version = plan_version(choice)

c1, c2, c3 = st.columns(3)
calib = c1.selectbox("Text", ["wiki-test", "wiki"], help="wiki-test: held-out Wikipedia lead sections")
tokens = c2.select_slider("Tokens", [1024, 2048, 4096, 8192, 32768], value=2048)
seq_len = c3.select_slider("Window", [128, 256, 512, 1024], value=256)
st.caption("2,048 tokens by default so that a change shows its perplexity within a second on a CPU "
           "(measured by bench/toggle_latency.py); more tokens give steadier numbers.")

wanted = []
for kind in SUB_BLOCK_KINDS:
    layers = [c.layer for c in cat.components([kind])]
    if not layers:
        continue
    sizes = sorted({cat.params_of(c) for c in cat.components([kind])})
    size = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,} to {sizes[-1]:,}"
    picked = st.pills(f"{kind}: {KIND_HELP[kind]} ({size} parameters each)", layers, selection_mode="multi",
                      default=[c.layer for c in plan.removed if c.kind == kind], key=f"pick-{kind}-{choice.spec}-{version}",
                      format_func=lambda layer: f"{layer}")
    wanted += [c for c in cat.components([kind]) if c.layer in picked]
groups = cat.components(GROUP_KINDS)
if groups:
    wanted += st.multiselect("Heads and MLP channel groups (kind@layer[group])", groups, format_func=str,
                             default=[c for c in plan.removed if c.kind in GROUP_KINDS],
                             key=f"groups-{choice.spec}-{version}")
plan = update_removed(choice, wanted)
removed = tuple(plan.removed)

try:
    dense = masked_perplexity(choice, (), calib, tokens, seq_len)
    pruned = masked_perplexity(choice, removed, calib, tokens, seq_len, plan.channel_group_size,
                               plan.channel_reorder) if removed else dense
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
freed = params_freed(choice, plan)
m1, m2, m3 = st.columns(3)
m1.metric("perplexity", f"{pruned:.3f}", delta=f"{pruned - dense:+.3f}" if removed else None, delta_color="inverse")
m2.metric("components removed", len(removed))
m3.metric("parameters freed", f"{freed:,} ({freed / cat.total_params:.1%})",
          help=f"Of {cat.total_params:,}: what physical removal would delete (masks alone make nothing smaller or faster)")
if moot(plan):
    st.caption(f"No effect: {', '.join(map(str, moot(plan)))} (inside a removed block, attention or MLP).")
st.download_button("Download this plan (JSON)", json.dumps(plan.to_dict(), indent=1), file_name="plan.json",
                   mime="application/json", disabled=not removed)

# --- latency of the physically extracted model ---------------------------------------------------
st.subheader("Latency")
lat_settings = latency_settings()
st.caption(f"The extracted model (removed parts deleted, not masked) generating {lat_settings['new_tokens']} tokens "
           f"after a {lat_settings['prompt_len']}-token prompt, batch 1, median of 5; the dense model timed alongside.")
if st.button("Measure latency"):
    with st.spinner("Extracting and timing ..."):
        try:
            latency(choice, plan, **lat_settings, compute=True)
        except ShedderError as exc:
            st.error(str(exc))
timed = latency(choice, plan, **lat_settings)
if timed is not None:
    l1, l2, l3 = st.columns(3)
    l1.metric("prefill + decode", f"{timed['total_ms']:.1f} ms", help=f"dense: {timed['dense']['total_ms']:.1f} ms; {timed['device']}")
    l2.metric("speedup", f"{timed['speedup']:.2f}x", help="dense time / extracted time")
    l3.metric("decode", f"{timed['tokens_per_s']:.1f} tokens/s", help=f"dense: {timed['dense']['tokens_per_s']:.1f} tokens/s")

# --- zero-shot accuracy on a subsample -------------------------------------------------------------
st.subheader("Accuracy")
settings = accuracy_settings()
c1, c2, c3 = st.columns([3, 1, 1])
tasks = c1.multiselect("Zero-shot tasks", PAPER_TASKS, default=settings["tasks"])
limit = c2.number_input("Documents per task", min_value=5, max_value=5000, value=settings["limit"],
                        help="A seeded subsample: dense and pruned see the same documents")
if tasks:
    settings = use_accuracy_settings(tasks, limit)
if c3.button("Evaluate accuracy", disabled=not tasks):
    bar = st.progress(0.0, text="Scoring ...")
    try:
        for name, p in (("dense", Plan()), ("pruned", plan)):
            accuracy(choice, p, **settings, compute=True,
                     progress=lambda d, t, name=name: bar.progress(d / t, text=f"Scoring the {name} model: {d} of {t}"))
    except ShedderError as exc:
        st.error(str(exc))
    bar.empty()
scored = {name: accuracy(choice, p, **settings) for name, p in (("dense", Plan()), ("pruned", plan))}
if all(scored.values()):
    dense_acc, pruned_acc = scored["dense"], scored["pruned"]
    st.metric("average accuracy", f"{pruned_acc['average']:.3f}",
              delta=f"{pruned_acc['average'] / dense_acc['average']:.1%} of dense" if dense_acc["average"] else None,
              delta_color="off")
    st.dataframe(pd.DataFrame([{
        "task": task, "metric": result["paper_metric"], "pruned": result["paper_value"],
        "± stderr": result["stderr"].get(result["paper_metric"]), "dense": dense_acc["tasks"][task]["paper_value"],
        "documents": result["n_docs"],
    } for task, result in pruned_acc["tasks"].items()]), hide_index=True)
else:
    st.caption("Press Evaluate accuracy to score the dense and the pruned model on these documents.")

# --- generations ---------------------------------------------------------------------------------
st.subheader("Generations")
with st.form("generate"):
    prompt = st.text_input("Prompt", value="The history of the city")
    go = st.form_submit_button("Generate")
key = (choice.spec, removed, prompt)
if go and prompt.strip():
    try:
        st.session_state["generations"] = (key, continuation(choice, (), None, None, prompt),
                                           continuation(choice, removed, plan.channel_group_size, plan.channel_reorder, prompt))
    except ShedderError as exc:
        st.error(str(exc))
shown = st.session_state.get("generations")
if shown and shown[0] == key:
    left, right = st.columns(2)
    left.markdown("**dense**")
    left.write(shown[1])
    right.markdown(f"**with {len(removed)} removed**")
    right.write(shown[2])
