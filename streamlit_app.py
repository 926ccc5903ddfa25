"""shedder dashboard: `./run.sh app` (or `streamlit run streamlit_app.py`)."""
import logging

import streamlit as st

st.set_page_config(page_title="shedder", layout="wide")
logging.getLogger("transformers").setLevel(logging.ERROR)

pages = [
    st.Page("pages/method.py", title="How it works", default=True),
    st.Page("pages/tour.py", title="Guided tour"),
    st.Page("pages/model.py", title="Model"),
    st.Page("pages/sensitivity.py", title="Sensitivity"),
    st.Page("pages/playground.py", title="Playground"),
    st.Page("pages/search.py", title="Search"),
    st.Page("pages/export.py", title="Export & compare"),
    st.Page("pages/recover.py", title="Recovery"),
]
st.navigation(pages).run()
