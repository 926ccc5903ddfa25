"""Recovery: fine-tune a pruned model (LoRA or full) and watch it win back what pruning cost."""
from pathlib import Path

import streamlit as st

from app import store
from app.recover_state import extract_plan, loss_curve, metrics_table, plan_folder, run_folder
from app.sidebar import model_or_stop, model_sidebar, set_choice
from app.state import ModelChoice, current_plan, evaluation_setting
from shedder.errors import ShedderError
from shedder.measurement.calibration import HUB_SOURCES
from shedder.model.loading import zoo_names
from shedder.model.model_folders import local_models, read_json
from shedder.paths import data_root, inside_data_root
from shedder.recovery.recover import DEFAULT_LR, LOG_FILE, RESULT_FILE, Evaluation, RecoverySettings, recover

TEXT_NAMES = ("wiki", "wiki-train", "wiki-test", *HUB_SOURCES)
INSIDE_ROOT = (f"Paths stay inside {data_root()} (relative ones start there) or the cache; SHEDDER_DATA_ROOT "
               "sets that folder.")

choice = model_sidebar()
st.title("Recovery")
st.caption("The paper's third stage: a short fine-tune of the pruned model, LoRA (merged into the weights "
           "afterwards) or every weight. Measured before and after on wiki-test, which is never trained on; "
           "the share of the pruning loss won back is (pruned - recovered) / (pruned - dense).")

what = st.radio("Recover", ["an extracted model", "the current plan"], horizontal=True)
dense = None
if what == "the current plan":
    model, tokenizer, cat = model_or_stop(choice)
    plan = current_plan(choice)
    if not plan.removed:
        st.info("The current plan removes nothing: tick components on the Playground or take a search step first.")
        st.stop()
    st.write(f"The current plan of `{choice.spec}` removes {len(plan.removed)} components; it is extracted "
             f"to `{store.shown_path(plan_folder(plan))}` first, and the sidebar's model is the dense reference.")
    dense = choice.spec
    source = str(plan_folder(plan))
else:
    extracted = {m.path: m for m in local_models() if m.kind == "extracted"}
    other = st.text_input("Model folder (empty: choose one the dashboard extracted)", "", help=INSIDE_ROOT).strip()
    if other:
        try:
            source = str(inside_data_root(other, "The model folder"))
        except ShedderError as exc:
            st.error(str(exc))
            st.stop()
    elif extracted:
        source = st.selectbox("Extracted model", list(extracted),
                              format_func=lambda p: f"{Path(p).name}: {extracted[p].description}")
    else:
        st.info("No extracted model yet: extract one on the Export page, give a folder, or recover the current plan.")
        st.stop()

c1, c2, c3, c4 = st.columns(4)
method = c1.radio("Method", ["lora", "full"], horizontal=True, help="LoRA: adapters on the Mamba mixers' in/out "
                  "projections and attention/MLP projections, merged on save. full: every weight.")
steps = int(c2.number_input("Steps", min_value=1, max_value=100_000, value=100))
lr = c3.number_input("Peak learning rate", min_value=1e-7, max_value=1.0, value=DEFAULT_LR[method], format="%.1e")
batch_size = int(c4.selectbox("Windows per step", [1, 2, 4, 8, 16, 32, 64], index=3))
c1, c2, c3, c4 = st.columns(4)
seq_len = int(c1.select_slider("Window (tokens)", [32, 64, 128, 256, 512, 1024, 2048], value=512))
data = c2.text_input("Training text", "wiki",
                     help=f"wiki (the training split), or a path to a .txt file. {INSIDE_ROOT}")
eval_tokens = c3.select_slider("Held-out tokens", ["512", "2048", "8192", "32768", "131072", "all"], value="32768")
dense_text = c4.text_input("Dense reference", dense or "", disabled=dense is not None,
                           help="The unpruned model (zoo name or folder); empty: found from the folder's plan.json. "
                           + INSIDE_ROOT)
with st.expander("More settings"):
    c1, c2, c3, c4 = st.columns(4)
    rank = int(c1.number_input("LoRA rank", min_value=1, max_value=1024, value=16))
    alpha = float(c2.number_input("LoRA alpha", min_value=0.1, value=32.0))
    seed = int(c3.number_input("Seed", min_value=0, value=0))
    every = int(c4.number_input("Checkpoint every (steps)", min_value=0, value=50))
try:  # typed paths stay inside the data folder; names of texts and zoo models are not paths
    data = data.strip() if data.strip() in TEXT_NAMES else str(inside_data_root(data, "The training text"))
    if dense is None and dense_text.strip() and dense_text.strip() not in zoo_names():
        dense_text = str(inside_data_root(dense_text, "The dense reference"))
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
dense = dense or dense_text.strip() or None
settings = RecoverySettings(method=method, data=data, steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len,
                            seed=seed, rank=rank, alpha=alpha, checkpoint_every=every)
evaluation = Evaluation(tokens=None if eval_tokens == "all" else int(eval_tokens), seq_len=seq_len)
held_out = "all of wiki-test" if eval_tokens == "all" else f"wiki-test, {int(eval_tokens):,} tokens"
st.caption(f"This page measures on its own setting: {held_out}, windows of {seq_len} (the training window); the "
           f"other pages show perplexity on {evaluation_setting().describe()}.")

try:
    folder = run_folder(source, settings, evaluation, dense)
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
finished = read_json(folder / RESULT_FILE)
started = folder.is_dir() and not finished
label = "Show the result" if finished else ("Continue recovery" if started else "Start recovery")
st.caption(f"Runs in and writes the recovered model to `{store.shown_path(folder)}`. Any click elsewhere stops it; pressing "
           "the button again continues from its last checkpoint. Code shipped in a model folder runs only when *Allow "
           f"remote code* is ticked in the sidebar (now {'ticked' if choice.trust_remote_code else 'not ticked'}) or "
           "the folder is shedder's own extraction.")
if not finished and st.button(label, type="primary"):
    bar = st.progress(0.0, text="Preparing ...")
    chart = st.empty()
    seen: list[dict] = []

    def on_step(record: dict, total: int) -> None:
        seen.append(record)
        bar.progress(record["step"] / total, text=f"Step {record['step']} of {total}: loss {record['loss']:.4f}")
        if record["step"] == total or len(seen) % max(1, total // 50) == 0:
            chart.plotly_chart(loss_curve(seen, total), width="stretch", key=f"live-loss-{len(seen)}")

    def on_measure(stage: str, done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Measuring {stage}: {done} of {total}")

    try:
        if what == "the current plan":
            with st.spinner("Extracting the current plan ..."):
                extract_plan(model, tokenizer, plan)
        recover(source, folder, settings, evaluation, dense, choice.device, "auto", choice.trust_remote_code,
                on_step, on_measure)
    except ShedderError as exc:
        st.error(str(exc))
        st.stop()
    bar.empty()
    chart.empty()
    finished = read_json(folder / RESULT_FILE)

if finished:
    share = finished["recovered_share"]
    c1, c2, c3 = st.columns(3)
    c1.metric("bits per byte, recovered", f"{finished['metrics']['recovered']['held_out']['bpb']:.4f}",
              delta=f"{finished['metrics']['recovered']['held_out']['bpb'] - finished['metrics']['pruned']['held_out']['bpb']:+.4f}",
              delta_color="inverse")
    c2.metric("share of the pruning loss recovered", "-" if share["bpb"] is None else f"{share['bpb']:.1%}",
              help="(pruned - recovered) / (pruned - dense) bits per byte on wiki-test" if share["bpb"] is not None
              else "Needs a dense reference")
    c3.metric("training", f"{finished['training']['seconds']:.0f} s",
              help=f"{finished['training']['steps']} steps, {finished['training']['tokens']:,} tokens")
    st.dataframe(metrics_table(finished), hide_index=True)
    steps_log = (read_json(folder / LOG_FILE) or {}).get("steps", [])
    st.plotly_chart(loss_curve(steps_log, finished["training"]["steps"]), width="stretch")
    if st.button("Use the recovered model", help="Load it like any other model (also offered in the sidebar)"):
        set_choice(ModelChoice(str(folder), choice.dtype, choice.device, choice.trust_remote_code))
        st.rerun()
