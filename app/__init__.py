"""Streamlit glue for the dashboard: state, cached resources, figures. Computation lives in `shedder`."""
