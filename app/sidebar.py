"""The sidebar every page shares: which model is loaded, and how."""
from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import streamlit as st

from shedder.errors import ShedderError
from shedder.jobs import Job, format_seconds
from shedder.measurement.perplexity import PerplexitySetting
from shedder.model.loading import zoo_names
from shedder.model.model_folders import local_models

from . import state
from .state import (EVALUATION_TEXTS, EVALUATION_TOKENS, EVALUATION_WINDOWS, ModelChoice, cancel_load,
                    catalogue, current_choice, default_choice, evaluation_setting, is_loaded, load_job, loaded,
                    set_evaluation_setting)

log = logging.getLogger(__name__)

REMOTE_CODE_HELP = (
    "Some hub models (e.g. Hymba) ship Python code that transformers runs on load. Allow it only for "
    "sources you trust: that code runs with your permissions."
)


def set_choice(choice: ModelChoice) -> None:
    """Choose the model from a page (not the sidebar): the sidebar's widgets are drawn afresh from ``choice``,
    never keeping an input of an earlier choice."""
    st.session_state.model_choice = choice
    st.session_state.sidebar_generation = st.session_state.get("sidebar_generation", 0) + 1


def model_sidebar() -> ModelChoice:
    choice = current_choice()
    key = f"sidebar-{st.session_state.get('sidebar_generation', 0)}-"  # widgets keyed per generation (set_choice)
    with st.sidebar:
        st.header("Model")
        names = zoo_names()
        made = {m.path: m for m in local_models()}  # extracted and recovered by the dashboard, newest first
        sources = ["zoo", *(["extracted / recovered"] if made else []), "local folder or hub id"]
        current = ("zoo" if choice.spec in names or not choice.spec
                   else "extracted / recovered" if choice.spec in made else "local folder or hub id")
        source = st.radio("Source", sources, horizontal=True, index=sources.index(current), key=key + "source")
        if source == "extracted / recovered":
            spec = st.selectbox("Model", list(made), index=list(made).index(choice.spec) if choice.spec in made else 0,
                                format_func=lambda p: f"{Path(p).name} ({made[p].kind})", key=key + "made",
                                help="\n\n".join(f"{Path(p).name}: {m.description}" for p, m in list(made.items())[:8]))
        elif source == "zoo":
            if not names:
                st.warning("No zoo model is installed; use a local folder.")
                spec = ""
            else:
                spec = st.selectbox("Zoo model", names, index=names.index(choice.spec) if choice.spec in names else 0,
                                    key=key + "zoo")
        else:
            spec = st.text_input("Folder or hub id", value="" if choice.spec in names or choice.spec in made else choice.spec,
                                 placeholder="/path/to/model or state-spaces/mamba-130m-hf", key=key + "folder").strip()
        dtype = st.selectbox("dtype", ["auto", "float32", "bfloat16", "float16"],
                             index=["auto", "float32", "bfloat16", "float16"].index(choice.dtype), key=key + "dtype")
        device = st.selectbox("device", ["auto", "cpu", "cuda"], index=["auto", "cpu", "cuda"].index(choice.device),
                              key=key + "device")
        trust = st.checkbox("Allow remote code", value=choice.trust_remote_code, help=REMOTE_CODE_HELP,
                            key=key + "trust")
        new = ModelChoice(spec, dtype, device, trust)
        if new != choice:
            st.session_state.model_choice = new
        evaluation_sidebar()
        workspace_sidebar()
        return new


def evaluation_sidebar() -> PerplexitySetting:
    """The one evaluation setting every page's perplexity is measured with, changed here only."""
    setting = evaluation_setting()
    st.header("Perplexity measured on")
    text = st.selectbox("Evaluation text", EVALUATION_TEXTS, index=EVALUATION_TEXTS.index(setting.text)
                        if setting.text in EVALUATION_TEXTS else 0, key="evaluation-text",
                        help="wiki-test: held-out Wikipedia lead sections; wiki: the calibration split searches use")
    tokens = st.select_slider("Evaluation tokens", EVALUATION_TOKENS, value=setting.tokens, key="evaluation-tokens",
                              help="More tokens: steadier numbers, slower toggles")
    seq_len = st.select_slider("Evaluation window", EVALUATION_WINDOWS, value=setting.seq_len, key="evaluation-window",
                               help="Tokens per window; every next-token prediction in a window counts")
    new = PerplexitySetting(text, int(tokens), int(seq_len))
    if new != setting:
        set_evaluation_setting(new)
    st.caption(f"Every page shows perplexity on {new.describe()}.")
    return new


def workspace_sidebar() -> str:
    """Where this session's saved plans and searches go: its own workspace (the default; its name is kept in the
    page's address, so a reload finds it again) or a named one shared with everyone who opens that name."""
    from . import store

    if "own_workspace" not in st.session_state:
        from_url = st.query_params.get("workspace", "")
        own = from_url if from_url.startswith(store.SESSION_PREFIX) else f"{store.SESSION_PREFIX}{secrets.token_hex(4)}"
        st.session_state["own_workspace"] = own
        st.session_state.setdefault("workspace", from_url or own)
    own = st.session_state["own_workspace"]
    st.session_state.setdefault("workspace", own)
    st.header("Workspace")
    options = ["this session only", "shared, by name"]
    mode = st.radio("Saved plans and searches", options, horizontal=True, key="workspace-mode",
                    index=0 if st.session_state["workspace"] == own else 1,
                    help="Your own workspace: nobody else sees or deletes your saved plans and searches. A named "
                         "one is shared with everyone who opens that name.")
    if mode == options[0]:
        st.session_state["workspace"] = own
    else:
        current = st.session_state["workspace"]
        typed = st.text_input("Workspace name", value="" if current == own else current, key="workspace-name",
                              placeholder="e.g. lab or class-3").strip()
        if typed:
            try:
                st.session_state["workspace"] = store.workspace_name(typed)
            except ShedderError as exc:
                st.error(str(exc))
        else:
            st.session_state["workspace"] = own
    name = st.session_state["workspace"]
    if st.query_params.get("workspace") != name:
        st.query_params["workspace"] = name
    st.caption(f"This session's own workspace ({name}): only you see and delete what you save." if name == own else
               f"Workspace {name}: everyone who opens it sees, and can delete, what is saved there.")
    return name


def model_or_stop(choice: ModelChoice):
    """(model, tokenizer, catalogue) of the chosen model; otherwise say why and stop the page."""
    if not choice.spec:
        st.info("Choose a model in the sidebar.")
        st.stop()
    if not is_loaded(choice):
        job = load_job(choice)
        if not job.wait(state.INLINE_LOAD_S):
            _follow_load(choice, job)
    try:
        model, tokenizer = loaded(choice)
        cat = catalogue(choice)
    except ShedderError as exc:
        _load_failed(choice, str(exc))
    except Exception as exc:  # noqa: BLE001  (a downloaded folder can hold anything: say so, never a traceback)
        log.warning("Loading %s failed", choice.spec, exc_info=True)
        text = str(exc).strip()
        text = text if len(text) <= 600 else text[:600] + " ..."
        _load_failed(choice, f"Could not load {choice.spec!r} ({type(exc).__name__}): {text}")
    st.session_state["last_loaded_choice"] = choice
    return model, tokenizer, cat


def _follow_load(choice: ModelChoice, job: Job) -> None:
    """A load that takes longer than a page run should: its phase, the time so far and a Cancel button, refreshed
    every second; the page draws itself once the model is there. Stops the page."""

    @st.fragment(run_every=1.0)
    def follow() -> None:
        if not job.running:
            st.rerun(scope="app")
        with st.container(border=True):
            elapsed = format_seconds(max(0.0, time.time() - job.started))
            st.info(f"{job.label}: {job.phase}, {elapsed} so far. The page opens when the model is there.")
            if st.button("Cancel", key="cancel-load", help="Stops waiting at once and goes back to the model "
                                                          "loaded before; the load ends in the background, unused."):
                cancel_load(choice)
                previous = st.session_state.get("last_loaded_choice")
                set_choice(previous if previous is not None and previous != choice else default_choice())
                st.rerun(scope="app")

    follow()
    st.stop()


def _load_failed(choice: ModelChoice, message: str) -> None:
    """Show why the chosen model did not load, offer the last one that did, and stop the page."""
    st.error(message)
    previous = st.session_state.get("last_loaded_choice")
    if previous is not None and previous != choice:
        if st.button(f"Back to {previous.spec}", help="The model loaded before this one"):
            set_choice(previous)
            st.rerun()
    else:
        st.info("Choose another model in the sidebar.")
    st.stop()
