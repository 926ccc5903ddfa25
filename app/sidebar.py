"""The sidebar every page shares: which model is loaded, and how."""
from __future__ import annotations

import streamlit as st

from shedder.errors import ShedderError
from shedder.loading import zoo_names

from .state import ModelChoice, catalogue, current_choice, loaded

REMOTE_CODE_HELP = (
    "Some hub models (e.g. Hymba) ship Python code that transformers runs on load. Allow it only for "
    "sources you trust: that code runs with your permissions."
)


def model_sidebar() -> ModelChoice:
    choice = current_choice()
    with st.sidebar:
        st.header("Model")
        names = zoo_names()
        source = st.radio("Source", ["zoo", "local folder or hub id"], horizontal=True,
                          index=0 if choice.spec in names or not choice.spec else 1)
        if source == "zoo":
            if not names:
                st.warning("No zoo model is installed; use a local folder.")
                spec = ""
            else:
                spec = st.selectbox("Zoo model", names, index=names.index(choice.spec) if choice.spec in names else 0)
        else:
            spec = st.text_input("Folder or hub id", value="" if choice.spec in names else choice.spec,
                                 placeholder="/path/to/model or state-spaces/mamba-130m-hf").strip()
        dtype = st.selectbox("dtype", ["auto", "float32", "bfloat16", "float16"],
                             index=["auto", "float32", "bfloat16", "float16"].index(choice.dtype))
        device = st.selectbox("device", ["auto", "cpu", "cuda"], index=["auto", "cpu", "cuda"].index(choice.device))
        trust = st.checkbox("Allow remote code", value=choice.trust_remote_code, help=REMOTE_CODE_HELP)
        new = ModelChoice(spec, dtype, device, trust)
        if new != choice:
            st.session_state.model_choice = new
        return new


def model_or_stop(choice: ModelChoice):
    """(model, tokenizer, catalogue) of the chosen model; otherwise say why and stop the page."""
    if not choice.spec:
        st.info("Choose a model in the sidebar.")
        st.stop()
    try:
        model, tokenizer = loaded(choice)
        return model, tokenizer, catalogue(choice)
    except ShedderError as exc:
        st.error(str(exc))
        st.stop()
