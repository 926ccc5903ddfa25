"""Where the candidate evaluations of a search step or a ``score`` sweep run.

Both are "evaluate these candidates on top of this base plan". :class:`LocalExecutor` does it in this
process on one :class:`~shedder.measurement.evaluator.Evaluator`; :class:`shedder.searching.ray_executor.RayExecutor`
spreads it over Ray actors that each hold a model replica, and gives the same answer.

A step's pick is the complete candidate with the lowest (NLL sum, catalogue rank). Early stopping is
exact in any evaluation order: a candidate is dropped only once its partial sum exceeds the total of
a candidate already complete, so it cannot be the pick; one tied with the pick is never dropped
(partial <= total = pick's total), so ties still go to catalogue order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..errors import ShedderError
from ..measurement.calibration import Windows
from ..measurement.evaluator import CandidateResult, EvalSettings, Evaluator
from ..measurement.perplexity import model_device
from ..plan import Plan
from ..removal.catalogue import Component

CandidateProgress = Callable[[int, int], None]  # (candidates done, candidates in this step)
CARRY_LAYERS = 3  # layers of the best-screened candidates where candidates keep states for the next step
ShouldStop = Callable[[], bool] | None


@dataclass
class StepOutcome:
    results: list[CandidateResult]  # one per candidate, in no particular order
    best: CandidateResult
    work: int  # layer-forward token passes, base pass included
    phases: dict[str, float] | None = None  # seconds per phase (base pass, screening, full evaluations), where known


@dataclass
class ScoreOutcome:
    base: CandidateResult
    results: list[CandidateResult]  # in the order asked; fewer when stopped
    work: int


@dataclass
class RayOptions:
    """How to run on a Ray cluster (README, "Scaling out"). Workers load the model with the driver's
    model's dtype, and must get the same weights (checked by fingerprint)."""

    model: str  # what every worker loads: zoo name, folder (same path on every node) or hub id
    device: str = "auto"  # auto: GPUs for the workers when the cluster has GPUs, else CPU; or cpu, cuda
    trust_remote_code: bool = False
    address: str | None = None  # None: this process's cluster, RAY_ADDRESS, one running here, or a new one
    workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: int = 1  # more than 1: each replica's layers are spread over that many GPUs
    split: str = "windows"  # score only: "windows" (calibration shards) or "candidates"
    pipeline_depth: int = 2  # tasks queued per worker, to hide dispatch latency
    pin_cpus: bool = False  # a GPU worker runs on the CPUs of its GPU's NUMA node (where the machine says which)
    max_replacements: int = 3  # dead workers replaced per run before giving up

    def __post_init__(self):
        if min(self.workers, self.cpus_per_worker, self.gpus_per_worker, self.pipeline_depth) < 1:
            raise ShedderError("Ray needs at least one worker, one CPU and one GPU (when on GPUs) per worker "
                               "and a pipeline depth of 1.")
        if self.gpus_per_worker > 1 and self.device == "cpu":
            raise ShedderError("--gpus-per-worker spreads each replica over GPUs; it does not go with --device cpu.")
        if self.split not in ("windows", "candidates"):
            raise ShedderError(f"Unknown split {self.split!r}; use windows or candidates.")


def better(result: CandidateResult, best: CandidateResult | None, rank: dict[Component, int]) -> bool:
    """Whether a complete ``result`` beats ``best``: lower NLL sum, ties to the earlier candidate."""
    return best is None or (result.nll_sum, rank[result.component]) < (best.nll_sum, rank[best.component])


class Executor(Protocol):
    def run_step(self, base: list[Component], candidates: list[Component], rank: dict[Component, int],
                 early_stop: bool, on_candidate: CandidateProgress | None = None,
                 should_stop: ShouldStop = None) -> StepOutcome | None:
        """Evaluate every candidate on top of ``base``; None when ``should_stop`` said so."""

    def score(self, base: list[Component], components: list[Component], progress: CandidateProgress | None = None,
              should_stop: ShouldStop = None) -> ScoreOutcome:
        """The base plan's and each component's complete NLL sum."""

    def check_same(self, model: nn.Module, windows: Windows, grouping: Plan, settings: EvalSettings) -> None:
        """Raise ShedderError unless opened with this model, these windows, channel grouping and settings (an open
        executor passed on)."""

    def close(self) -> None:
        ...


class PhaseClock:
    """Wall seconds of the phases of a step, each ended by :meth:`mark` (after the GPU has finished its work)."""

    def __init__(self, model: nn.Module):
        self.device = model_device(model)
        self.phases: dict[str, float] = {}
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[phase] = round(now - self.last, 4)
        self.last = now


class LocalExecutor:
    """Everything in this process, on one Evaluator (prefix reuse across a step's candidates)."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def run_step(self, base, candidates, rank, early_stop, on_candidate=None, should_stop=None):
        evaluator = self.evaluator
        work_before = evaluator.work
        clock = PhaseClock(evaluator.model)
        evaluator.set_base(base)
        clock.mark("base pass")
        # Screening: every candidate's first batch (part of its exact sum anyway) orders the full
        # evaluations, so a strong bound is found early and the rest can stop early.
        screened = {r.component: r for r in evaluator.evaluate_many(candidates, bound=-math.inf)} if early_stop else {}
        order = sorted(candidates, key=lambda c: (screened[c].nll_sum, rank[c])) if early_stop else candidates
        clock.mark("screening")
        # the layers of the likeliest picks: candidates keep their states there for the next step (exact either way)
        evaluator.carry_at(list(dict.fromkeys(c.layer for c in order))[:CARRY_LAYERS] if early_stop else [])
        results: list[CandidateResult] = []
        best: CandidateResult | None = None

        def bound() -> float:
            return best.nll_sum if (early_stop and best is not None) else math.inf

        for unit in self._units(order, screened):
            if should_stop is not None and should_stop():
                return None
            finished = evaluator.evaluate_unit(unit, bound, resume=screened)
            for result in finished:
                results.append(result)
                if result.complete and better(result, best, rank):
                    best = result
                if on_candidate is not None:
                    on_candidate(len(results), len(candidates))
        clock.mark("full evaluations")
        return StepOutcome(results, best, evaluator.work - work_before, clock.phases)

    def _units(self, order: list[Component], screened: dict[Component, CandidateResult]) -> list[list[Component]]:
        """The full evaluations of a step, in ``order``: the first candidate alone (its sum bounds the rest), then
        the others; where the evaluator groups candidates, those joining the base plan at one layer
        (``Evaluator.joins_at``) run together, at the place of the first of them."""
        evaluator = self.evaluator
        if not order:
            return []
        units, joining = [[order[0]]], {}
        for candidate in order[1:]:
            layer = evaluator.joins_at(candidate, evaluator.next_batch(screened.get(candidate)))
            if layer is None:
                units.append([candidate])
                continue
            if layer not in joining:
                joining[layer] = []
                units.append(joining[layer])
            joining[layer].append(candidate)
        return units

    def check_same(self, model, windows, grouping, settings):
        evaluator = self.evaluator
        same = (model is evaluator.model and windows is evaluator.windows and evaluator.settings == settings
                and (evaluator.grouping.channel_group_size, evaluator.grouping.channel_reorder)
                == (grouping.channel_group_size, grouping.channel_reorder))
        if not same:
            raise ShedderError("This executor was opened for another model, windows or settings; open a new one.")

    def score(self, base, components, progress=None, should_stop=None):
        evaluator = self.evaluator
        work_before = evaluator.work
        evaluator.set_base(base)
        base_result = evaluator.evaluate(None)
        found: dict[Component, CandidateResult] = {}
        running = evaluator.evaluate_many(components)
        while should_stop is None or not should_stop():
            result = next(running, None)
            if result is None:
                break
            found[result.component] = result
            if progress is not None:
                progress(len(found), len(components))
        results = []
        for component in components:  # in the order asked: when stopped, the part of it that is complete
            if component not in found:
                break
            results.append(found[component])
        return ScoreOutcome(base_result, results, evaluator.work - work_before)

    def close(self) -> None:
        pass


class open_executor:
    """``with open_executor(executor, model, windows, grouping, settings) as runner:`` local when ``executor`` is
    None, on new Ray workers for :class:`RayOptions` (stopped on exit), or an executor already open (kept open; it
    checks that it was opened with these settings). ``grouping``: the plan whose channel grouping every evaluated
    plan uses (what it removes does not matter here)."""

    def __init__(self, executor: "RayOptions | Executor | None", model: nn.Module, windows: Windows, grouping: Plan,
                 settings: EvalSettings):
        self.owned = executor is None or isinstance(executor, RayOptions)
        if executor is None:
            self.executor = LocalExecutor(Evaluator(model, windows, settings, grouping))
        elif isinstance(executor, RayOptions):
            from .ray_executor import RayExecutor  # imports ray only when asked for

            self.executor = RayExecutor(executor, model, windows, settings, grouping)
        else:
            executor.check_same(model, windows, grouping, settings)
            self.executor = executor

    def __enter__(self) -> Executor:
        return self.executor

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.executor.close()
