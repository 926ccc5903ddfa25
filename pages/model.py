"""Model overview: architecture strip, parameters per component kind, dense perplexity."""
import pandas as pd
import streamlit as st

from app import jobs
from app.figures import architecture_strip, counted, parameter_breakdown
from app.sidebar import model_or_stop, model_sidebar
from app.state import (DENSE_JOB, INLINE_LOAD_S, current_plan, evaluation_setting, known_perplexity,
                       start_dense_perplexity)
from shedder.plan import Plan

choice = model_sidebar()
st.title("Model")
model, _, cat = model_or_stop(choice)

device = next(model.parameters()).device
dtype = next(model.parameters()).dtype
c1, c2, c3, c4 = st.columns(4)
c1.metric("architecture", cat.model_type)
c2.metric("layers", cat.n_layers)
c3.metric("parameters", f"{cat.total_params / 1e6:.2f} M")
c4.metric("runs on", f"{device.type}, {str(dtype).removeprefix('torch.')}")

st.subheader("Layers")
plan = current_plan(choice)
st.caption("One column per residual layer, one cell per part it holds (SSM, attention, MLP): every part is a "
           "candidate for removal. Parts the current plan removes are grey and crossed out, parts with some heads "
           "or channel groups removed hatched."
           + (f" The current plan removes {counted(len(plan.removed), 'component')}." if plan.removed else ""))
st.plotly_chart(architecture_strip(cat, plan.removed), width="stretch")

st.subheader("Where the parameters are")
summary = cat.summary()
left, right = st.columns([3, 2])
left.plotly_chart(parameter_breakdown(summary, cat.total_params), width="stretch")
right.dataframe(
    pd.DataFrame([{"kind": k, "components": v["count"], "parameters": v["params"],
                   "share": f"{v['params'] / cat.total_params:.1%}"} for k, v in summary.items()]),
    hide_index=True, width="stretch",
)
groups_note = (f" MLP channel groups hold {cat.channel_group_size} channels." if "mlp_channels" in summary else "")
right.caption("Parameters each kind would free if physically removed (group kinds: all groups together)."
              + groups_note)

st.subheader("Dense perplexity")
setting = evaluation_setting()
job = jobs.current(DENSE_JOB)
if job is not None and job.key != (choice, setting):
    job = None  # it measures another model or setting


def finished() -> float | None:
    return job.result if job is not None and job.state == "done" else None


ppl = known_perplexity(choice, Plan(), setting, finished)
if ppl is None and job is None:
    job = start_dense_perplexity(choice, setting)
    job.wait(INLINE_LOAD_S)  # as for a load: a demo model's shows in this run, a large model's is followed
    ppl = known_perplexity(choice, Plan(), setting, finished)
if ppl is not None:
    st.metric("perplexity", f"{ppl:.3f}", help="Nothing removed. Change what it is measured on in the sidebar.")
    st.caption(f"On {setting.describe()}: the setting every page measures perplexity with.")
elif job.running:
    jobs.panel(DENSE_JOB)
else:
    if job.state == "failed":
        st.error(f"Measuring the dense perplexity failed: {job.error}")
    else:
        st.info("Cancelled: the dense perplexity was not measured.")
    if st.button("Compute again", key="dense-perplexity-again"):
        start_dense_perplexity(choice, setting)
        st.rerun()
