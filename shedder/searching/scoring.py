"""Leave-one-out sensitivity, and cheap proxies for it (clearly labelled as proxies).

``score``: for every component of the chosen kinds, the calibration perplexity with that component
removed on top of a base plan, and its change from the base (exact; prefix reuse, no early stop).

Proxies:
- ``block_influence`` (blocks): 1 - cosine similarity between a layer's input and output hidden
  states, averaged over calibration tokens (ShortGPT's Block Influence). Low = the layer changes little.
- ``weight_magnitude`` (heads, channel groups): the Frobenius norm of the group's columns of its
  output projection (o_proj, out_proj, down_proj). Low = the group can only write small values.
- ``spearman``: rank correlation of each proxy with the perplexity score over the same components.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..families import describe_model
from ..kinds import GROUP_KINDS, KINDS, Grouping
from ..measurement.calibration import Windows
from ..measurement.evaluator import EvalSettings
from ..measurement.perplexity import model_device
from ..plan import Plan, as_plan
from ..removal.catalogue import Component, catalogue_of
from ..removal.masks import masked
from .executor import Executor, RayOptions, open_executor

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Score:
    component: Component
    ppl: float
    delta: float  # ppl - base ppl

    def to_dict(self) -> dict:
        return {**self.component.to_dict(), "ppl": self.ppl, "delta": self.delta}


def score(model: nn.Module, windows: Windows, kinds: list[str], base: Plan | list[Component] = (),
          settings: EvalSettings = EvalSettings(), progress: Progress | None = None,
          should_stop: Callable[[], bool] | None = None, executor: RayOptions | Executor | None = None
          ) -> tuple[float, list[Score], int]:
    """(base perplexity, per-component scores in catalogue order, work in layer-token passes).

    ``executor``: None scores in this process; :class:`RayOptions` on new Ray workers, or an open
    :class:`~shedder.searching.ray_executor.RayExecutor` on its workers (same numbers).
    """
    base = as_plan(base)
    catalogue = catalogue_of(model, base.channel_group_size)
    done = set(base.removed)
    components = [c for c in catalogue.components(kinds) if c not in done]
    with open_executor(executor, model, windows, base, settings) as runner:
        outcome = runner.score(list(base.removed), components, progress, should_stop)
    base_ppl = outcome.base.ppl
    scores = [Score(r.component, r.ppl, r.ppl - base_ppl) for r in outcome.results]
    return base_ppl, scores, outcome.work


@torch.no_grad()
def block_influence(model: nn.Module, windows: Windows, base: Plan | list[Component] = (), batch_size: int = 8
                    ) -> dict[Component, float]:
    """1 - cos(input, output) per layer, averaged over all calibration tokens, under ``base``."""
    catalogue = catalogue_of(model)
    _, layers = describe_model(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    handles = []

    def hook(index):
        def record(module, args, kwargs, out):
            hidden_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            hidden_out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            sums[index] += (1 - cos).double().sum().cpu()
        return record

    try:
        for parts in layers:
            handles.append(parts.layer.register_forward_hook(hook(parts.index), with_kwargs=True))
        with masked(model, base):
            for start in range(0, len(windows), batch_size):
                batch = windows.ids[start:start + batch_size]
                model(input_ids=batch.to(model_device(model)), use_cache=False)
                count += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    blocks = {c.layer: c for c in catalogue.components(["block"])}
    return {blocks[i]: float(sums[i] / count) for i in blocks}


@torch.no_grad()
def weight_magnitude(model: nn.Module, grouping: Plan | None = None) -> dict[Component, float]:
    """Frobenius norm of each head's / channel group's columns of its output projection (channel groups as
    ``grouping``, a plan, groups them)."""
    grouping = grouping or Plan()
    catalogue = catalogue_of(model, grouping.channel_group_size)
    how = Grouping(catalogue.channel_group_size, grouping.channel_reorder)
    _, layers = describe_model(model)
    return {c: float(KINDS[c.kind].columns(layers[c.layer], c.index, how).float().norm())
            for c in catalogue.components(GROUP_KINDS)}


def _ranks(values: list[float]) -> torch.Tensor:
    """Ranks from 1, ties given their average rank."""
    x = torch.tensor(values, dtype=torch.float64)
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in torch.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation; None when undefined (fewer than 3 items or a constant side)."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return None if denominator == 0 else float((ra * rb).sum()) / denominator


def proxy_agreement(scores: list[Score], proxies: dict[str, dict[Component, float]]) -> dict[str, dict]:
    """Per proxy and kind: Spearman correlation with the perplexity score and how many components."""
    by_component = {s.component: s.ppl for s in scores}
    out: dict[str, dict] = {}
    for name, values in proxies.items():
        kinds = sorted({c.kind for c in values})
        for kind in kinds:
            shared = [c for c in values if c.kind == kind and c in by_component]
            out.setdefault(name, {})[kind] = {
                "spearman": spearman([values[c] for c in shared], [by_component[c] for c in shared]),
                "n": len(shared),
            }
    return out
