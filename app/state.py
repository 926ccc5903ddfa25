"""Session state and cached resources shared by the pages."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import streamlit as st

from shedder.errors import ShedderError
from shedder.jobs import Job

from shedder.measurement.calibration import calibration_windows
from shedder.measurement.perplexity import PerplexitySetting, model_device, perplexity
from shedder.model.identity import model_fingerprint
from shedder.model.kernel_tuning import compile_kernels
from shedder.model.loading import load_model, zoo_names
from shedder.plan import Plan
from shedder.removal.masks import catalogue_of, model_lock

log = logging.getLogger(__name__)

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


# --- loading a model off the page's thread ---------------------------------------------------------
# One load per choice for all sessions. A page waits INLINE_LOAD_S for it in its own run (the demo models load
# in about a second); a longer load goes on as a job the page follows with its elapsed time and a Cancel button.
INLINE_LOAD_S = 3.0
_loads: dict[ModelChoice, Job] = {}
_loads_guard = threading.Lock()
_ready: set[ModelChoice] = set()  # loads handed to ``loaded``'s cache


def _load(choice: ModelChoice, job: Job):
    """The load itself: (model, tokenizer), or the exception it raised (re-raised by ``loaded`` in the page)."""
    job.update(0, 0, phase=f"loading {choice.spec} ({choice.device} device, {choice.dtype} dtype)")
    try:
        result = load_model(choice.spec, choice.dtype, choice.device, choice.trust_remote_code)
    except Exception as exc:  # noqa: BLE001  (model_or_stop says what went wrong)
        return exc
    job.check()  # cancelled meanwhile: the model is dropped here
    if model_device(result[0]).type == "cuda":
        job.update(0, 0, phase="running the model once: the GPU kernels compile on first use (up to a minute)")
        try:
            compile_kernels(result[0])
        except Exception as exc:  # noqa: BLE001  (a model that cannot generate is still loaded; the pages say more)
            log.warning("The model's first run failed: %s", exc)
        job.check()
    return result


def load_job(choice: ModelChoice) -> Job:
    """The running (or finished, not yet cached) load of ``choice``; started when there is none."""
    with _loads_guard:
        job = _loads.get(choice)
        if job is None or job.state in ("cancelled", "failed"):
            job = Job(f"Loading {choice.spec}", lambda job: _load(choice, job))
            _loads[choice] = job
        return job


def is_loaded(choice: ModelChoice) -> bool:
    """Whether ``loaded(choice)`` returns without loading (as far as this process knows)."""
    return choice in _ready


def cancel_load(choice: ModelChoice) -> None:
    """Stop waiting for a load: the page goes on at once; the load itself ends in the background, unused."""
    with _loads_guard:
        job = _loads.pop(choice, None)
    if job is not None:
        job.cancel()


@st.cache_resource(show_spinner="Loading model ...", max_entries=3)
def loaded(choice: ModelChoice):
    """(model, tokenizer), shared by all sessions; masked use is serialised by the model's lock."""
    job = load_job(choice)
    job.wait()
    with _loads_guard:
        if _loads.get(choice) is job:
            del _loads[choice]  # the cache holds the model from now on
    if job.state != "done":
        raise ShedderError(f"Loading {choice.spec} was {job.state}" + (f": {job.error}" if job.error else "."))
    if isinstance(job.result, BaseException):
        raise job.result
    _ready.add(choice)
    return job.result


def catalogue(choice: ModelChoice, channel_group_size: int | None = None):
    return catalogue_of(loaded(choice)[0], channel_group_size)


@st.cache_resource(show_spinner=False, max_entries=8)
def fingerprint(choice: ModelChoice) -> str:
    """The loaded model's fingerprint: names its folders of searches and saved plans."""
    model = loaded(choice)[0]
    with model_lock(model):  # never hash weights another session has masked
        return model_fingerprint(model)


def moot(plan: Plan) -> list:
    """The plan's components inside other removed parts (e.g. the SSM of a removed block): no effect."""
    from shedder.searching.search import implied_by

    return [c for c in plan.removed if (c.kind, c.layer) in implied_by([o for o in plan.removed if o != c])]


def params_freed(choice: ModelChoice, plan: Plan) -> int:
    """Parameters physical removal of the plan would free: exactly what extraction frees (parts inside
    removed parts counted once, head groups counted together)."""
    return catalogue(choice, plan.channel_group_size).params_of(plan.removed)


# --- settings widgets that outlive a page switch --------------------------------------------------

def remembered(key: str) -> dict:
    """A settings widget's keyword arguments: ``key``, and its value kept for the whole browser session
    (streamlit's ``persist_state``). Streamlit drops the value of a widget a run does not draw (every widget of
    another page); these come back as the user left them, and another browser session starts from the defaults.
    A kept value outlives a change of the widget's default, so a setting whose default depends on the model or
    on another setting names them in its key: each gets its own value, starting from its own default."""
    return {"key": key, "persist_state": "session"}


# --- the session's current plan, shared by the Playground, Search and Export pages ---------------
# Kept per model in session state (never in a widget's state, which streamlit drops on a page switch).
# ``plan_version`` changes whenever a page other than the Playground replaces the plan, so the
# Playground's widgets are created afresh from it.

def new_plan(choice: ModelChoice, removed: list = (), channel_group_size: int | None = None,
             channel_reorder: str | None = None) -> Plan:
    """A plan for the loaded model (its fingerprint taken under the model's lock)."""
    cat = catalogue(choice, channel_group_size)
    return Plan(list(removed), cat.model_type, cat.n_layers, fingerprint(choice), cat.channel_group_size, channel_reorder)


def current_plan(choice: ModelChoice) -> Plan:
    plans = st.session_state.setdefault("plans", {})
    if choice.spec not in plans:
        plans[choice.spec] = new_plan(choice)
    return plans[choice.spec]


def plan_version(choice: ModelChoice) -> int:
    return st.session_state.setdefault("plan_versions", {}).get(choice.spec, 0)


def set_plan(choice: ModelChoice, plan: Plan) -> None:
    """Make ``plan`` the current plan (e.g. a search step or an uploaded file)."""
    st.session_state.setdefault("plans", {})[choice.spec] = plan
    versions = st.session_state.setdefault("plan_versions", {})
    versions[choice.spec] = versions.get(choice.spec, 0) + 1


def update_removed(choice: ModelChoice, wanted: list) -> Plan:
    """The current plan with exactly ``wanted`` removed: kept ones in their order, new ones appended."""
    plan = current_plan(choice)
    wanted_set = set(wanted)
    removed = [c for c in plan.removed if c in wanted_set]
    removed += [c for c in wanted if c not in set(removed)]
    if removed != plan.removed:
        plan = Plan(removed, plan.model_type, plan.n_layers, plan.fingerprint, plan.channel_group_size,
                    plan.channel_reorder)
        st.session_state["plans"][choice.spec] = plan
    return plan


def sensitivity_map(choice: ModelChoice, setting: PerplexitySetting):
    """The loaded model's stored leave-one-out map on ``setting`` (``shedder.searching.sensitivity_map``): every component
    scored so far, by any session or the guided tour."""
    from shedder.searching.sensitivity_map import load_map

    return load_map(fingerprint(choice), setting.text, setting.tokens, setting.seq_len)


def start_sensitivity(choice: ModelChoice, kinds: list[str], setting: PerplexitySetting, fresh: bool = False):
    """Score the components of ``kinds`` the map lacks (all of them with ``fresh``) in a background job of this
    session, on the job's own copy of the model; every finished component is saved, so a cancelled run
    resumes where it stopped."""
    from shedder.jobs import guard, private_copy
    from shedder.searching.sensitivity_map import SensitivityMap, fill_map, fill_proxies

    from . import jobs

    model, tokenizer = loaded(choice)
    found = sensitivity_map(choice, setting)
    if fresh:
        found = SensitivityMap(found.fingerprint, found.text, found.tokens, found.seq_len)
    components = catalogue(choice).components(list(kinds))

    def work(job):
        job.update(0, 0, "copying the model")
        copy = private_copy(model)
        job.update(0, 0, "cutting the calibration text")
        windows = calibration_windows(setting.text, tokenizer, setting.seq_len, setting.tokens)
        todo = len(found.missing(components))
        job.update(0, todo, "measuring the perplexity with nothing removed")
        with guard(copy, job):
            fill_map(copy, windows, found, components, should_stop=job.cancelled,
                     progress=lambda d, t: job.update(d, t, "scoring components"),
                     on_component=lambda m: job.publish(len(m.ppl)))
            if not job.cancelled():
                job.update(0, 0, "computing the proxies")
                fill_proxies(copy, windows, found, list(kinds))
        return found

    return jobs.start("sensitivity", f"Sensitivity of {len(components)} components", work)


class _NotCached(Exception):
    """masked_perplexity found nothing cached and was not to measure it."""


@st.cache_data(show_spinner="Measuring perplexity ...", max_entries=256)
def masked_perplexity(choice: ModelChoice, removed: tuple, calib: str, tokens: int, seq_len: int,
                      channel_group_size: int | None = None, channel_reorder: str | None = None,
                      _measured: Callable[[], float | None] | None = None) -> float:
    """Perplexity with ``removed`` masked (a tuple of Components), cached per setting. ``_measured`` (not part of
    the cache key): what gives the value when it is not cached, instead of measuring it here (a job's result);
    when it gives None, nothing is cached and _NotCached is raised."""
    if _measured is not None:
        value = _measured()
        if value is None:
            raise _NotCached
        return value
    from shedder.jobs import foreground

    model, tokenizer = loaded(choice)
    windows = calibration_windows(calib, tokenizer, seq_len, tokens)
    with foreground():  # background jobs pause at their next layer meanwhile: a toggle never waits for them
        plan = Plan(list(removed), channel_group_size=channel_group_size, channel_reorder=channel_reorder)
        return perplexity(model, windows, plan, batch_size=4).ppl


def plan_perplexity(choice: ModelChoice, plan: Plan, setting: PerplexitySetting | None = None,
                    measured: Callable[[], float | None] | None = None) -> float:
    """The plan's perplexity under ``setting`` (default: the session's one evaluation setting); ``measured``: see
    masked_perplexity."""
    setting = setting or evaluation_setting()
    return masked_perplexity(choice, tuple(plan.removed), setting.text, setting.tokens, setting.seq_len,
                             plan.channel_group_size if plan.removed else None, plan.channel_reorder if plan.removed else None,
                             _measured=measured)


def known_perplexity(choice: ModelChoice, plan: Plan, setting: PerplexitySetting,
                     measured: Callable[[], float | None] = lambda: None) -> float | None:
    """The plan's perplexity if it is cached (by any page), else ``measured()`` (a finished job's result, cached from
    then on), else None: never measured here."""
    try:
        return plan_perplexity(choice, plan, setting, measured)
    except _NotCached:
        return None


DENSE_JOB = "dense-perplexity"


def start_dense_perplexity(choice: ModelChoice, setting: PerplexitySetting) -> Job:
    """Measure the perplexity with nothing removed on ``setting`` as this session's job ``DENSE_JOB`` (``job.key``:
    the model and setting), with progress per batch of windows and Cancel acting between batches; the page caches
    its result with ``known_perplexity``."""
    from shedder.jobs import foreground

    from . import jobs

    model, tokenizer = loaded(choice)

    def work(job):
        job.update(0, 0, "cutting the calibration text")
        windows = calibration_windows(setting.text, tokenizer, setting.seq_len, setting.tokens)

        def progress(done, total):
            job.update(done, total, "measuring", "windows")
            job.check()

        progress(0, len(windows))
        # on the shared model, as a toggle measures (the same value), but taking it one batch at a time: a toggle
        # of any session goes first between batches, and other jobs pause only while a batch runs
        return perplexity(model, windows, Plan(), batch_size=4, progress=progress, around_batch=foreground).ppl

    job = jobs.start(DENSE_JOB, "Dense perplexity", work)
    job.key = (choice, setting)
    return job


# --- the one evaluation setting every page measures perplexity with (chosen in the sidebar) ---------
EVALUATION_TEXTS = ("wiki-test", "wiki")
EVALUATION_TOKENS = (1024, 2048, 4096, 8192, 32768)
EVALUATION_WINDOWS = (128, 256, 512, 1024)


def evaluation_setting() -> PerplexitySetting:
    """The session's evaluation setting; 2,048 wiki-test tokens in windows of 256 by default, so that a
    Playground toggle shows its perplexity within a second on a CPU (bench/toggle_latency.py)."""
    return st.session_state.setdefault("evaluation_setting", PerplexitySetting())


def set_evaluation_setting(setting: PerplexitySetting) -> None:
    st.session_state["evaluation_setting"] = setting


@st.cache_data(show_spinner="Generating ...", max_entries=64)
def continuation(choice: ModelChoice, removed: tuple, channel_group_size: int | None, channel_reorder: str | None,
                 prompt: str, new_tokens: int = 20) -> str:
    """The greedy continuation of ``prompt`` with ``removed`` masked."""
    from shedder.removal.masks import masked

    model, tokenizer = loaded(choice)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    from shedder.jobs import foreground

    plan = Plan(list(removed), channel_group_size=channel_group_size, channel_reorder=channel_reorder)
    with foreground(), masked(model, plan):
        out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0], skip_special_tokens=True)


@st.cache_data(show_spinner="Scoring every token ...", max_entries=64)
def token_loss_change(choice: ModelChoice, removed: tuple, channel_group_size: int | None, channel_reorder: str | None,
                      prompt: str, text: str) -> list[tuple[str, float, float]]:
    """For each token of ``text`` after ``prompt`` (``text`` starts with it): (the token, its loss in nats under
    the dense model, under the model with ``removed`` masked), each given the tokens before it."""
    from shedder.jobs import foreground
    from shedder.measurement.token_loss import token_losses

    model, tokenizer = loaded(choice)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    start = len(tokenizer(prompt).input_ids)
    with foreground():
        dense = token_losses(model, ids)
        pruned = token_losses(model, ids, Plan(list(removed), channel_group_size=channel_group_size,
                                               channel_reorder=channel_reorder))
    tokens = [tokenizer.decode(ids[i:i + 1]) for i in range(len(ids))]
    return [(tokens[i], dense[i - 1], pruned[i - 1]) for i in range(max(1, start), len(ids))]
