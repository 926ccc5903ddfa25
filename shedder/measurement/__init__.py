"""Measurement: calibration text, perplexity, bits per byte, per-token loss, the candidate evaluator, zero-shot
accuracy and its tasks."""
