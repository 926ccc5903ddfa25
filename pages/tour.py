"""Guided tour: load, sensitivity, toggle, search and export on an embedded demo model (the Mamba-2 one or the
hybrid), in five steps that open at once from results shipped with the model (recomputed in the background when its
weights change)."""
import json

import pandas as pd
import streamlit as st

from app import jobs
from app.figures import counted, percent_scale, search_trajectory, sensitivity_heatmap, signed_log_percent
from app.sidebar import model_sidebar, set_choice
from app.state import ModelChoice, current_choice, loaded, new_plan, remembered, set_plan
from shedder.formats.tour import files_digest, load_tour, make_tour, removed_after, seed_sensitivity
from shedder.measurement.perplexity import PerplexitySetting
from shedder.model.loading import ZOO_DIR
from shedder.plan import Plan
from shedder.removal.catalogue import KIND_HELP, Component

TOUR_MODELS = {"demo-mamba2": "a small Mamba-2 language model", "demo-hybrid": "a small Mamba-2 / attention hybrid"}
STEPS = {1: "Load", 2: "Sensitivity", 3: "Toggle", 4: "Search", 5: "Export"}

model_sidebar()
st.title("Guided tour")
if st.session_state.get("tour_model") not in TOUR_MODELS:  # start on the loaded demo model, if it is one
    st.session_state["tour_model"] = current_choice().spec if current_choice().spec in TOUR_MODELS else "demo-mamba2"
TOUR_MODEL = st.radio("Tour model", list(TOUR_MODELS), **remembered("tour_model"), horizontal=True,
                      format_func=lambda name: f"{name}: {TOUR_MODELS[name]}")
st.caption(f"Five steps on the embedded demo model, {TOUR_MODEL}: load it, see which parts matter, remove one, let "
           "the greedy search choose, export the plan. The numbers were measured on this model and ship with it "
           "(recomputed when its weights change), so the tour opens at once; each step takes you to the page that "
           "does it for real.")
folder = ZOO_DIR / TOUR_MODEL
tour = load_tour(folder)
if tour is None:
    if files_digest(folder) is None:
        st.warning(f"{TOUR_MODEL}'s weights are not installed (zoo/{TOUR_MODEL}/model.safetensors); the tour needs them.")
        st.stop()
    measuring = f"Measuring the tour's results of {TOUR_MODEL}"
    running = jobs.running("tour")
    if running is not None and running.label != measuring:
        jobs.panel("tour")  # another model's tour is being measured: one at a time
        st.stop()
    if running is None and (jobs.current("tour") is None or jobs.current("tour").state != "failed"):
        choice = ModelChoice(TOUR_MODEL)
        model, tokenizer = loaded(choice)

        def work(job):
            from shedder.jobs import guard, private_copy

            copy = private_copy(model)
            with guard(copy, job):
                return make_tour(copy, tokenizer, folder, progress=lambda phase, d, t: job.update(d, t, phase),
                                 should_stop=job.cancelled)

        jobs.start("tour", measuring, work)
    st.info(f"The shipped results do not match {TOUR_MODEL}'s weights (the model changed since they were measured): "
            "measuring them again, in the background. This happens once; the results are kept.")
    failed = jobs.current("tour")
    if failed is not None and failed.state == "failed":
        st.error(f"Measuring the tour failed: {failed.error}")
    jobs.panel("tour")
    st.stop()

setting = PerplexitySetting(**tour["setting"])
base = tour["sensitivity"]["base_ppl"]
scores = tour["sensitivity"]["scores"]
ranked = sorted(scores, key=lambda r: r["ppl"])
steps = tour["search"]["steps"]
info = tour["model"]


def plan_of(removed: list[Component]) -> Plan:
    return Plan(removed=list(removed), model_type=info["model_type"], n_layers=info["n_layers"],
                fingerprint=tour["fingerprint"])


def use(removed: list[Component], page: str) -> None:
    """Load the tour's model, make ``removed`` the current plan and open ``page``."""
    if current_choice().spec != TOUR_MODEL:
        set_choice(ModelChoice(TOUR_MODEL))
    choice = current_choice()
    set_plan(choice, new_plan(choice, removed))
    st.switch_page(page)


def go(step: int) -> None:
    st.session_state["tour_step"] = st.session_state["tour_at"] = step


def picked() -> None:
    st.session_state["tour_at"] = st.session_state.get("tour_step") or st.session_state.get("tour_at", 1)


# the step is kept outside the widget's state (which streamlit drops on a page switch): the tour resumes there
at = st.session_state.setdefault("tour_at", 1)
if st.session_state.get("tour_step") is None:
    st.session_state["tour_step"] = at
st.segmented_control("Step", list(STEPS), format_func=lambda s: f"{s}. {STEPS[s]}", key="tour_step",
                     label_visibility="collapsed", on_change=picked)
step = st.session_state.get("tour_step") or at
st.session_state["tour_at"] = step

if step == 1:
    st.subheader(f"1. Load: {TOUR_MODELS[TOUR_MODEL]}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("architecture", info["model_type"])
    c2.metric("layers", info["n_layers"])
    c3.metric("parameters", f"{info['total_params'] / 1e6:.2f} M")
    c4.metric("perplexity", f"{base:.3f}", help=f"Nothing removed, on {setting.describe()}")
    anatomy = ("is a **block** (a residual layer) around an **SSM** (the Mamba-2 scan)" if "attn" not in info["params"]
               else "is a **block** (a residual layer) holding either a Mamba-2 mixer, whose scan is its **SSM**, or an "
                    "**attention** sub-block, and then an **MLP**")
    st.markdown(f"{TOUR_MODEL} ships inside the repository, so everything works offline. Each of its "
                f"{info['n_layers']} layers {anatomy}. "
                f"**Perplexity** measures how well it predicts held-out text ({setting.describe()}): lower is better. "
                "Removing parts raises it; the question is which parts cost least.")
    # a static table wraps the long descriptions (a dataframe cuts them at the column's width)
    st.table(pd.DataFrame([{"kind": k, "what removing one does": KIND_HELP.get(k, ""), "parameters (all)": f"{v:,}"}
                           for k, v in info["params"].items()]).set_index("kind"))
    st.page_link("pages/model.py", label="The Model page draws every layer and measures this perplexity live")
elif step == 2:
    st.subheader("2. Sensitivity: remove each part alone, measure")
    kinds = tour["sensitivity"]["kinds"]
    percents = {(r["kind"], r["layer"]): 100 * (r["ppl"] - base) / base for r in scores}
    hover = {key: f"{key[0]} @ layer {key[1]}<br>perplexity {r['ppl']:.4f} ({p:+.3g}%)"
             for (key, p), r in zip(percents.items(), scores)}
    st.plotly_chart(sensitivity_heatmap(info["n_layers"], kinds, {k: signed_log_percent(p) for k, p in percents.items()},
                                        hover, percent_scale(list(percents.values()))), width="stretch")
    low, high = ranked[0], ranked[-1]
    st.markdown(f"Every one of the {counted(len(scores), 'component')} was removed on its own and the perplexity "
                f"measured ({tour['sensitivity']['seconds']:.0f} s on the machine that measured it). The lightest cell, "
                f"**{low['kind']} @ layer {low['layer']}**, costs least: perplexity {low['ppl']:.3f} against {base:.3f}. "
                f"The darkest, **{high['kind']} @ layer {high['layer']}**, raises it to {high['ppl']:.3f}.")
    if st.button("Open the Sensitivity page with these results", key="tour-sensitivity"):
        seed_sensitivity(tour)
        if current_choice().spec != TOUR_MODEL:
            set_choice(ModelChoice(TOUR_MODEL))
        st.switch_page("pages/sensitivity.py")
    st.caption("There a click on a cell adds that component to the current plan.")
elif step == 3:
    st.subheader("3. Toggle: remove the cheapest part")
    low = ranked[0]
    component = Component.from_dict(low)
    c1, c2 = st.columns(2)
    c1.metric("perplexity", f"{low['ppl']:.3f}", delta=f"{low['ppl'] - base:+.3f} vs dense", delta_color="inverse",
              help=f"On {setting.describe()}, with {component} removed")
    c2.metric("removed", str(component))
    st.markdown(f"Removing **{component}** ({KIND_HELP.get(component.kind, '')}) changes the perplexity from {base:.3f} "
                f"to {low['ppl']:.3f}. In the Playground every toggle shows its new perplexity within about a second; "
                "accuracy and latency follow in the background.")
    if st.button(f"Remove {component} in the Playground", type="primary", key="tour-toggle"):
        use([component], "pages/playground.py")
elif step == 4:
    st.subheader("4. Search: let the greedy search choose")
    trail = [{"step": 0, "ppl": base, "stage": 0, "label": "nothing removed"}]
    trail += [{"step": s["step"], "ppl": s["ppl"], "stage": 0, "label": str(Component.from_dict(s["removed"]))}
              for s in steps]
    chosen = st.slider("Plan after step", 1, len(steps), len(steps), **remembered("tour-search-step"))
    st.plotly_chart(search_trajectory(trail, chosen), width="stretch")
    st.markdown(f"At every step the search removes each remaining candidate on top of what is already gone and keeps "
                f"the cheapest ({tour['search']['stages'].replace(':', ', ')} steps here). Its first pick is the "
                f"lightest cell of step 2; later picks can differ from the heatmap's order, because parts interact. "
                f"After {counted(chosen, 'step')}: " + ", ".join(t["label"] for t in trail[1:chosen + 1])
                + f", perplexity {trail[chosen]['ppl']:.3f}, {steps[chosen - 1]['params_removed'] / info['total_params']:.1%}"
                " of the parameters freed.")
    if st.button(f"Use the plan after step {chosen}", type="primary", key="tour-search"):
        use(removed_after(tour, chosen), "pages/playground.py")
    st.page_link("pages/search.py", label="The Search page runs searches of your own, live and resumable")
else:
    st.subheader("5. Export: the plan, then a physically smaller model")
    removed = removed_after(tour, len(steps))
    plan = plan_of(removed)
    st.markdown(f"The search's plan removes {', '.join(map(str, removed))}. A plan is a small JSON file; Export & "
                "compare turns it into a smaller model folder that loads with plain transformers (the removed weights "
                "deleted, not masked), and times it against the dense model.")
    st.download_button("Download the plan (JSON)", json.dumps(plan.to_dict(), indent=1), file_name="tour_plan.json",
                       mime="application/json")
    if st.button("Extract it on Export & compare", type="primary", key="tour-export"):
        use(removed, "pages/export.py")

c1, _, c2 = st.columns([1, 4, 1])
c1.button("Back", disabled=step == 1, on_click=go, args=(step - 1,), key="tour-back")
c2.button("Next", disabled=step == len(STEPS), on_click=go, args=(step + 1,), key="tour-next", type="primary")
