"""Playground: remove components by hand and watch perplexity, size, latency, accuracy and generations."""
import pandas as pd
import streamlit as st

from app.figures import architecture_strip
from app.measures import (LATENCY_REPEATS, LATENCY_WARMUP, accuracy, accuracy_settings, against_dense, latency,
                          latency_settings, plan_file, use_accuracy_settings)
from app.sidebar import model_or_stop, model_sidebar
from app.state import (catalogue, continuation, current_plan, evaluation_setting, moot, params_freed, plan_perplexity,
                       plan_version, update_removed)
from shedder.catalogue import GROUP_KINDS, KIND_HELP, SUB_BLOCK_KINDS
from shedder.errors import ShedderError
from shedder.evaluation import ROUGH_STDERR
from shedder.plan import Plan
from shedder.tasks import PAPER_TASKS

choice = model_sidebar()
st.title("Playground")
st.caption("Pick components to remove (exactly as Mamba-Shedder defines removal) and see what it costs. "
           "Nothing is changed for good: every evaluation restores the model afterwards.")
model, tokenizer, _ = model_or_stop(choice)
plan = current_plan(choice)
cat = catalogue(choice, plan.channel_group_size)
version = plan_version(choice)

setting = evaluation_setting()

wanted = []
for kind in SUB_BLOCK_KINDS:
    layers = [c.layer for c in cat.components([kind])]
    if not layers:
        continue
    sizes = sorted({cat.params_of(c) for c in cat.components([kind])})
    size = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,} to {sizes[-1]:,}"
    picked = st.pills(f"{kind}: {KIND_HELP[kind]} ({size} parameters each)", layers, selection_mode="multi",
                      default=[c.layer for c in plan.removed if c.kind == kind], key=f"pick-{kind}-{choice.spec}-{version}",
                      format_func=lambda layer: f"{layer}")
    wanted += [c for c in cat.components([kind]) if c.layer in picked]
groups = cat.components(GROUP_KINDS)
if groups:
    wanted += st.multiselect("Heads and MLP channel groups (kind@layer[group])", groups, format_func=str,
                             default=[c for c in plan.removed if c.kind in GROUP_KINDS],
                             key=f"groups-{choice.spec}-{version}")
plan = update_removed(choice, wanted)
removed = tuple(plan.removed)

try:
    dense = plan_perplexity(choice, Plan(), setting)
    pruned = plan_perplexity(choice, plan, setting)
except ShedderError as exc:
    st.error(str(exc))
    st.stop()
freed = params_freed(choice, plan)
m1, m2, m3 = st.columns(3)
m1.metric("perplexity", f"{pruned:.3f}", delta=f"{pruned - dense:+.3f} vs dense" if removed else None,
          delta_color="inverse", help=f"On {setting.describe()}; dense: {dense:.3f}")
m2.metric("components removed", len(removed))
m3.metric("parameters freed", f"{freed:,} ({freed / cat.total_params:.1%})",
          help=f"Of {cat.total_params:,}: what physical removal would delete (masks alone make nothing smaller or faster)")
st.caption(f"Perplexity on {setting.describe()} (change it in the sidebar, for every page). The default 2,048 "
           "tokens let a change show its perplexity within a second on a CPU (bench/toggle_latency.py).")
if removed:
    st.plotly_chart(architecture_strip(cat, plan.removed), width="stretch", key="playground-strip")
if moot(plan):
    st.caption(f"No effect: {', '.join(map(str, moot(plan)))} (inside a removed block, attention or MLP).")
st.download_button("Download this plan (JSON)", plan_file(choice, plan, setting), file_name="plan.json",
                   mime="application/json", disabled=not removed)

# --- latency of the physically extracted model ---------------------------------------------------
st.subheader("Latency")
lat_settings = latency_settings()
st.caption(f"The extracted model (removed parts deleted, not masked) and the dense one generating "
           f"{lat_settings['new_tokens']} tokens after a {lat_settings['prompt_len']}-token prompt, batch 1, timed in "
           f"turns {LATENCY_REPEATS} times each after {LATENCY_WARMUP} warm-ups; median with its interquartile range.")
if st.button("Measure latency"):
    bar = st.progress(0.0, text="Extracting and timing ...")
    try:
        latency(choice, plan, **lat_settings, compute=True,
                progress=lambda d, t: bar.progress(d / t, text=f"Timed {d} of {t} pairs"))
    except ShedderError as exc:
        st.error(str(exc))
    bar.empty()
timed = latency(choice, plan, **lat_settings)
if timed is not None:
    sp, ext, den = timed["speedup"], timed["extracted_ms"], timed["dense_ms"]
    l1, l2, l3 = st.columns(3)
    l1.metric("prefill + decode", f"{ext['median']:.1f} ms", help=f"Extracted model, median of {ext['runs']} runs; "
              f"middle half {ext['q1']:.1f} to {ext['q3']:.1f} ms, all within {ext['min']:.1f} to {ext['max']:.1f} ms")
    l2.metric("speedup", f"{sp['median']:.2f}x", help="dense time / extracted time, per pair of runs; "
              f"{timed['device']}")
    l3.metric("dense", f"{den['median']:.1f} ms", help=f"median of {den['runs']} runs; middle half {den['q1']:.1f} "
              f"to {den['q3']:.1f} ms")
    ideal = f"; the cost model's ideal: {timed['ideal_speedup']:.2f}x" if timed["ideal_speedup"] else ""
    st.caption(f"Speedup {sp['median']:.2f}x, middle half of the {sp['runs']} pairs {sp['q1']:.2f}x to {sp['q3']:.2f}x "
               f"(all {sp['min']:.2f}x to {sp['max']:.2f}x){ideal}. Measured {timed['when']} on {timed['device']}.")
    for note in timed["notes"]:
        st.warning(f"Read with care: {note}.")
    if len(timed["history"]) > 1:
        with st.expander(f"Every measurement of this plan ({len(timed['history'])})"):
            st.dataframe(pd.DataFrame([{
                "when": h["when"], "speedup (median)": f"{h['speedup']['median']:.2f}x",
                "middle half": f"{h['speedup']['q1']:.2f}x to {h['speedup']['q3']:.2f}x",
                "extracted (ms)": round(h["extracted_ms"]["median"], 1), "dense (ms)": round(h["dense_ms"]["median"], 1),
                "pairs": h["speedup"]["runs"], "device": h["device"],
            } for h in reversed(timed["history"])]), hide_index=True)
elif removed:
    st.caption("Press Measure latency to time the extracted model against the dense one.")

# --- zero-shot accuracy on a subsample -------------------------------------------------------------
st.subheader("Accuracy")
settings = accuracy_settings()
c1, c2, c3 = st.columns([3, 1, 1])
tasks = c1.multiselect("Zero-shot tasks", PAPER_TASKS, default=settings["tasks"])
limit = c2.number_input("Documents per task", min_value=5, max_value=5000, value=settings["limit"],
                        help="A seeded subsample: dense and pruned see the same documents")
if tasks:
    settings = use_accuracy_settings(tasks, limit)
if c3.button("Evaluate accuracy", disabled=not tasks):
    bar = st.progress(0.0, text="Scoring ...")
    try:
        for name, p in (("dense", Plan()), ("pruned", plan)):
            accuracy(choice, p, **settings, compute=True,
                     progress=lambda d, t, name=name: bar.progress(d / t, text=f"Scoring the {name} model: {d} of {t}"))
    except ShedderError as exc:
        st.error(str(exc))
    bar.empty()
scored = {name: accuracy(choice, p, **settings) for name, p in (("dense", Plan()), ("pruned", plan))}
if all(scored.values()):
    paired = against_dense(scored["pruned"], scored["dense"])
    average = paired["average"]
    st.metric("average accuracy", f"{average.value:.3f}",
              delta=average.describe() if removed else None, delta_color="normal",
              help=f"dense: {average.dense:.3f}. The change is paired: the pruned minus the dense score on the same "
                   "documents, with its standard error; significant = beyond 1.96 standard errors.")
    st.dataframe(pd.DataFrame([{
        "task": task, "metric": d.metric, "pruned": d.value,
        "± stderr": scored["pruned"]["tasks"][task]["stderr"].get(d.metric), "dense": d.dense,
        "change vs dense": f"{d.difference:+.3f}" + ("" if d.stderr is None else f" ± {d.stderr:.3f}"),
        "significant": "yes" if d.significant else "no", "documents": d.n_docs,
    } for task, d in paired.items() if task != "average"]), hide_index=True)
    st.caption("± stderr: of the pruned score alone. Change vs dense: paired, the mean per-document difference on "
               "the same documents with its standard error (much smaller than the scores' own).")
    if average.rough:
        st.caption(f"Rough: the change's standard error is above {ROUGH_STDERR}; evaluate more documents per task "
                   "to narrow it.")
else:
    st.caption("Press Evaluate accuracy to score the dense and the pruned model on the same documents.")

# --- generations ---------------------------------------------------------------------------------
st.subheader("Generations")
with st.form("generate"):
    prompt = st.text_input("Prompt", value="The history of the city")
    go = st.form_submit_button("Generate")
key = (choice.spec, removed, prompt)
if go and prompt.strip():
    try:
        st.session_state["generations"] = (key, continuation(choice, (), None, None, prompt),
                                           continuation(choice, removed, plan.channel_group_size, plan.channel_reorder, prompt))
    except ShedderError as exc:
        st.error(str(exc))
shown = st.session_state.get("generations")
if shown and shown[0] == key:
    left, right = st.columns(2)
    left.markdown("**dense**")
    left.write(shown[1])
    right.markdown(f"**with {len(removed)} removed**")
    right.write(shown[2])
