"""Extraction: a physically smaller model that computes what the masked model computes, and the model code
written beside it."""
