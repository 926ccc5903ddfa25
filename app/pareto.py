"""The points of the Search page's Pareto chart: every step of a search and every saved plan, with what
has been measured for each (perplexity always; accuracy and latency where the Playground or the
Export & compare page measured them)."""
from __future__ import annotations

from shedder.measurement.perplexity import PerplexitySetting
from shedder.plan import Plan

from . import measures
from .state import ModelChoice, catalogue, params_freed, plan_perplexity

X_AXES = {"parameters freed (%)": "high", "prefill + decode latency (ms, measured)": "low"}
Y_AXES = {"perplexity": "low", "average accuracy (measured)": "high"}
MEASURE_HINT = {
    "prefill + decode latency (ms, measured)": "Measure latency on the Playground (Use in Playground, then "
                                               "Measure latency) for the plans you want here.",
    "average accuracy (measured)": "Evaluate accuracy on the Playground or on Export & compare for the plans you "
                                   "want here.",
}


def plan_points(choice: ModelChoice, named: dict[str, tuple[str, Plan]], setting: PerplexitySetting,
                accuracy_settings: dict, latency_settings: dict) -> list[dict]:
    """One record per plan: name, source, parameters freed (%), perplexity under ``setting``, accuracy and
    latency (None where not measured). ``named``: name -> (source, plan)."""
    total = catalogue(choice).total_params
    points = []
    for name, (source, plan) in named.items():
        freed = params_freed(choice, plan)
        acc = measures.accuracy(choice, plan, **accuracy_settings)
        lat = measures.latency(choice, plan, **latency_settings)
        points.append({
            "name": name, "source": source, "components": len(plan.removed),
            "parameters freed (%)": 100 * freed / total,
            "perplexity": plan_perplexity(choice, plan, setting),
            "average accuracy (measured)": acc["average"] if acc else None,
            "prefill + decode latency (ms, measured)": lat["total_ms"] if lat else None,
        })
    return points


def axes_points(points: list[dict], x: str, y: str) -> list[dict]:
    """The points that have both values, as the chart wants them."""
    return [{"x": p[x], "y": p[y], "name": p["name"], "source": p["source"]}
            for p in points if p[x] is not None and p[y] is not None]
