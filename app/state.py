"""Session state and cached resources shared by the pages."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from shedder.calibration import calibration_windows
from shedder.loading import load_model, zoo_names
from shedder.masks import catalogue_of
from shedder.perplexity import perplexity

DEFAULT_MODEL = "demo-mamba2"


@dataclass(frozen=True)
class ModelChoice:
    spec: str
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


def default_choice() -> ModelChoice:
    names = zoo_names()
    return ModelChoice(DEFAULT_MODEL if DEFAULT_MODEL in names else (names[0] if names else ""))


def current_choice() -> ModelChoice:
    if "model_choice" not in st.session_state:
        st.session_state.model_choice = default_choice()
    return st.session_state.model_choice


@st.cache_resource(show_spinner="Loading model ...", max_entries=3)
def loaded(choice: ModelChoice):
    """(model, tokenizer), shared by all sessions; masked use is serialised by the model's lock."""
    return load_model(choice.spec, choice.dtype, choice.device, choice.trust_remote_code)


def catalogue(choice: ModelChoice):
    return catalogue_of(loaded(choice)[0])


@st.cache_data(show_spinner=False, max_entries=64)
def dense_perplexity(choice: ModelChoice, calib: str, tokens: int, seq_len: int) -> dict:
    model, tokenizer = loaded(choice)
    windows = calibration_windows(calib, tokenizer, seq_len, tokens)
    bar = st.progress(0.0, text="Perplexity ...")
    result = perplexity(model, windows, batch_size=4, progress=lambda d, t: bar.progress(d / t, text=f"Perplexity: {d}/{t} windows"))
    bar.empty()
    return result.to_dict()
