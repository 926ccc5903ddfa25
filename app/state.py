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


def sensitivity(choice: ModelChoice, kinds: tuple[str, ...], calib: str, tokens: int, seq_len: int,
                progress=None, compute: bool = False) -> dict | None:
    """Leave-one-out scores and proxies, kept on disk by model fingerprint and settings.

    Without ``compute``: the stored result, or None. With it: measured now, and stored."""
    from shedder import result_cache
    from shedder.identity import model_fingerprint
    from shedder.scoring import block_influence, proxy_agreement, score, weight_magnitude

    model, tokenizer = loaded(choice)
    key = {"fingerprint": model_fingerprint(model), "kinds": sorted(kinds), "calib": calib, "tokens": tokens,
           "seq_len": seq_len, "version": 1}
    if not compute:
        return result_cache.load("sensitivity", key)
    windows = calibration_windows(calib, tokenizer, seq_len, tokens)
    base_ppl, scores, work = score(model, windows, list(kinds), batch_size=4, progress=progress)
    proxies = {}
    if "block" in kinds:
        proxies["block influence (1 - cos)"] = block_influence(model, windows, batch_size=4)
    if {"attn_heads", "ssm_heads", "mlp_channels"} & set(kinds):
        proxies["weight magnitude"] = weight_magnitude(model)
    result = {
        "base_ppl": base_ppl, "work": work, "scores": [s.to_dict() for s in scores],
        "proxies": {name: [{**c.to_dict(), "value": v} for c, v in values.items()] for name, values in proxies.items()},
        "agreement": proxy_agreement(scores, proxies),
    }
    result_cache.save("sensitivity", key, result)
    return result


@st.cache_data(show_spinner="Measuring perplexity ...", max_entries=256)
def masked_perplexity(choice: ModelChoice, removed: tuple, calib: str, tokens: int, seq_len: int) -> float:
    """Perplexity with ``removed`` masked (a tuple of Components), cached per setting."""
    model, tokenizer = loaded(choice)
    windows = calibration_windows(calib, tokenizer, seq_len, tokens)
    return perplexity(model, windows, list(removed), batch_size=4).ppl
