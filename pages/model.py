"""Model overview: architecture strip, parameters per component kind, dense perplexity."""
import pandas as pd
import streamlit as st

from app.figures import architecture_strip, parameter_breakdown
from app.sidebar import model_or_stop, model_sidebar
from app.state import dense_perplexity
from shedder.errors import ShedderError

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
st.caption("One cell per residual layer, coloured by what it holds. Every part is a candidate for removal.")
st.plotly_chart(architecture_strip(cat.layer_roles()), width="stretch")

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
c1, c2, c3 = st.columns(3)
calib = c1.selectbox("Text", ["wiki-test", "wiki"], help="wiki-test: held-out Wikipedia lead sections")
tokens = c2.select_slider("Tokens", [2048, 8192, 32768, 131072], value=8192)
seq_len = c3.select_slider("Window (tokens)", [128, 256, 512, 1024, 2048], value=512)
try:
    result = dense_perplexity(choice, calib, tokens, seq_len)
    st.metric("perplexity", f"{result['ppl']:.3f}",
              help=f"{result['n_windows']} windows of {result['seq_len']} tokens, {result['n_predictions']:,} predictions")
except ShedderError as exc:
    st.error(str(exc))
