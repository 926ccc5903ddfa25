"""Recovery: fine-tune a pruned model (LoRA or full) and watch it win back what pruning cost."""
from pathlib import Path

import streamlit as st

from app import jobs, store
from app.recover_state import (RECOVERY_JOB, kept_checkpoint, loss_curve, metrics_table, plan_folder, run_folder,
                               start_recovery)
from app.sidebar import model_or_stop, model_sidebar, set_choice
from app.state import ModelChoice, current_plan, evaluation_setting, remembered
from shedder.errors import ShedderError
from shedder.measurement.calibration import HUB_SOURCES
from shedder.model.loading import zoo_names
from shedder.model.model_folders import local_models, read_json
from shedder.paths import data_root, inside_data_root
from shedder.recovery.recover import CHECKPOINT, DEFAULT_LR, LOG_FILE, RESULT_FILE, Evaluation, RecoverySettings

TEXT_NAMES = ("wiki", "wiki-train", "wiki-test", *HUB_SOURCES)
INSIDE_ROOT = (f"Paths stay inside {data_root()} (relative ones start there) or the cache; SHEDDER_DATA_ROOT "
               "sets that folder.")

choice = model_sidebar()
st.title("Recovery")
st.caption("The paper's third stage: a short fine-tune of the pruned model, LoRA (merged into the weights "
           "afterwards) or every weight. Measured before and after on wiki-test, which is never trained on; "
           "the share of the pruning loss won back is (pruned - recovered) / (pruned - dense).")


def live_loss(job) -> None:
    """The running recovery's training loss so far, under its progress bar."""
    partial = job.partial or {}
    steps_seen = partial.get("steps") or []
    if steps_seen:
        last = steps_seen[-1]
        st.caption(f"Step {last['step']} of {partial['total']}: loss {last['loss']:.4f}")
        st.plotly_chart(loss_curve(steps_seen, partial["total"]), width="stretch", key="recovery-live")


def show_ended(job) -> None:
    """How this session's last recovery ended, when it failed or was cancelled: what of it is kept."""
    partial = job.partial or {}
    steps_seen = partial.get("steps") or []
    every, total = partial.get("every", 0), partial.get("total", 0)
    if job.state == "failed":
        st.error(job.error)
    elif job.state == "cancelled" and steps_seen:
        reached = steps_seen[-1]["step"]
        kept = kept_checkpoint(reached, total, every)
        st.info(f"{job.label} was cancelled at training step {reached} of {total}. "
                + (f"Its checkpoint of step {kept} is kept (one every {every} steps): pressing the button again with "
                   f"the same settings continues from step {kept}." if kept else
                   f"No checkpoint was written yet (the first comes at step {every or total}): pressing the button "
                   "again trains from the start.")
                + " The measurements of the dense and pruned models are stored and not repeated.")
        st.plotly_chart(loss_curve(steps_seen, total), width="stretch", key="recovery-cancelled")
        st.caption("The training loss until it was cancelled.")
    elif job.state == "cancelled":
        checkpoint = Path(partial.get("folder", "")) / CHECKPOINT
        st.info(f"{job.label} was cancelled while {job.phase}, before a training step of this run. What it measured "
                "is stored and not repeated" + (", and the checkpoint written before is kept" if checkpoint.is_file()
                                                else "") + ": pressing the button again with the same settings continues.")


recovering = jobs.running(RECOVERY_JOB)  # this session's recovery, whatever settings it has, shown on any visit
if recovering is not None:
    jobs.panel(RECOVERY_JOB, show=live_loss)
elif jobs.current(RECOVERY_JOB) is not None:
    show_ended(jobs.current(RECOVERY_JOB))

what = st.radio("Recover", ["an extracted model", "the current plan"], horizontal=True, **remembered("recover-what"))
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
    other = st.text_input("Model folder (empty: choose one the dashboard extracted)", "", help=INSIDE_ROOT,
                          **remembered("recover-folder")).strip()
    if other:
        try:
            source = str(inside_data_root(other, "The model folder"))
        except ShedderError as exc:
            st.error(str(exc))
            st.stop()
    elif extracted:
        source = st.selectbox("Extracted model", list(extracted), **remembered("recover-extracted"),
                              format_func=lambda p: f"{Path(p).name}: {extracted[p].description}")
    else:
        st.info("No extracted model yet: extract one on the Export page, give a folder, or recover the current plan.")
        st.stop()

c1, c2, c3, c4 = st.columns(4)
method = c1.radio("Method", ["lora", "full"], horizontal=True, **remembered("recover-method"),
                  help="LoRA: adapters on the Mamba mixers' in/out projections and attention/MLP projections, merged "
                  "on save. full: every weight.")
steps = int(c2.number_input("Steps", min_value=1, max_value=100_000, value=100, **remembered("recover-steps")))
lr = c3.number_input("Peak learning rate", min_value=1e-7, max_value=1.0, value=DEFAULT_LR[method], format="%.1e",
                     **remembered(f"recover-lr-{method}"))  # each method its own default
batch_size = int(c4.selectbox("Windows per step", [1, 2, 4, 8, 16, 32, 64], index=3,
                              **remembered("recover-batch-size")))
c1, c2, c3, c4 = st.columns(4)
seq_len = int(c1.select_slider("Window (tokens)", [32, 64, 128, 256, 512, 1024, 2048], value=512,
                               **remembered("recover-window")))
data = c2.text_input("Training text", "wiki", **remembered("recover-text"),
                     help=f"wiki (the training split), or a path to a .txt file. {INSIDE_ROOT}")
eval_tokens = c3.select_slider("Held-out tokens", ["512", "2048", "8192", "32768", "131072", "all"], value="32768",
                               **remembered("recover-held-out"))
dense_text = c4.text_input("Dense reference", dense or "", disabled=dense is not None,
                           **(remembered("recover-dense") if dense is None else {}),  # else: the sidebar's model, shown
                           help="The unpruned model (zoo name or folder); empty: found from the folder's plan.json. "
                           + INSIDE_ROOT)
with st.expander("More settings"):
    c1, c2, c3, c4 = st.columns(4)
    rank = int(c1.number_input("LoRA rank", min_value=1, max_value=1024, value=16, **remembered("recover-rank")))
    alpha = float(c2.number_input("LoRA alpha", min_value=0.1, value=32.0, **remembered("recover-alpha")))
    seed = int(c3.number_input("Seed", min_value=0, value=0, **remembered("recover-seed")))
    every = int(c4.number_input("Checkpoint every (steps)", min_value=0, value=50,
                                **remembered("recover-checkpoint-every")))
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
started = (folder / CHECKPOINT).is_file() and not finished  # training resumes only from a checkpoint
label = "Show the result" if finished else ("Continue recovery" if started else "Start recovery")
how_often = f"every {every} steps" if every else "after the last step only"
st.caption(f"Runs in and writes the recovered model to `{store.shown_path(folder)}`, in the background: other pages "
           "and other users keep working, and this page shows it when you come back. Cancel stops it within seconds; "
           f"a checkpoint is written {how_often} (More settings), and pressing the button again with the same "
           "settings continues from the last one. Code shipped in a model folder runs only when *Allow "
           f"remote code* is ticked in the sidebar (now {'ticked' if choice.trust_remote_code else 'not ticked'}) or "
           "the folder is shedder's own extraction.")
if recovering is not None:
    st.caption("Your recovery runs (above); cancel it, or let it finish, to start another.")
elif not finished and st.button(label, type="primary"):
    start_recovery(choice, source, folder, settings, evaluation, dense,
                   current_plan(choice) if what == "the current plan" else None)
    st.rerun()

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
