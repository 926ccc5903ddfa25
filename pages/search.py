"""Search: the Mamba-Shedder greedy search, live and resumable; any step's plan; a Pareto chart."""
from pathlib import Path

import pandas as pd
import streamlit as st

from app import cluster_jobs, jobs, plan_io, store
from app.search_job import NAME as SEARCH_JOB, start_search
from app.figures import counted, pareto_chart, search_trajectory, trajectory_point
from app.pareto import MEASURE_HINT, X_AXES, Y_AXES, axes_points, plan_points
from app.measures import accuracy_settings, latency_settings, plan_file
from app.sidebar import model_or_stop, model_sidebar
from app.state import (evaluation_setting, fingerprint, masked_perplexity, new_plan, plan_perplexity, remembered,
                       set_plan)
from shedder.errors import ShedderError
from shedder.measurement.perplexity import PerplexitySetting
from shedder.paths import data_root, inside_data_root
from shedder.removal.catalogue import KINDS, Component
from shedder.searching.search import Stage, parse_stages

choice = model_sidebar()
st.title("Search")
st.caption(
    "Mamba-Shedder's greedy search: at every step each remaining candidate is removed on top of what is "
    "already removed, and the one whose removal gives the lowest calibration perplexity goes. Hybrids run "
    "stages (e.g. blocks / attention / MLPs, then MLP channel groups, then SSMs). Every step is saved, so "
    "any step's plan can be taken, and a stopped search resumes where it stopped."
)
model, tokenizer, cat = model_or_stop(choice)
fp = fingerprint(choice)
present = [k for k in KINDS if cat.components([k])]


def default_stages() -> str:
    first = [k for k in ("block", "attn", "mlp") if k in present]
    rest = [f"{k}:{min(4, len(cat.components([k])))}" for k in ("mlp_channels", "ssm") if k in present]
    return ";".join([f"{','.join(first)}:{min(2, len(cat.components(first)))}"] * bool(first) + rest)


st.subheader("Settings")
mode = st.radio("What to search", ["one stage", "several stages"], horizontal=True, **remembered("search-mode"),
                help="One stage searches all chosen kinds together; stages run one after another.")
try:
    if mode == "one stage":
        c1, c2 = st.columns([3, 1])
        targets = c1.multiselect("Candidates", present, **remembered(f"search-candidates-{choice.spec}"),
                                 default=[k for k in ("block", "ssm") if k in present] or present[:1])
        most = max(1, len(cat.components(targets)))
        steps = c2.number_input("Steps", min_value=1, max_value=most, value=min(4, most),
                                **remembered(f"search-steps-{choice.spec}-{','.join(targets)}"))
        stages = [Stage(tuple(targets), int(steps))] if targets else []
    else:
        text = st.text_input("Stages", value=default_stages(), **remembered(f"search-stages-{choice.spec}"),
                             help="kinds:steps per stage, stages separated by ';', e.g. block,attn,mlp:3;mlp_channels:20;ssm:18")
        stages = parse_stages(text)
        missing = sorted({t for s in stages for t in s.targets} - set(present))
        if missing:
            raise ShedderError(f"This {cat.model_type} model has no {', '.join(missing)} components; it has {', '.join(present)}.")
        for stage in stages:  # as the one-stage Steps box: at least one step, at most one per candidate
            most = len(cat.components(list(stage.targets)))
            if not 1 <= stage.steps <= most:
                raise ShedderError(f"Stage {','.join(stage.targets)}:{stage.steps}: steps go from 1 to {most}, the "
                                   "number of its candidates in this model.")
        st.dataframe(pd.DataFrame([{"stage": i + 1, "candidates": ", ".join(s.targets), "steps": s.steps}
                                   for i, s in enumerate(stages)]), hide_index=True)
except ShedderError as exc:
    st.error(str(exc))
    stages = []
c1, c2, c3, c4 = st.columns(4)
source = c1.selectbox("Calibration text", ["wiki", "wiki-test", "a .txt file"],
                      help="wiki: Wikipedia lead sections (calibration split); wiki-test: the held-out tenth",
                      **remembered("search-calib"))
calib = source
if source == "a .txt file":
    calib = c1.text_input("Path of the .txt file", help=f"Inside {data_root()} (relative paths start there) or the "
                          "cache; SHEDDER_DATA_ROOT sets that folder", **remembered("search-calib-file")).strip()
    try:
        calib = str(inside_data_root(calib, "The calibration text")) if calib else ""
    except ShedderError as exc:
        st.error(str(exc))
        calib = ""
tokens = c2.select_slider("Tokens", [1024, 2048, 4096, 8192, 16384, 65536], value=4096, **remembered("search-tokens"))
seq_len = c3.select_slider("Window", [128, 256, 512, 1024, 2048], value=256, **remembered("search-window"))
batch_size = int(c4.number_input("Batch size", min_value=1, max_value=64, value=4, **remembered("search-batch-size")))
group_size, reorder = None, None
if "mlp_channels" in present:
    c1, c2 = st.columns(2)
    group_size = int(c1.number_input("MLP channels per group", min_value=1, value=cat.channel_group_size,
                                     **remembered(f"search-group-size-{choice.spec}")))
    # a string for "as stored": a kept value of None would draw the radio with nothing selected
    order = c2.radio("Channel order", ["stored", "l1"], horizontal=True, **remembered("search-channel-order"),
                     format_func=lambda r: "as stored" if r == "stored" else "by weight L1 norm (reference)")
    reorder = None if order == "stored" else order

settings = {"stages": [[list(s.targets), s.steps] for s in stages], "calib": calib, "tokens": tokens,
            "seq_len": seq_len, "batch_size": batch_size, "channel_group_size": group_size, "channel_reorder": reorder}
out_dir = store.search_dir(fp, settings)
done = len(store.read_log(out_dir)["steps"]) if (out_dir / "log.json").is_file() else 0
total_steps = sum(s.steps for s in stages)


# --- searches on a Ray cluster (app/cluster_jobs.py): submitted here, followed in a fragment ---------
def submit_to_cluster() -> None:
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    address = c1.text_input("Ray address", value="auto", **remembered("search-ray-address"), help=(
        "auto: the cluster started with `ray start --head` on this machine; HOST:6379 for another head node; "
        "ray://HOST:10001 through Ray Client. The cluster writes the search's folder, so it must see this "
        "machine's disk (the same machine, or a shared file system)."))
    workers = int(c2.number_input("Workers", min_value=1, max_value=512, value=2, help="One model replica each",
                                  **remembered("search-ray-workers")))
    device = c3.selectbox("Worker device", ["auto", "cpu", "cuda"], **remembered("search-ray-device"),
                          help="auto: GPUs for the workers when the cluster has GPUs")
    gpus = int(c4.number_input("GPUs per worker", min_value=1, max_value=16, value=1, disabled=device == "cpu",
                               **remembered("search-ray-gpus"),
                               help="Above 1: each replica's layers are spread over that many GPUs (a model too big for one)"))
    label = ("Submit to cluster" if not done else "Finished" if done >= total_steps
             else f"Resume on cluster ({done} of {total_steps} steps done)")
    if busy:
        st.caption("This search is running on the cluster (below).")
    if st.button(label, type="primary", disabled=not stages or not calib or done >= total_steps or busy,
                 key=f"submit-{label}"):
        try:  # the dashboard's dtype, so that the cluster searches the weights this folder's fingerprint names
            job = cluster_jobs.make_job(choice.spec, cluster_jobs.dtype_name(model), choice.trust_remote_code, stages,
                                        out_dir, calib, tokens, seq_len, batch_size, group_size, reorder, workers, device,
                                        1 if device == "cpu" else gpus)
            cluster_jobs.submit(job, address)
        except ShedderError as exc:
            st.error(str(exc))
        else:
            st.session_state.setdefault("search_runs", {})[fp] = str(out_dir)
            st.rerun()  # so that the buttons know a search runs there


def follow_on_cluster(folder: Path) -> None:
    """A running cluster search, refreshed every 2 s on its own; the whole page reruns once it ends."""
    @st.fragment(run_every=2)
    def panel() -> None:
        remote = cluster_jobs.follow(folder)
        watched = st.session_state.setdefault("cluster_watched", set())
        if not remote.active:
            if str(folder) in watched:
                watched.discard(str(folder))
                st.rerun()  # results, buttons and the final state are the whole page's to show
            return
        watched.add(str(folder))
        with st.container(border=True):
            total = remote.steps_total or "?"
            st.markdown(f"**Searching on the Ray cluster** ({remote.address or 'auto'}): {remote.state}, "
                        f"{remote.steps_done} of {total} steps done" + (", stopping after the current candidate"
                                                                      if remote.stopping else ""))
            describe_weights(remote)
            if remote.trail:
                st.plotly_chart(search_trajectory(remote.trail), width="stretch", key=f"cluster-live-{folder.name}")
                st.caption("Removed so far: " + ", ".join(f"{t['label']} (perplexity {t['ppl']:.3f})" for t in remote.trail))
            if st.button("Stop", key=f"cluster-stop-{folder.name}", disabled=remote.stopping,
                         help="Stops after the current candidate; finished steps are kept and a re-submit resumes."):
                try:
                    cluster_jobs.stop(remote)
                except ShedderError as exc:
                    st.error(str(exc))
                else:
                    st.rerun()  # shows it stopping

    panel()


def describe_weights(remote) -> None:
    if remote.fingerprint and remote.fingerprint != fp:
        st.warning(f"The cluster searches other weights (fingerprint {remote.fingerprint}) than the dashboard's "
                   f"({fp}): another checkpoint at that path, or another dtype.")


def show_cluster_searches() -> None:
    """Running cluster searches of this model (whatever settings this page shows), and how the one of
    these settings ended."""
    if ray_missing:
        return
    running = cluster_jobs.active_searches(store.search_root(fp))
    for remote in running:
        follow_on_cluster(remote.out_dir)
    ended = on_cluster if on_cluster is not None and not on_cluster.active and on_cluster.out_dir not in {
        s.out_dir for s in running} else None
    if ended is None:
        return
    describe_weights(ended)
    if ended.state == "finished":
        st.caption(f"This search ran on the Ray cluster ({ended.address or 'auto'}) and finished.")
    elif done < total_steps:  # an ended search's message, until the steps are done here or there
        message = {"stopped": f"The search on the Ray cluster was stopped after {ended.steps_done} of "
                              f"{ended.steps_total} steps; submit it again (or run it here) to resume.",
                   "failed": f"The search failed on the Ray cluster: {ended.error}",
                   "lost": ended.error}.get(ended.state, ended.error)
        (st.info if ended.state == "stopped" else st.error)(message)


HERE, CLUSTER = "here (in the dashboard)", "a Ray cluster"
where = st.radio("Where the search runs", [HERE, CLUSTER], horizontal=True, **remembered("search-where"),
                 help="A Ray cluster: the search runs there on its own workers and goes on when the dashboard closes; "
                      "this page follows it (README, Scaling out).")
ray_missing = cluster_jobs.ray_missing()
on_cluster = None if ray_missing or not cluster_jobs.has_job(out_dir) else cluster_jobs.follow(out_dir)
busy = on_cluster is not None and on_cluster.active  # these settings are being searched on the cluster
searching = jobs.running(SEARCH_JOB)  # this session's search in the dashboard, whatever settings it has
if where == HERE:
    label = "Run search" if not done else ("Finished" if done >= total_steps else f"Resume ({done} of {total_steps} steps done)")
    c1, c2 = st.columns([1, 5])
    if c1.button(label, type="primary", disabled=not stages or not calib or done >= total_steps or busy
                 or searching is not None, key=f"run-{label}"):
        st.session_state.setdefault("search_runs", {})[fp] = str(out_dir)
        start_search(choice, stages, out_dir, calib, tokens, seq_len, batch_size, group_size, reorder)
        st.rerun()
    if busy:
        c2.caption("A search with these settings is running on the Ray cluster (below); it writes the same "
                   "folder, so it must end (or be stopped) before one runs here.")
    elif searching is not None and done >= total_steps:
        c2.caption("Your search has done its last step and is finishing (below).")
    elif searching is not None:
        c2.caption("Your search runs in the background (below); cancel it, or let it finish, to start another.")
    elif not done:
        c2.caption("Runs in the background on its own copy of the model: other pages and other users keep working. "
                   "Every finished step is kept; Cancel stops it within seconds and the same settings resume it.")
elif ray_missing:
    st.warning(f"{ray_missing} Searches can only run here.")
else:
    submit_to_cluster()


def live_steps(job) -> None:
    """The running search's finished steps, drawn under its progress bar."""
    trail = (job.partial or {}).get("trail") or []
    if trail:
        st.plotly_chart(search_trajectory(trail), width="stretch", key="search-live")
        st.caption("Removed so far: " + ", ".join(f"{t['label']} (perplexity {t['ppl']:.3f})" for t in trail))


if searching is not None:
    jobs.panel(SEARCH_JOB, show=live_steps)
else:
    ended = jobs.current(SEARCH_JOB)
    partial = (ended.partial or {}) if ended is not None else {}
    if ended is not None and ended.state == "cancelled":
        kept = partial.get("steps_done", 0)
        st.info(f"{ended.label} was cancelled after {kept} of {partial.get('total_steps', '?')} steps. "
                + ("Its finished steps are kept (Results below); " if kept else "No step had finished; ")
                + "run it again with the same settings to resume after the last finished step.")
    elif ended is not None and ended.state == "failed":
        st.error(f"The search failed: {ended.error}")

show_cluster_searches()

# --- a finished (or stopped) search of this model ------------------------------------------------
runs = store.searches(fp)
if not runs:
    if searching is None:
        st.info("No search of this model yet: choose the settings and press Run search.")
    st.stop()
st.subheader("Results")


def describe(run) -> str:
    log = store.read_log(run)
    used = log["settings"]
    stages_text = "; ".join(f"{','.join(t)}:{n}" for t, n in used["stages"])
    return f"{stages_text} · {used['calib']} {used['n_windows']}x{used['seq_len']} · {len(log['steps'])} steps done"


last = st.session_state.get("search_runs", {}).get(fp)
index = next((i for i, r in enumerate(runs) if str(r) == last), 0)
described = {run: describe(run) for run in runs}  # as they are now (a running search's count grows meanwhile)
run_dir = st.selectbox("Search", runs, index=index, format_func=described.get,
                       **remembered(f"search-run-{fp}-{last}"))  # a search started since: shown first again
log = store.read_log(run_dir)
used = log["settings"]
base = [Component.from_dict(c) for c in used["base"]]
calib_run, tokens_run = used["calib"], used["n_windows"] * used["seq_len"]
try:
    start_ppl = masked_perplexity(choice, tuple(base), calib_run, tokens_run, used["seq_len"], used["channel_group_size"],
                                  used["channel_reorder"])
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
trajectory = [{"step": 0, "ppl": start_ppl, "stage": 0, "label": "nothing removed", "params": 0}]
trajectory += [{**trajectory_point(step), "params": step["params_removed"]} for step in log["steps"]]
if len(trajectory) == 1:
    st.info("This search has not finished a step yet.")
    st.stop()
chosen = st.slider("Plan after step", 0, len(trajectory) - 1, len(trajectory) - 1,  # a new step: shown at once
                   **remembered(f"search-step-{run_dir}-{len(trajectory)}"),
                   help="Every step's plan is saved; pick one to use, download or keep.")
st.plotly_chart(search_trajectory(trajectory, chosen), width="stretch")
plan = store.step_plan(run_dir, chosen - 1) if chosen else new_plan(choice, base, used["channel_group_size"],
                                                                    used["channel_reorder"])
setting = evaluation_setting()
searched_on = PerplexitySetting(calib_run, tokens_run, used["seq_len"])
try:
    shown_ppl, shown_start = plan_perplexity(choice, plan, setting), plan_perplexity(choice, new_plan(choice, base), setting)
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
m1, m2, m3, m4 = st.columns(4)
m1.metric("perplexity", f"{shown_ppl:.3f}", delta=f"{shown_ppl - shown_start:+.3f} vs step 0", delta_color="inverse",
          help=f"On {setting.describe()}: the evaluation setting every page shows (sidebar)")
m2.metric("search perplexity", f"{trajectory[chosen]['ppl']:.3f}", delta=f"{trajectory[chosen]['ppl'] - start_ppl:+.3f} vs step 0",
          delta_color="inverse", help=f"On the search's own calibration text: {searched_on.describe()}")
m3.metric("components removed", len(plan.removed))
m4.metric("parameters freed", f"{trajectory[chosen]['params'] / cat.total_params:.1%}",
          help=f"{trajectory[chosen]['params']:,} of {cat.total_params:,}")
st.caption(f"Searched on {searched_on.describe()}; shown on {setting.describe()} (the setting of every page). "
           "The chart above is the search's own perplexity.")
c1, c2, c3, c4 = st.columns([1, 1, 2, 1])
if c1.button("Use in Playground", help="Make this the current plan (Playground, Export & compare)"):
    set_plan(choice, plan)
    st.success(f"The Playground now removes the {counted(len(plan.removed), 'component')} of step {chosen}.")
c2.download_button("Download plan", plan_file(choice, plan, evaluation_setting()), file_name=f"plan_step{chosen:03d}.json",
                   mime="application/json")
plan_io.save_box(fp, plan, "search-step", f"{run_dir.name.rsplit('-', 1)[0]}-step{chosen}", "Save plan", (c3, c4))

with st.expander("Every step"):
    st.dataframe(pd.DataFrame([{
        "step": step["step"] + 1, "stage": step["stage"] + 1, "removed": str(Component.from_dict(step["removed"])),
        "perplexity": step["ppl"], "parameters freed": step["params_removed"],
        "fully evaluated": f"{step['evaluated_fully']} of {len(step['candidates'])}", "seconds": round(step["seconds"], 2),
    } for step in log["steps"]]), hide_index=True, width="stretch")

st.subheader("Trade-offs")
st.caption(f"Every step of this search and every saved plan of this model; perplexity on {setting.describe()} "
           "(the evaluation setting of every page). Accuracy and latency appear for plans measured in the Playground "
           "or on Export & compare (with the settings used there).")
c1, c2 = st.columns(2)
x_axis = c1.radio("Across", list(X_AXES), horizontal=True, **remembered("search-pareto-x"))
y_axis = c2.radio("Up", list(Y_AXES), horizontal=True, **remembered("search-pareto-y"))
named = {f"step {p['step']}": ("search step" if p["step"] else "dense",
                               store.step_plan(run_dir, p["step"] - 1) if p["step"] else new_plan(choice, base))
         for p in trajectory}
named.update({name: ("saved plan", saved) for name, saved in store.saved_plans(fp).items()})
try:
    points = plan_points(choice, named, setting, accuracy_settings(), latency_settings())
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
shown = axes_points(points, x_axis, y_axis)
if len(shown) < 2:
    st.info(f"{len(shown)} of {counted(len(points), 'plan')} {'has' if len(shown) == 1 else 'have'} both values "
            "measured; a chart needs two. "
            + MEASURE_HINT.get(x_axis, MEASURE_HINT.get(y_axis, "")))
else:
    st.plotly_chart(pareto_chart(shown, x_axis, y_axis, X_AXES[x_axis], Y_AXES[y_axis]), width="stretch")
    st.caption(f"{len(shown)} of {len(points)} plans measured on both axes; the dotted line joins those no other plan beats on both.")
