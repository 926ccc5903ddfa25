"""Export & compare: download and upload plans, extract the pruned model, compare saved plans."""
import json

import pandas as pd
import streamlit as st

from app import plan_io, store
from app.figures import accuracy_bars, counted
from app.measures import accuracy, accuracy_settings, against_dense, plan_file, use_accuracy_settings
from app.sidebar import model_or_stop, model_sidebar
from app.state import (current_plan, evaluation_setting, fingerprint, new_plan, params_freed, plan_perplexity,
                       remembered, set_plan)
from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.formats.reference_format import to_reference
from shedder.measurement.evaluation import ROUGH_STDERR
from shedder.measurement.tasks import PAPER_TASKS
from shedder.model.model_folders import extracted_dir
from shedder.paths import data_root, inside_data_root
from shedder.plan import Plan
from shedder.removal.masks import model_lock

choice = model_sidebar()
st.title("Export & compare")
model, tokenizer, cat = model_or_stop(choice)
fp = fingerprint(choice)
plan = current_plan(choice)


def freed(p: Plan) -> int:
    return params_freed(choice, p)


def save_box(p: Plan, key: str, default: str) -> None:
    plan_io.save_box(fp, p, key, default)


# --- the current plan ----------------------------------------------------------------------------
st.subheader("The current plan")
if plan.removed:
    st.write(f"{counted(len(plan.removed), 'component')} removed, {freed(plan):,} parameters freed "
             f"({freed(plan) / cat.total_params:.1%}): " + ", ".join(map(str, plan.removed)))
else:
    st.info("Nothing is removed yet: tick components in the Playground, or take a step's plan on the Search page.")
c1, c2 = st.columns(2)
c1.download_button("Download (shedder plan, JSON)", plan_file(choice, plan, evaluation_setting()), file_name="plan.json",
                   mime="application/json", disabled=not plan.removed)
try:
    reference = json.dumps(to_reference(plan, model), indent=4)
    c2.download_button("Download (reference pruning_config.json)", reference, file_name="pruning_config.json",
                       mime="application/json", disabled=not plan.removed,
                       help="The format of the Mamba-Shedder reference code")
except ShedderError as exc:
    c2.warning(f"Reference format: {exc}")
if plan.removed:
    save_box(plan, "current", f"plan-{len(plan.removed)}")

# --- upload --------------------------------------------------------------------------------------
st.subheader("Load a plan")
upload = st.file_uploader("A plan file: ours, or the reference code's pruning_config.json", type=["json"],
                          help=f"At most {plan_io.MAX_UPLOAD_BYTES:,} bytes")
if upload is not None:
    try:
        uploaded = plan_io.read_upload(upload.name, upload.getvalue(), model, fp)
    except ShedderError as exc:
        st.error(str(exc))
    else:
        st.success(f"{upload.name} fits this model: {len(uploaded.plan.removed)} removals "
                   f"({', '.join(map(str, uploaded.plan.removed[:12]))}"
                   f"{' ...' if len(uploaded.plan.removed) > 12 else ''}).")
        if uploaded.dropped:
            st.info(f"Not part of a plan, so not kept (nor saved): {', '.join(uploaded.dropped)}.")
        confirmed = not uploaded.needs_confirmation
        if uploaded.mapping is not None:
            st.warning(f"A reference config names no model: its indices count the layers that hold each kind, so a "
                       "config made for another layout (e.g. a Mamba-2's on a hybrid) means other layers here. "
                       f"Check how it reads on this model: {uploaded.mapping}")
            confirmed = st.checkbox("The mapping is what I meant", key=f"confirm-{uploaded.digest}-{fp}")
        elif uploaded.other_weights:
            st.warning(uploaded.other_weights)
            confirmed = st.checkbox("Use it on these weights anyway", key=f"confirm-{uploaded.digest}-{fp}")
        if confirmed:
            adopted = uploaded.adopted(fp)  # from now on a plan for these weights
            if st.button("Make it the current plan"):
                set_plan(choice, adopted)
                st.rerun()
            save_box(adopted, "uploaded", upload.name.removesuffix(".json"))
        else:
            st.caption("Tick the box above to make it the current plan or save it.")

# --- extraction ----------------------------------------------------------------------------------
st.subheader("Extract the pruned model")
st.caption("Writes a physically smaller model (the removed parts deleted, the config rewritten) that loads "
           "without shedder. Masks alone make nothing smaller or faster.")
default_folder = extracted_dir() / f"{cat.model_type}-{fp[:8]}-{len(plan.removed)}removed"
if default_folder.resolve().is_relative_to(data_root()):
    default_folder = default_folder.resolve().relative_to(data_root())
folder = st.text_input("Folder", value=str(default_folder), **remembered(f"export-folder-{default_folder}"),
                       help=f"Inside {data_root()} (relative paths start there); SHEDDER_DATA_ROOT sets that folder")
try:
    target = inside_data_root(folder, "The folder")
    st.caption(f"Writes to `{store.shown_path(target)}`")
except ShedderError as exc:
    target = None
    st.error(str(exc))
if st.button("Extract", disabled=not plan.removed or target is None):
    try:
        with st.spinner("Extracting ..."), model_lock(model):  # never copy weights another session has masked
            result = extract(model, tokenizer, plan, target)
        st.success(f"Wrote {store.shown_path(result.out_dir)}: {result.params_before:,} -> {result.params_after:,} parameters "
                   f"({1 - result.params_after / result.params_before:.1%} fewer).")
        remote = ", trust_remote_code=True" if getattr(result, "needs_remote_code", False) else ""
        st.code("from transformers import AutoModelForCausalLM\n"
                f"model = AutoModelForCausalLM.from_pretrained({store.shown_path(result.out_dir)!r}{remote})", language="python")
        if remote:
            st.caption("This layout needs the small model file written next to the weights (no shedder needed).")
    except ShedderError as exc:
        st.error(str(exc))

# --- comparison ----------------------------------------------------------------------------------
st.subheader("Compare saved plans")
saved = store.saved_plans(fp)
if not saved:
    st.info("No saved plan for this model yet: save the current plan above, or a search step on the Search page.")
    st.stop()
picked = st.multiselect("Plans", list(saved), default=list(saved)[:4],  # a plan saved since: the default again
                        **remembered(f"export-plans-{fp}-{hash(tuple(saved))}"))
setting = evaluation_setting()
settings = accuracy_settings()
c1, c2, c3 = st.columns([3, 1, 1])
tasks = c1.multiselect("Zero-shot tasks", PAPER_TASKS, default=settings["tasks"])
limit = c2.number_input("Documents per task", min_value=5, max_value=5000, value=settings["limit"],
                        help="A seeded subsample: the same documents for every plan")
evaluate = c3.button("Evaluate accuracy", disabled=not tasks, help="Scores the dense model and every chosen plan")
settings = use_accuracy_settings(tasks, limit) if tasks else settings

plans = {"dense": new_plan(choice), **{name: saved[name] for name in picked}}
bar = st.progress(0.0, text="Scoring ...") if evaluate else None
rows, bars, dense_acc = [], [], None
try:
    for n, (name, p) in enumerate(plans.items()):
        if evaluate:
            bar.progress(n / len(plans), text=f"Scoring {name} ({n + 1} of {len(plans)}) ...")
        acc = accuracy(choice, p, **settings, compute=evaluate)
        row = {"plan": name, "removed": len(p.removed), "parameters freed": f"{freed(p) / cat.total_params:.1%}",
               "perplexity": round(plan_perplexity(choice, p, setting), 3)}
        if acc is not None:
            dense_acc = acc if name == "dense" else dense_acc
            row["average accuracy"] = round(acc["average"], 4)
            if dense_acc is not None:
                change = against_dense(acc, dense_acc)["average"]
                row["change vs dense"] = "-" if name == "dense" else change.describe()
            for task, result in acc["tasks"].items():
                err = result["stderr"].get(result["paper_metric"])
                row[task] = f"{result['paper_value']:.3f}" + (f" ± {err:.3f}" if err is not None else "")
                bars.append({"plan": name, "task": task, "value": result["paper_value"], "stderr": err})
        elif dense_acc is not None or name == "dense":
            row["average accuracy"] = "not evaluated"
        rows.append(row)
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
if bar is not None:
    bar.empty()
st.dataframe(pd.DataFrame(rows).fillna("not evaluated"), hide_index=True, width="stretch")
st.caption(f"Perplexity on {setting.describe()} (the evaluation setting of every page, chosen in the sidebar). "
           f"Change vs dense: the plan's average accuracy minus the dense model's on the same documents, with its "
           f"standard error; significant = beyond 1.96 standard errors, rough = standard error above {ROUGH_STDERR}.")
if bars:
    st.plotly_chart(accuracy_bars(bars), width="stretch")
    st.caption(f"Accuracy on {settings['limit']} documents per task (seed {settings['seed']}); error bars: standard error. "
               "The paper's metric per task: acc for arc_easy, winogrande and LAMBADA, acc_norm otherwise.")
else:
    st.caption("Press Evaluate accuracy to score these plans on a subsample of the zero-shot tasks.")

with st.expander("Delete a saved plan"):
    gone = st.selectbox("Plan", list(saved), key="delete-which")
    if st.button("Delete", key="delete"):
        store.delete_plan(fp, gone)
        st.rerun()
