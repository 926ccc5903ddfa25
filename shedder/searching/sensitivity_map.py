"""A model's leave-one-out sensitivity map that grows: every component scored is kept, per model and setting.

The map of one model (fingerprint) on one perplexity setting (text, tokens, window) is one file under
``cache/results/sensitivity-map/``: the perplexity with nothing removed and, per component, the perplexity
with it alone removed. Asking for more kinds scores only the components not in the map yet; a run that is
stopped keeps every component it finished (saved after each one), so the next run resumes where it stopped.
The numbers are those of :func:`shedder.searching.scoring.score` (the same evaluator, batch size and prefix reuse).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..formats import result_cache
from ..measurement.calibration import Windows
from ..model.identity import model_fingerprint
from ..removal.catalogue import Component
from ..removal.masks import catalogue_of

VERSION = 1
BATCH_SIZE = 4


def component_key(component: Component) -> str:
    return json.dumps(component.to_dict(), sort_keys=True)


@dataclass
class SensitivityMap:
    fingerprint: str
    text: str
    tokens: int
    seq_len: int
    base_ppl: float | None = None
    ppl: dict[str, float] = field(default_factory=dict)  # component_key -> perplexity with it alone removed
    seconds: float = 0.0  # spent scoring, over every run
    proxies: dict[str, dict[str, float]] = field(default_factory=dict)  # proxy name -> component_key -> value

    @property
    def key(self) -> dict:
        return {"fingerprint": self.fingerprint, "text": self.text, "tokens": self.tokens, "seq_len": self.seq_len,
                "batch_size": BATCH_SIZE, "version": VERSION}

    def has(self, component: Component) -> bool:
        return component_key(component) in self.ppl

    def missing(self, components: list[Component]) -> list[Component]:
        return [c for c in components if not self.has(c)]

    def scores(self, components: list[Component]) -> list[dict]:
        """Score records (``Score.to_dict``: the component, ppl, delta) of those of ``components`` in the map."""
        return [{**c.to_dict(), "ppl": self.ppl[k], "delta": self.ppl[k] - self.base_ppl}
                for c in components if (k := component_key(c)) in self.ppl]

    def proxy_values(self, name: str, components: list[Component]) -> dict[Component, float]:
        values = self.proxies.get(name, {})
        return {c: values[k] for c in components if (k := component_key(c)) in values}

    def to_dict(self) -> dict:
        return {"base_ppl": self.base_ppl, "ppl": self.ppl, "seconds": self.seconds, "proxies": self.proxies}

    def save(self) -> None:
        result_cache.save("sensitivity-map", self.key, self.to_dict())


def load_map(fingerprint: str, text: str, tokens: int, seq_len: int) -> SensitivityMap:
    """The stored map (empty when nothing was scored yet)."""
    found = SensitivityMap(fingerprint, text, tokens, seq_len)
    stored = result_cache.load("sensitivity-map", found.key)
    if stored:
        found.base_ppl, found.ppl, found.seconds = stored["base_ppl"], dict(stored["ppl"]), stored.get("seconds", 0.0)
        found.proxies = stored.get("proxies", {})
    return found


def fill_map(model: nn.Module, windows: Windows, found: SensitivityMap, components: list[Component],
             progress: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
             on_component: Callable[[SensitivityMap], None] | None = None) -> SensitivityMap:
    """Score those of ``components`` not in ``found`` yet, saving the map after each one; stops between
    components once ``should_stop()``. ``model`` must be the weights ``found`` names."""
    from ..measurement.evaluator import EvalSettings, Evaluator

    todo = found.missing(components)
    if not todo and found.base_ppl is not None:
        return found
    if model_fingerprint(model) != found.fingerprint:
        from ..errors import ShedderError

        raise ShedderError("These weights are not the ones the sensitivity map was made for.")
    evaluator = Evaluator(model, windows, EvalSettings(batch_size=BATCH_SIZE))
    started = time.perf_counter()
    evaluator.set_base([])
    base = evaluator.evaluate(None).ppl
    if found.base_ppl is None:
        found.base_ppl = base
    for n, component in enumerate(todo):
        if should_stop is not None and should_stop():
            break
        found.ppl[component_key(component)] = evaluator.evaluate(component).ppl
        found.seconds += time.perf_counter() - started
        started = time.perf_counter()
        found.save()
        if on_component is not None:
            on_component(found)
        if progress is not None:
            progress(n + 1, len(todo))
    found.save()
    return found


def fill_proxies(model: nn.Module, windows: Windows, found: SensitivityMap, kinds: list[str]) -> SensitivityMap:
    """Add the cheap proxies the chosen ``kinds`` have and the map lacks: block influence (blocks) and weight
    magnitude (heads, channel groups); see :mod:`shedder.searching.scoring`."""
    from .scoring import block_influence, weight_magnitude

    if "block" in kinds and "block influence (1 - cos)" not in found.proxies:
        values = block_influence(model, windows, batch_size=BATCH_SIZE)
        found.proxies["block influence (1 - cos)"] = {component_key(c): v for c, v in values.items()}
    if {"attn_heads", "ssm_heads", "mlp_channels"} & set(kinds) and "weight magnitude" not in found.proxies:
        found.proxies["weight magnitude"] = {component_key(c): v for c, v in weight_magnitude(model).items()}
    found.save()
    return found


def components_of(model: nn.Module, kinds: list[str]) -> list[Component]:
    return catalogue_of(model).components(kinds)
