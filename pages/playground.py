"""Playground: remove components by hand and watch perplexity, size and generations change."""
import json

import pandas as pd
import streamlit as st

from app.sidebar import model_or_stop, model_sidebar
from app.state import masked_perplexity
from shedder.catalogue import SUB_BLOCK_KINDS, Component
from shedder.errors import ShedderError
from shedder.masks import masked
from shedder.plan import Plan

choice = model_sidebar()
st.title("Playground")
st.caption("Tick components to remove them (exactly as Mamba-Shedder defines removal) and see what it costs. "
           "Nothing is changed for good: every evaluation restores the model afterwards.")
model, tokenizer, cat = model_or_stop(choice)

c1, c2, c3 = st.columns(3)
calib = c1.selectbox("Text", ["wiki-test", "wiki"])
tokens = c2.select_slider("Tokens", [1024, 2048, 4096, 8192], value=2048)
seq_len = c3.select_slider("Window", [128, 256, 512, 1024], value=256)

table = pd.DataFrame([{"remove": False, "layer": e.component.layer, "kind": e.component.kind, "parameters": e.params}
                      for e in cat if e.component.kind in SUB_BLOCK_KINDS])
edited = st.data_editor(table, hide_index=True, disabled=["layer", "kind", "parameters"], height=280,
                        key=f"toggles-{choice.spec}")
groups = [e.component for e in cat if e.component.index is not None]
picked_groups = st.multiselect("Heads and channel groups", groups, format_func=str)
removed = [Component(row.kind, int(row.layer)) for row in edited.itertuples() if row.remove] + picked_groups

try:
    dense = masked_perplexity(choice, (), calib, tokens, seq_len)
    pruned = masked_perplexity(choice, tuple(removed), calib, tokens, seq_len) if removed else dense
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
freed = sum(cat.params_of(c) for c in removed)
m1, m2, m3 = st.columns(3)
m1.metric("perplexity", f"{pruned:.3f}", delta=f"{pruned - dense:+.3f}" if removed else None, delta_color="inverse")
m2.metric("components removed", len(removed))
m3.metric("parameters freed", f"{freed:,}", help=f"{freed / cat.total_params:.1%} of {cat.total_params:,}; "
          "what physical removal would delete (masks alone make nothing smaller or faster)")

plan = Plan.for_model(model, removed)
st.download_button("Download this plan (JSON)", json.dumps(plan.to_dict(), indent=1), file_name="plan.json",
                   mime="application/json", disabled=not removed)

st.subheader("Generations")
prompt = st.text_input("Prompt", value="The history of the city")
if prompt.strip():
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    left, right = st.columns(2)
    with masked(model, []):
        dense_out = model.generate(ids, max_new_tokens=30, do_sample=False)
    with masked(model, removed):
        pruned_out = model.generate(ids, max_new_tokens=30, do_sample=False)
    left.markdown("**dense**")
    left.write(tokenizer.decode(dense_out[0], skip_special_tokens=True))
    right.markdown(f"**with {len(removed)} removed**")
    right.write(tokenizer.decode(pruned_out[0], skip_special_tokens=True))
