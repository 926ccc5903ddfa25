"""Speed: measured latency, the static decode loop, and the analytic cost model."""
