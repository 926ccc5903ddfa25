"""How it works: Mamba-Shedder in a minute, on the loaded model's own layers."""
import pandas as pd
import streamlit as st

from app.anatomy_figure import anatomy_figure
from app.sidebar import model_or_stop, model_sidebar
from app.state import remembered
from shedder.model.anatomy import distinct_layers, layer_anatomy
from shedder.removal.catalogue import KIND_HELP, KINDS

choice = model_sidebar()
st.title("Mamba-Shedder in a minute")
st.markdown(
    "A state-space language model (Mamba, Mamba-2) or a hybrid of SSM and attention layers is a stack of "
    "**residual layers**: each reads the hidden states, computes something and adds it back. *Mamba-Shedder* "
    "(Muñoz, Yuan and Jain, NAACL 2025) asks which of those computations the model can do without, **with no "
    "training**: it removes one component at a time, measures how much worse the model predicts text "
    "(perplexity on a calibration text), and removes what hurts least. A physically smaller model is then "
    "faster to run; a short fine-tune can win back part of what was lost."
)
with st.spinner(f"Loading {choice.spec or 'the model'} to draw its layers ..."):
    model, _, cat = model_or_stop(choice)

st.subheader(f"One layer of {choice.spec}")
layers = distinct_layers(model)
anatomies = {i: layer_anatomy(model, cat, i) for i in layers}
if len(layers) > 1:
    layer = st.radio("Layer", layers, horizontal=True, **remembered("anatomy_layer"),
                     format_func=lambda i: f"layer {i}: {anatomies[i].structure}",
                     help="The first layer of each kind this model has.")
else:
    layer = layers[0]
anatomy = anatomies[layer]
st.caption(f"{cat.model_type}, {cat.n_layers} layers of {cat.total_params / 1e6:.2f} M parameters in all. "
           f"Layer {layer} holds {anatomy.structure}. Each box adds its output to the residual stream (the "
           "vertical line); every module is listed with its parameters, as the loaded model has them.")
st.plotly_chart(anatomy_figure(anatomy), width="stretch")

st.subheader("What each removal computes")
summary = cat.summary()
st.table(pd.DataFrame([
    {"kind": kind, "removing one": KIND_HELP[kind], "in this model": f"{summary.get(kind, {}).get('count', 0):,}",
     "parameters freed (each alone, summed)": f"{summary.get(kind, {}).get('params', 0):,}"}
    for kind in KINDS]).set_index("kind"))
st.caption("Removal is exact and reversible: the dashboard edits the loaded model in place and restores it bit for "
           "bit after every measurement. Extraction (Export & compare) then deletes the weights for real, so the "
           "smaller model loads anywhere and runs faster; a removed SSM also frees the projections that only fed "
           "the scan.")

st.subheader("How the greedy search works")
st.markdown(
    "1. **Score every candidate**: remove it (on top of what is already removed) and measure the calibration "
    "perplexity. Lower means the model misses it less.\n"
    "2. **Remove the best one** (the lowest perplexity), and repeat for as many steps as you ask.\n"
    "3. **Hybrids go in stages**, as the paper does: whole blocks, attention and MLPs first, then MLP channel "
    "groups, then SSMs.\n\n"
    "Every step is logged, so a plan can be taken after any step. The search gives exactly the answer of "
    "recomputing the whole model for every candidate, with about half the work: layers before a candidate's are "
    "computed once per step, and a candidate whose partial perplexity already exceeds the best one's stops early."
)

st.subheader("A tour in five steps")
st.page_link("pages/tour.py", label="Take the guided tour: the five steps on the demo model, with its results ready",
             icon=":material/tour:")
st.page_link("pages/model.py", label="1. Model: what the model is made of, layer by layer, and its perplexity")
st.page_link("pages/sensitivity.py", label="2. Sensitivity: how much every component matters, as heatmaps")
st.page_link("pages/playground.py", label="3. Playground: remove components by hand and see what it costs")
st.page_link("pages/search.py", label="4. Search: let the greedy search choose, step by step")
st.page_link("pages/export.py", label="5. Export & compare: download the plan and the physically smaller model")
