"""The Mamba-Shedder greedy search: at every step remove the candidate whose removal gives the lowest
calibration perplexity on top of what is already removed (ties: catalogue order), for K steps, in
one or more stages of target kinds.

Candidates follow the reference code: a component implied by an earlier removal is skipped (anything
inside a removed block, heads of a removed attention, channel groups of a removed MLP), and MLP
channel groups are removed from the tail: each MLP offers only its last remaining group, and never
its final one (group order is channel order, or L1-norm order with ``channel_reorder="l1"``).

A search writes to its output directory after every step (atomically): ``log.json`` (settings and,
per step, every candidate's score, the pick, elapsed time and work), ``steps/step_NNN.json`` (the
plan after that step) and ``plan.json`` (the latest plan). Re-running with the same settings
continues after the last finished step.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from torch import nn

from ..errors import ShedderError
from ..folder_lock import output_lock
from ..kinds import KINDS, implied_by
from ..measurement.calibration import Windows
from ..measurement.evaluator import CandidateResult, EvalSettings
from ..measurement.perplexity import perplexity
from ..model.identity import model_fingerprint, rounded_fingerprints
from ..paths import write_text_atomic
from ..plan import Plan, as_plan
from ..removal.catalogue import Catalogue, Component, catalogue_of
from .executor import CandidateProgress, Executor, RayOptions, open_executor

log = logging.getLogger(__name__)

LOG_VERSION = 1
StepProgress = Callable[[dict], None]  # called with each finished step's record


@dataclass(frozen=True)
class Stage:
    targets: tuple[str, ...]
    steps: int

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in KINDS]
        if unknown or not self.targets:
            raise ShedderError(f"Unknown target kind(s) {unknown or self.targets}; choose from {', '.join(KINDS)}.")
        if self.steps < 0:
            raise ShedderError("A stage needs a non-negative number of steps.")


def parse_stages(text: str) -> list[Stage]:
    """``"block,attn,mlp:3;mlp_channels:20;ssm:18"`` -> three stages."""
    stages = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        targets, sep, steps = chunk.rpartition(":")
        if not sep or not steps.strip().isdigit():
            raise ShedderError(f"Stage {chunk!r} should look like 'kind1,kind2:steps'.")
        stages.append(Stage(tuple(t.strip() for t in targets.split(",") if t.strip()), int(steps)))
    if not stages:
        raise ShedderError("No stages given.")
    return stages


def candidates_for(catalogue: Catalogue, removed: list[Component], targets: tuple[str, ...]) -> list[Component]:
    """Remaining candidates of the target kinds, in catalogue order."""
    done, implied = set(removed), implied_by(removed)
    remaining = [c for c in catalogue.components(targets) if c not in done and (c.kind, c.layer) not in implied]
    out = [c for c in remaining if not KINDS[c.kind].grouped]
    groups_left: dict[tuple[str, int], list[Component]] = {}
    for c in remaining:
        if KINDS[c.kind].grouped:
            groups_left.setdefault((c.kind, c.layer), []).append(c)
    for groups in groups_left.values():
        if len(groups) > 1:  # the tail group; an MLP's last remaining group is never a candidate
            out.append(max(groups, key=lambda c: c.index))
    order = {c: i for i, c in enumerate(catalogue.components())}
    return sorted(out, key=order.__getitem__)


@dataclass
class SearchSettings:
    """Everything that determines a search's answer; a resumed search must match it."""

    fingerprint: str
    stages: list[list]
    calib: str
    n_windows: int
    seq_len: int
    seed: int | None
    batch_size: int
    channel_group_size: int
    channel_reorder: str | None
    base: list[dict] = field(default_factory=list)


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def _result_record(result: CandidateResult) -> dict:
    record = {**result.component.to_dict(), "ppl": result.ppl}
    if not result.complete:
        record["ppl_lower_bound"] = result.ppl_lower_bound
        record["windows_done"] = result.windows_done
    return record


def search(model: nn.Module, windows: Windows, stages: list[Stage], out_dir: str | Path | None = None,
           settings: EvalSettings = EvalSettings(), base: Plan | list[Component] = (), early_stop: bool = True,
           on_step: StepProgress | None = None, on_candidate: CandidateProgress | None = None,
           should_stop: Callable[[], bool] | None = None, executor: RayOptions | Executor | None = None) -> dict:
    """Run (or resume) the greedy search from ``base`` (a plan: what is removed already and how MLP channels are
    grouped; or a list of components); returns the log (settings, steps, final ``removed``). ``settings``: how
    candidates are evaluated; ``early_stop``: drop a candidate once it cannot be a step's pick (exact).

    ``executor``: None evaluates candidates in this process; :class:`RayOptions` on new Ray workers, or an
    open :class:`~shedder.searching.ray_executor.RayExecutor` on its workers (same plan).
    """
    base = as_plan(base)
    catalogue = catalogue_of(model, base.channel_group_size)
    grouping = replace(base.with_removed([]), rounded_fingerprints=rounded_fingerprints(model))
    logged = SearchSettings(
        fingerprint=model_fingerprint(model), stages=[[list(s.targets), s.steps] for s in stages],
        calib=windows.source, n_windows=len(windows), seq_len=windows.seq_len, seed=windows.seed,
        batch_size=settings.batch_size, channel_group_size=catalogue.channel_group_size,
        channel_reorder=base.channel_reorder,
        base=[c.to_dict() for c in base.removed],
    )
    out = Path(out_dir) if out_dir is not None else None
    with output_lock(out, "search") if out is not None else nullcontext():
        record = _load_or_start(out, logged)
        removed = list(base.removed) + [Component.from_dict(s["removed"]) for s in record["steps"]]
        rank = {c: i for i, c in enumerate(catalogue.components())}
        grouping.channel_group_size = catalogue.channel_group_size
        with open_executor(executor, model, windows, grouping, settings) as runner:
            _run_stages(runner, record, stages, removed, catalogue, rank, out, grouping, early_stop,
                        on_step, on_candidate, should_stop)
    return record


def _run_stages(runner, record: dict, stages: list[Stage], removed: list[Component], catalogue: Catalogue,
                rank: dict[Component, int], out: Path | None, grouping: Plan, early_stop: bool,
                on_step: StepProgress | None, on_candidate: CandidateProgress | None,
                should_stop: Callable[[], bool] | None) -> None:
    """The greedy steps still to do, each written to ``out``; ``record["removed"]`` once all are done."""
    for stage_index, stage in enumerate(stages):
        finished = sum(1 for s in record["steps"] if s["stage"] == stage_index)  # when resuming
        for _ in range(stage.steps - finished):
            step_index = len(record["steps"])
            if should_stop is not None and should_stop():
                return
            candidates = candidates_for(catalogue, removed, stage.targets)
            if not candidates:
                log.info("Stage %d: no candidates left after %d steps in all.", stage_index, step_index)
                break
            started = time.perf_counter()
            outcome = runner.run_step(removed, candidates, rank, early_stop, on_candidate, should_stop)
            if outcome is None:
                return  # the unfinished step is dropped; a re-run redoes it
            best, results = outcome.best, outcome.results
            removed.append(best.component)
            step = {
                "step": step_index, "stage": stage_index, "removed": best.component.to_dict(), "ppl": best.ppl,
                "candidates": [_result_record(r) for r in sorted(results, key=lambda r: rank[r.component])],
                "evaluated_fully": sum(r.complete for r in results), "seconds": time.perf_counter() - started,
                "work": outcome.work, "params_removed": catalogue.params_of(removed),
            }
            if outcome.phases:
                step["phase_seconds"] = outcome.phases
            record["steps"].append(step)
            save_run(out, record, removed, catalogue, grouping, step_index)
            if on_step is not None:
                on_step(step)
    record["removed"] = [c.to_dict() for c in removed]
    record["work"] = sum(s["work"] for s in record["steps"])
    if out is not None:
        save_run(out, record, removed, catalogue, grouping, step_index=None)


def _load_or_start(out: Path | None, settings: SearchSettings) -> dict:
    fresh = {"version": LOG_VERSION, "settings": asdict(settings), "steps": []}
    if out is None:
        return fresh
    path = out / "log.json"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / "steps").mkdir(exist_ok=True)
        return fresh
    record = _read_log(path)
    theirs, ours = record.get("settings", {}), asdict(settings)
    if record.get("version") != LOG_VERSION or theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ShedderError(f"{out} holds a search with other settings ({', '.join(diff) or 'version'}); "
                           "use another --out, or the same settings to resume.")
    log.info("Resuming from %s after %d finished steps.", out, len(record["steps"]))
    return record


def _read_log(path: Path) -> dict:
    """A search's log.json, or a ShedderError that says it cannot be resumed from (nothing is overwritten)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShedderError(f"{path} cannot be read as a search log ({exc}); move the folder away or use another "
                           "--out (it is left as it is).") from None
    steps = record.get("steps") if isinstance(record, dict) else None
    if (not isinstance(record.get("settings") if isinstance(record, dict) else None, dict)
            or not isinstance(steps, list)
            or not all(isinstance(s, dict) and isinstance(s.get("stage"), int) and isinstance(s.get("removed"), dict)
                       for s in steps)):
        raise ShedderError(f"{path} is not a shedder search log (expected settings and a list of steps); move the "
                           "folder away or use another --out (it is left as it is).")
    return record


def save_run(out: Path | None, record: dict, removed: list[Component], catalogue: Catalogue,
          grouping: Plan, step_index: int | None) -> None:
    """Write the plan after a step (and as plan.json) and the log; ``step_index=None``: plan.json only."""
    if out is None:
        return
    plan = Plan(list(removed), catalogue.model_type, catalogue.n_layers, record["settings"]["fingerprint"],
                catalogue.channel_group_size, grouping.channel_reorder,
                extra={"steps": [{"step": s["step"], "removed": s["removed"], "ppl": s["ppl"]} for s in record["steps"]]},
                rounded_fingerprints=grouping.rounded_fingerprints)
    if step_index is not None:
        plan.save(out / "steps" / f"step_{step_index:03d}.json")
        _write_json(out / "log.json", record)
    plan.save(out / "plan.json")


def naive_search(model: nn.Module, windows: Windows, stages: list[Stage], batch_size: int = 8,
                 grouping: Plan | None = None) -> tuple[list[Component], int]:
    """The reference procedure: every candidate masked and evaluated on the whole model over all
    windows (channel groups as ``grouping``, a plan, groups them). Returns the removal order and the work in
    layer-forward token passes."""
    grouping = (grouping or Plan()).with_removed([])
    catalogue = catalogue_of(model, grouping.channel_group_size)
    removed: list[Component] = []
    work, tokens = 0, windows.ids.numel()
    for stage in stages:
        for _ in range(stage.steps):
            candidates = candidates_for(catalogue, removed, stage.targets)
            if not candidates:
                break
            best, best_nll = None, math.inf
            for candidate in candidates:  # catalogue order; strict < keeps the first of equals
                plan = grouping.with_removed(removed + [candidate])
                result = perplexity(model, windows, plan, batch_size)
                blocks = {c.layer for c in plan.removed if c.kind == "block"}
                work += tokens * (catalogue.n_layers - len(blocks))
                if result.nll_sum < best_nll:
                    best, best_nll = candidate, result.nll_sum
            removed.append(best)
    return removed, work
