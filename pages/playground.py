"""Playground: remove components by hand and watch perplexity, size, latency, accuracy and generations."""
import html

import pandas as pd
import streamlit as st

from app import jobs
from app.figures import architecture_strip
from app.measures import (LATENCY_REPEATS, LATENCY_WARMUP, accuracy, accuracy_settings, against_dense, latency,
                          latency_settings, plan_file, refine_key, start_refining, use_accuracy_settings)
from app.sidebar import model_or_stop, model_sidebar
from app.state import (catalogue, continuation, current_plan, evaluation_setting, moot, params_freed, plan_perplexity,
                       plan_version, remembered, sensitivity_map, token_loss_change, update_removed)
from shedder.errors import ShedderError
from shedder.measurement.evaluation import ROUGH_STDERR
from shedder.measurement.refine import changed_documents, document_text
from shedder.measurement.tasks import PAPER_TASKS
from shedder.plan import Plan
from shedder.removal.catalogue import GROUP_KINDS, KIND_HELP, SUB_BLOCK_KINDS

choice = model_sidebar()
st.title("Playground")
st.caption("Pick components to remove (exactly as Mamba-Shedder defines removal) and see what it costs. "
           "Nothing is changed for good: every evaluation restores the model afterwards.")
model, tokenizer, _ = model_or_stop(choice)
plan = current_plan(choice)
cat = catalogue(choice, plan.channel_group_size)
version = plan_version(choice)

setting = evaluation_setting()

# --- toggles coloured by their measured sensitivity (the Sensitivity page's map on this evaluation setting) --
SHADES = ((0.0, "blue", "lowers perplexity"), (1.0, "green", "under +1%"), (10.0, "yellow", "+1% to +10%"),
          (100.0, "orange", "+10% to +100%"), (float("inf"), "red", "over +100%"))
measured = sensitivity_map(choice, setting)


def change_of(component) -> float | None:
    """The perplexity change (%) with ``component`` alone removed, where the map has it."""
    rows = measured.scores([component]) if measured.base_ppl else []
    return 100 * rows[0]["delta"] / measured.base_ppl if rows else None


def shaded(text: str, percent: float | None) -> str:
    if percent is None:
        return text
    colour = next(c for top, c, _ in SHADES if (percent < top if top else percent < 0))
    return f":{colour}-background[{text}]"


shown_any = False
wanted = []
for kind in SUB_BLOCK_KINDS:
    layers = [c.layer for c in cat.components([kind])]
    if not layers:
        continue
    sizes = sorted({cat.params_of(c) for c in cat.components([kind])})
    size = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,} to {sizes[-1]:,}"
    changes = {c.layer: change_of(c) for c in cat.components([kind])}
    shown_any |= any(v is not None for v in changes.values())
    picked = st.pills(f"{kind}: {KIND_HELP[kind]} ({size} parameters each)", layers, selection_mode="multi",
                      default=[c.layer for c in plan.removed if c.kind == kind], key=f"pick-{kind}-{choice.spec}-{version}",
                      format_func=lambda layer, changes=changes: shaded(f"{layer}", changes[layer]))
    wanted += [c for c in cat.components([kind]) if c.layer in picked]
groups = cat.components(GROUP_KINDS)
if groups:
    group_change = {c: change_of(c) for c in groups}
    wanted += st.multiselect("Heads and MLP channel groups (kind@layer[group])", groups,
                             format_func=lambda c: str(c) if group_change[c] is None else f"{c} ({group_change[c]:+.2g}%)",
                             default=[c for c in plan.removed if c.kind in GROUP_KINDS],
                             key=f"groups-{choice.spec}-{version}")
if shown_any:
    st.caption("Colour of a layer: the perplexity change with that part alone removed, measured on "
               f"{setting.describe()} (the Sensitivity page's map): "
               + ", ".join(f":{c}-background[{text}]" for _, c, text in SHADES) + ". Uncoloured: not scored yet.")
else:
    st.caption("Score the components on the Sensitivity page (or take the guided tour) to colour these by how much "
               "removing each one costs.")
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

# --- accuracy and latency, refined live in the background after every change -----------------------
settings = accuracy_settings()
c1, c2, c3 = st.columns([3, 1, 2])
tasks = c1.multiselect("Zero-shot tasks", PAPER_TASKS, default=settings["tasks"])
limit = c2.number_input("Documents per task", min_value=5, max_value=5000, value=settings["limit"],
                        help="A seeded subsample: dense and pruned see the same documents")
if tasks:
    settings = use_accuracy_settings(tasks, limit)
live = c3.toggle("Live: refine latency and accuracy after every change", value=True, **remembered("live-refine"),
                 help="In the background, on its own copy of the model: the latency as timed pairs accumulate, then "
                      "the accuracy over growing document subsets. The next change cancels it; a change never waits.")
lat_settings = latency_settings()
timed = latency(choice, plan, **lat_settings) if removed else None
scored = {name: accuracy(choice, p, **settings) for name, p in (("dense", Plan()), ("pruned", plan))} if tasks else {}
need_latency = bool(removed) and timed is None
need_accuracy = bool(removed) and bool(tasks) and not all(scored.values())
key = refine_key(choice, plan)
job = jobs.current("refine")
mine = job is not None and getattr(job, "key", None) == key
if job is not None and job.running and not mine:
    job.cancel()  # the plan changed: its measurements are moot (the new ones start below)
    st.session_state["refine_stopped"] = job.describe()
stopped = st.session_state.pop("refine_stopped", None)
tried = st.session_state.setdefault("refine_tried", set())
if (need_latency or need_accuracy) and not (mine and job.running):
    if live and key not in tried:
        tried.add(key)
        job, mine = start_refining(choice, plan, need_latency, need_accuracy), True
    elif st.button("Measure latency and accuracy", key="refine-now"):
        tried.add(key)
        job, mine = start_refining(choice, plan, need_latency, need_accuracy), True
refining = job if mine else None


def latency_view(timed: dict, final: bool) -> None:
    sp, ext, den = timed["speedup"], timed["extracted_ms"], timed["dense_ms"]
    l1, l2, l3 = st.columns(3)
    l1.metric("prefill + decode", f"{ext['median']:.1f} ms", help=f"Extracted model, median of {ext['runs']} runs; "
              f"middle half {ext['q1']:.1f} to {ext['q3']:.1f} ms, all within {ext['min']:.1f} to {ext['max']:.1f} ms")
    l2.metric("speedup", f"{sp['median']:.2f}x", help="dense time / extracted time, per pair of runs; "
              f"{timed['device']}")
    l3.metric("dense", f"{den['median']:.1f} ms", help=f"median of {den['runs']} runs; middle half {den['q1']:.1f} "
              f"to {den['q3']:.1f} ms")
    ideal = f"; the cost model's ideal: {timed['ideal_speedup']:.2f}x" if timed["ideal_speedup"] else ""
    state = (f"Measured {timed['when']} on {timed['device']}." if final else
             f"**Refining**: {sp['runs']} of {LATENCY_REPEATS} pairs so far, on {timed['device']}.")
    st.caption(f"Speedup {sp['median']:.2f}x, middle half of the {sp['runs']} pairs {sp['q1']:.2f}x to {sp['q3']:.2f}x "
               f"(all {sp['min']:.2f}x to {sp['max']:.2f}x){ideal}. {state}")
    if final:
        for note in timed["notes"]:
            st.warning(f"Read with care: {note}.")


def accuracy_view(dense: dict, pruned: dict, docs: int, final: bool) -> None:
    paired = against_dense(pruned, dense)
    average = paired["average"]
    st.metric("average accuracy", f"{average.value:.3f}", delta=average.describe() if removed else None,
              delta_color="normal",
              help=f"dense: {average.dense:.3f}. The change is paired: the pruned minus the dense score on the same "
                   "documents, with its standard error; significant = beyond 1.96 standard errors.")
    if not final:
        st.caption(f"**Refining**: on {docs} of {settings['limit']} documents per task so far; the standard error "
                   "narrows as documents are added.")
    st.dataframe(pd.DataFrame([{
        "task": task, "metric": d.metric, "pruned": d.value,
        "± stderr": pruned["tasks"][task]["stderr"].get(d.metric), "dense": d.dense,
        "change vs dense": f"{d.difference:+.3f}" + ("" if d.stderr is None else f" ± {d.stderr:.3f}"),
        "significant": "yes" if d.significant else "no", "documents": d.n_docs,
    } for task, d in paired.items() if task != "average"]), hide_index=True)
    st.caption("± stderr: of the pruned score alone. Change vs dense: paired, the mean per-document difference on "
               "the same documents with its standard error (much smaller than the scores' own).")
    if average.rough:
        st.caption(f"Rough: the change's standard error is above {ROUGH_STDERR}; evaluate more documents per task "
                   "to narrow it.")
    if final:
        changed = changed_documents(dense, pruned)
        with st.expander(f"Documents whose score changed ({len(changed)} of {average.n_docs})"):
            if changed:
                rows = []
                for row in changed[:200]:
                    try:
                        text, answer = document_text(row["task"], row["doc"])
                    except Exception:  # noqa: BLE001  (online-only data: show the index alone)
                        text, answer = "", ""
                    rows.append({"task": row["task"], "document": row["doc"],
                                 "dense": row["dense"], "pruned": row["pruned"],
                                 "became": "right" if row["pruned"] > row["dense"] else "wrong",
                                 "prompt": text, "correct answer": answer})
                st.dataframe(pd.DataFrame(rows), hide_index=True)
                st.caption("Per document, its task's metric (as in the table above: 1 = the model's top choice was the "
                           "right answer) for the dense and the pruned model.")
            else:
                st.caption("Every document scored the same with and without the removal.")


def measurements() -> None:
    job = jobs.current("refine")
    partial = (job.partial or {}) if refining is not None and job is refining else {}
    st.subheader("Latency")
    st.caption(f"The extracted model (removed parts deleted, not masked) and the dense one generating "
               f"{lat_settings['new_tokens']} tokens after a {lat_settings['prompt_len']}-token prompt, batch 1, timed "
               f"in turns {LATENCY_REPEATS} times each after {LATENCY_WARMUP} warm-ups; median with its interquartile "
               "range.")
    stored = latency(choice, plan, **lat_settings) if removed else None
    if stored is not None:
        latency_view(stored, True)
        if len(stored["history"]) > 1:
            with st.expander(f"Every measurement of this plan ({len(stored['history'])})"):
                st.dataframe(pd.DataFrame([{
                    "when": h["when"], "speedup (median)": f"{h['speedup']['median']:.2f}x",
                    "middle half": f"{h['speedup']['q1']:.2f}x to {h['speedup']['q3']:.2f}x",
                    "extracted (ms)": round(h["extracted_ms"]["median"], 1),
                    "dense (ms)": round(h["dense_ms"]["median"], 1), "pairs": h["speedup"]["runs"], "device": h["device"],
                } for h in reversed(stored["history"])]), hide_index=True)
    elif partial.get("latency"):
        latency_view({**partial["latency"], "when": ""}, False)
    elif partial.get("latency_error"):
        st.error(f"Latency not measured: {partial['latency_error']}")
    elif removed:
        st.caption("Refining: timing starts in a moment." if refining is not None and refining.running else
                   "Not measured yet.")
    st.subheader("Accuracy")
    final = {name: accuracy(choice, p, **settings) for name, p in (("dense", Plan()), ("pruned", plan))} if tasks else {}
    if final and all(final.values()):
        accuracy_view(final["dense"], final["pruned"], settings["limit"], True)
    elif partial.get("accuracy"):
        a = partial["accuracy"]
        accuracy_view(a["dense"], a["pruned"], a["docs"], a["final"])
    elif removed:
        st.caption("Zero-shot accuracy of the dense and the pruned model on the same documents: "
                   + ("refining, the first documents are being scored." if refining is not None and refining.running
                      else "not measured yet."))
    if stopped:
        st.caption(f"Stopped refining the previous plan (it was at {stopped}); this plan's measurements start now.")
    if refining is not None:
        if refining.running:
            c1, c2 = st.columns([4, 1])
            c1.progress(refining.fraction, text=f"Refining in the background: {refining.describe()}")
            if c2.button("Cancel", key="refine-cancel", help="Stops at its next layer; what is measured is kept"):
                refining.cancel()
        elif refining.state == "failed":
            st.error(f"Measuring failed: {refining.error}")
        elif refining.state == "cancelled":
            st.caption("Refining was cancelled; the numbers shown are the last it reached.")
        if not refining.running and st.session_state.get("refine_followed") == refining.key:
            st.session_state.pop("refine_followed")
            st.rerun(scope="app")  # stop refreshing: the final numbers are stored now
        if refining.running:
            st.session_state["refine_followed"] = refining.key


st.fragment(measurements, run_every=1.0 if refining is not None and refining.running else None)()

# --- generations ---------------------------------------------------------------------------------
st.subheader("Generations")
with st.form("generate"):
    prompt = st.text_input("Prompt", value="The history of the city", **remembered("playground-prompt"))
    go = st.form_submit_button("Generate")
key = (choice.spec, removed, prompt)
if go and prompt.strip():
    try:
        st.session_state["generations"] = (key, continuation(choice, (), None, None, prompt),
                                           continuation(choice, removed, plan.channel_group_size, plan.channel_reorder, prompt))
    except ShedderError as exc:
        st.error(str(exc))
shown = st.session_state.get("generations")


def coloured(prompt: str, rows: list) -> str:
    """The text with each generated token's background by its loss change (pruned minus dense, in nats): red
    where the removal made it harder to predict, blue where easier; the numbers on hover."""
    spans = [html.escape(prompt)]
    for token, dense_nll, pruned_nll in rows:
        change = pruned_nll - dense_nll
        strength = min(1.0, abs(change) / 2.0)  # full colour at 2 nats
        rgb = "214,39,40" if change > 0 else "33,102,172"
        spans.append(f'<span title="loss {dense_nll:.2f} -> {pruned_nll:.2f} nats ({change:+.2f})" '
                     f'style="background: rgba({rgb},{0.75 * strength:.2f}); border-radius: 3px">'
                     f"{html.escape(token)}</span>")
    return '<div style="line-height: 1.9; white-space: pre-wrap">' + "".join(spans) + "</div>"


if shown and shown[0] == key:
    left, right = st.columns(2)
    try:
        losses = [token_loss_change(choice, removed, plan.channel_group_size, plan.channel_reorder, prompt, text)
                  for text in shown[1:]]
    except ShedderError as exc:
        st.error(str(exc))
        losses = [[], []]
    for column, title, text, rows in ((left, "**dense**", shown[1], losses[0]),
                                      (right, f"**with {len(removed)} removed**", shown[2], losses[1])):
        column.markdown(title)
        column.markdown(coloured(prompt, rows) if rows else html.escape(text), unsafe_allow_html=True)
        if rows:
            worse = sum(1 for _, d, p in rows if p > d)
            mean = sum(p - d for _, d, p in rows) / len(rows)
            column.caption(f"{worse} of {len(rows)} generated tokens got harder to predict with the removal; mean "
                           f"loss change {mean:+.3f} nats per token (hover a token for its numbers).")
    if removed:
        st.caption("Colour: each generated token's loss (negative log-likelihood, given the text before it) with the "
                   "removal minus without it: red = the pruned model finds it harder to predict, blue = easier; full "
                   "colour at 2 nats. Both continuations are scored by both models.")
