"""Exact, cheap calibration NLL of "the base plan plus one more component".

Two exact savings over recomputing the whole model for every candidate (see the README, "Sensitivity and the search"):

- **Prefix reuse.** Removing a component in layer i leaves layers < i untouched, so the hidden states
  entering each layer under the base plan are computed once per step (``set_base``) and a candidate
  in layer i only runs layers i.. . The earlier layers are skipped on the instance and layer i gets
  the stored tensor; the model's own forward still builds masks, positions and Zamba2's embedding
  input, so this needs no per-family code.
- **Early stop.** The NLL sum only grows from batch to batch (every term is >= 0), so a candidate
  whose partial sum already exceeds ``bound`` (the best complete candidate) cannot win and stops.
- **Carry-over between steps.** A search step's pick is in some layer p, so for a candidate in layer i < q <= p
  the hidden state entering layer q is the same under the next step's base (which adds the pick) as under this
  one's. While a step runs, :meth:`Evaluator.carry_at` names a few layers its pick is likely in, and every
  candidate keeps its state entering those after its own layer; the next step (``set_base``) starts each such
  candidate at the latest of them that is not after the pick, instead of at its own layer.

Candidates can also run together (:meth:`Evaluator.evaluate_together`): those that join the base plan at one layer
(:meth:`Evaluator.joins_at`: the layer after their own, or the layer their carried states enter) each get their
state entering it (their own layer run on the stored input, or the carried state), then the layers from there run
once for all of them, their windows stacked along the batch, which small models (bound by per-call overhead, not
arithmetic) run several times faster. Every window's NLL is still its own row of the same computation;
``tests/test_batched_candidates.py`` checks that the sums equal one-at-a-time evaluation exactly.

Work is counted in layer-forward token passes: one layer run over one token is 1.
Batches are fixed (``batch_size`` windows each, in order) and sums are accumulated per batch in the
same order as :func:`shedder.measurement.perplexity.perplexity`, so results are bit-identical to it.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ShedderError
from ..families import describe_model
from ..kinds.edits import Edits, passthrough
from ..plan import Plan
from ..removal.catalogue import Component
from ..removal.masks import masked
from .calibration import Windows
from .perplexity import model_device, window_nll


@dataclass(frozen=True)
class EvalSettings:
    """How candidate removals are evaluated: the same for every candidate of a ``search`` or ``score`` run, and
    what an executor opened once is checked against. Only ``batch_size`` (which windows share a batch) enters the
    numbers; the rest changes what a run costs, never its answer."""

    batch_size: int = 8  # calibration windows per batch
    state_budget_bytes: int | None = None  # memory for stored layer inputs (None: a default for the device)
    prefix_reuse: bool = True  # start each candidate at its own layer from the stored base states
    group_layers: bool | None = None  # run one layer's candidates together (None: on a GPU only)
    carry_over: bool = True  # a search's next step starts candidates before its pick where they kept states (carry_at)
    windows_per_forward: int | None = None  # most windows in one forward of grouped candidates (None: sized to memory)


@dataclass(frozen=True)
class CandidateResult:
    component: Component | None
    nll_sum: float  # complete sum, or the partial sum when stopped early
    complete: bool
    windows_done: int
    n_windows: int
    seq_len: int

    @property
    def ppl(self) -> float | None:
        """Perplexity, or None when evaluation stopped early (see ``ppl_lower_bound``)."""
        return math.exp(self.nll_sum / (self.n_windows * (self.seq_len - 1))) if self.complete else None

    @property
    def ppl_lower_bound(self) -> float:
        """A lower bound on the perplexity (equal to it when complete)."""
        return math.exp(self.nll_sum / (self.n_windows * (self.seq_len - 1)))


@contextmanager
def start_at_layer(model: nn.Module, start: int, holder: dict):
    """Skip layers before ``start`` and feed layer ``start`` the tensor in ``holder["hidden"]``."""
    family, layers = describe_model(model)
    edits = Edits()
    handle = None
    try:
        for parts in layers[:start]:
            edits.override_forward(parts.layer, passthrough(parts.layer, family.block_output))

        def inject(module, args, kwargs):
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": holder["hidden"]}
            return (holder["hidden"], *args[1:]), kwargs

        handle = layers[start].layer.register_forward_pre_hook(inject, with_kwargs=True)
        yield
    finally:
        if handle is not None:
            handle.remove()
        edits.undo_all()


class Evaluator:
    """NLL sums of candidate removals on top of a base plan, over fixed calibration batches."""

    def __init__(self, model: nn.Module, windows: Windows, settings: EvalSettings = EvalSettings(),
                 grouping: Plan | None = None):
        if len(windows) == 0:
            raise ShedderError("No calibration windows.")
        self.model = model
        self.windows = windows
        self.settings = settings
        batch_size = settings.batch_size
        self.batches = [windows.ids[i:i + batch_size] for i in range(0, len(windows), batch_size)]
        self.grouping = (grouping or Plan()).with_removed([])  # the channel grouping every evaluated plan uses
        family, layers = describe_model(model)
        self.n_layers = len(layers)
        self.reads_from = family.reads_from  # layer -> the earliest layer whose work it reads (key-value sharing)
        self._layer_modules = [parts.layer for parts in layers]
        self._layers_independent = all(self.reads_from(model.config, i) == i for i in range(self.n_layers))
        # evaluate_many runs candidates of one layer together; by default on a GPU, where small models are bound
        # by per-call overhead (on a CPU it is slower: 0.82x and 0.91x, bench/results/layer_groups_cpu_*.json)
        group_layers = settings.group_layers
        self.group_layers = model_device(model).type == "cuda" if group_layers is None else group_layers
        self.work = 0  # layer-forward token passes so far
        self.base: list[Component] = []
        self._states: dict[int, list[torch.Tensor]] = {}  # layer -> per-batch input hidden states
        self._carry_layers: list[int] = []  # this step keeps candidates' states entering these layers
        self._carrying: dict[int, dict[Component, dict[int, torch.Tensor]]] = {}  # layer -> candidate -> batch -> state
        self._carried_layer: int | None = None  # the layer the carried states enter (from the previous step)
        self._carried: dict[Component, dict[int, torch.Tensor]] = {}  # candidate -> batch -> state
        self._carry_bytes = 0

    # -- work accounting -------------------------------------------------------------------------
    def _layers_run(self, removed: list[Component], start: int) -> int:
        skipped = {c.layer for c in removed if c.kind == "block"}
        return sum(1 for layer in range(start, self.n_layers) if layer not in skipped)

    def _count(self, removed: list[Component], start: int, batch: torch.Tensor) -> None:
        self.work += self._layers_run(removed, start) * batch.numel()

    # -- base states -----------------------------------------------------------------------------
    def _state_budget(self) -> int:
        """Bytes for stored hidden states: the settings' own, or a default for the device."""
        budget = self.settings.state_budget_bytes
        return default_state_budget(model_device(self.model)) if budget is None else budget

    def _checkpoint_layers(self) -> list[int]:
        """Which layers' inputs to keep: all of them, or every k-th when the budget is too small."""
        hidden = self.model.config.hidden_size
        per_layer = sum(b.numel() for b in self.batches) * hidden * 4  # float32 upper bound
        budget = self._state_budget()
        if per_layer * self.n_layers <= budget:
            return list(range(self.n_layers))
        stride = max(1, math.ceil(per_layer * self.n_layers / max(budget, per_layer)))
        return list(range(0, self.n_layers, stride))

    def set_base(self, base: list[Component]) -> None:
        """Run the base plan once over all batches, keeping the hidden states entering each layer. When ``base``
        is the previous base plus one pick in the layer the states were carried to or later, the carried states
        serve this step (see the module docstring)."""
        previous, carrying = self.base, self._carrying
        extends = len(base) == len(previous) + 1 and list(base[:-1]) == previous
        usable = [layer for layer in carrying if layer <= base[-1].layer] if extends else []
        self._carried_layer = max(usable) if usable else None
        self._carried = carrying[self._carried_layer] if usable else {}
        self._carry_layers, self._carrying, self._carry_bytes = [], {}, 0
        self.base = list(base)
        self._states = {}
        if not self.settings.prefix_reuse:
            return
        keep = self._checkpoint_layers()
        _, layers = describe_model(self.model)
        captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        handles = []

        # where candidates run together (a GPU), several window batches share a forward; the states are kept per batch
        per_forward = max(1, self._windows_per_forward() // self.batches[0].shape[0]) if self.group_layers else 1
        sizes: list[int] = []

        def capture(layer_index):
            def hook(module, args, kwargs):
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                captured[layer_index].extend(hidden.detach().clone().split(sizes))
            return hook

        def stop(module, args, kwargs):  # the states are all kept: the last layer and the head have nothing to add
            raise _LayerDone

        try:
            for layer in keep:
                handles.append(layers[layer].layer.register_forward_pre_hook(capture(layer), with_kwargs=True))
            handles.append(layers[-1].layer.register_forward_pre_hook(stop, with_kwargs=True))
            with masked(self.model, self.grouping.with_removed(self.base)), torch.no_grad():
                for first in range(0, len(self.batches), per_forward):
                    chunk = self.batches[first:first + per_forward]
                    sizes[:] = [batch.shape[0] for batch in chunk]
                    try:
                        self.model(input_ids=torch.cat(chunk).to(model_device(self.model)), use_cache=False)
                    except _LayerDone:
                        pass
                    for batch in chunk:  # every layer before the last
                        self._count(self.base + [Component("block", self.n_layers - 1)], 0, batch)
        finally:
            for handle in handles:
                handle.remove()
        self._states = captured

    def _start_for(self, layer: int) -> int:
        """The latest stored layer input at or before ``layer``."""
        return max(k for k in self._states if k <= layer)

    # -- carry-over to the next step -------------------------------------------------------------------
    def _carried_from(self, candidate: Component, first_batch: int) -> bool:
        """Whether ``candidate`` has states carried over from the previous step for window batch ``first_batch`` and
        every one after it."""
        carried = self._carried.get(candidate, {})
        return all(b in carried for b in range(first_batch, len(self.batches)))

    def carry_at(self, layers: list[int]) -> None:
        """From now until the next ``set_base``, every candidate keeps its hidden state entering each of ``layers``
        after its own (per window batch, within the memory for stored states), for the next step of a search."""
        usable = self.settings.carry_over and self.settings.prefix_reuse and self._layers_independent
        self._carry_layers = sorted({layer for layer in layers if layer > 0}) if usable else []

    @contextmanager
    def _keeping(self, members: list[Component], start: int, at: dict):
        """While the block runs, store each member's hidden state entering each carry layer after its own layer, for
        the window batches named in ``at["rows"]`` (``(candidate, batch, windows)`` in the order of the batch rows;
        only where the run computes that layer's input: it starts at or before it)."""
        layers = [q for q in self._carry_layers if members and start <= q and all(c.layer < q for c in members)]
        budget = self._state_budget() if layers else 0

        def keep(layer: int):
            def hook(module, args, kwargs):
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                offset = 0
                for candidate, b, rows in at["rows"]:
                    part = hidden[offset:offset + rows]
                    offset += rows
                    size = part.numel() * part.element_size()
                    if self._carry_bytes + size <= budget:
                        self._carrying.setdefault(layer, {}).setdefault(candidate, {})[b] = part.detach().clone()
                        self._carry_bytes += size
            return hook

        handles = [self._layer_modules[q].register_forward_pre_hook(keep(q), with_kwargs=True) for q in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- candidates ------------------------------------------------------------------------------
    def evaluate(self, candidate: Component | None, bound: float | Callable[[], float] = math.inf,
                 resume: CandidateResult | None = None) -> CandidateResult:
        """NLL sum of ``base + [candidate]``; stops once the partial sum exceeds ``bound`` (a number, or a
        function read after every batch, for a bound that may fall meanwhile).

        ``resume``: an earlier, stopped evaluation of the same candidate to continue from; the sum
        goes on in the same batch order, so the result is the same as evaluating in one go.
        """
        removed = self.base + ([candidate] if candidate is not None else [])
        first = self.reads_from(self.model.config, candidate.layer) if candidate is not None else 0
        own_start = self._start_for(first) if (candidate is not None and self._states) else 0
        carried = self._carried.get(candidate, {}) if candidate is not None else {}
        total = torch.zeros((), dtype=torch.float64)
        done = 0
        if resume is not None:
            total += resume.nll_sum
            done = resume.windows_done
        b = self.next_batch(resume)
        at: dict = {}
        stopped = False

        def start_of(b: int) -> int:  # a carried batch starts where its state was kept
            return self._carried_layer if b in carried else own_start

        with masked(self.model, self.grouping.with_removed(removed)):
            while b < len(self.batches) and not stopped:
                start = start_of(b)  # a run of batches with one start
                context = start_at_layer(self.model, start, at) if start > 0 else _nothing()
                with context, self._keeping([candidate] if candidate is not None else [], start, at):
                    while b < len(self.batches) and start_of(b) == start:
                        if start > 0:
                            at["hidden"] = carried[b] if b in carried else self._states[start][b]
                        batch = self.batches[b]
                        at["rows"] = [(candidate, b, batch.shape[0])]
                        total += window_nll(self.model, batch).sum()
                        self._count(removed, start, batch)
                        done += batch.shape[0]
                        b += 1
                        if self._over(total, bound):
                            stopped = True
                            break
        complete = done == len(self.windows)
        return CandidateResult(candidate, float(total), complete, done, len(self.windows), self.windows.seq_len)

    # -- candidates of one layer together ----------------------------------------------------------
    def groupable(self, layer: int) -> bool:
        """Whether candidates of ``layer`` can run together: its input is stored, layers after it exist, and
        no layer reads another layer's work (key-value sharing would need the earlier layers run again)."""
        return (self.group_layers and self.settings.prefix_reuse and self._layers_independent and layer in self._states
                and layer + 1 < self.n_layers)

    def _layer_output(self, removed: list[Component], layer: int, hidden: torch.Tensor, ids: torch.Tensor
                      ) -> torch.Tensor:
        """The hidden state leaving ``layer`` with ``removed`` masked, given ``hidden`` (its stored input) for the
        windows ``ids``."""
        holder, got = {"hidden": hidden}, {}

        def stop(module, args, output):
            got["hidden"] = output[0] if isinstance(output, tuple) else output
            raise _LayerDone

        handle = self._layer_modules[layer].register_forward_hook(stop)
        try:
            with masked(self.model, self.grouping.with_removed(removed)), start_at_layer(self.model, layer, holder):
                try:
                    self.model(input_ids=ids.to(model_device(self.model)), use_cache=False)
                except _LayerDone:
                    pass
        finally:
            handle.remove()
        return got["hidden"]

    def joins_at(self, candidate: Component, first_batch: int = 0) -> int | None:
        """The layer from which ``candidate``'s run is the base plan alone on its own hidden states, for window
        batches from ``first_batch`` on, so that candidates joining at one layer can run from there together
        (:meth:`evaluate_together`): the layer its carried states enter, where it has them for those batches; else
        the layer after its own, where that is :meth:`groupable`. None: it runs alone (:meth:`evaluate`)."""
        if not self.group_layers:
            return None
        if self._carried_from(candidate, first_batch) and self._carried_layer > candidate.layer + 1:
            return self._carried_layer
        return candidate.layer + 1 if self.groupable(candidate.layer) else None

    def _joining_state(self, candidate: Component, start: int, chunk: list[int], ids: torch.Tensor, stored: dict
                       ) -> torch.Tensor:
        """``candidate``'s hidden state entering layer ``start`` (its :meth:`joins_at`) for the window batches
        ``chunk``: carried over, or its own layer's output on the stored input (``stored``: that input per layer,
        joined once per chunk)."""
        if start > candidate.layer + 1:
            return torch.cat([self._carried[candidate][i] for i in chunk])
        if candidate.layer not in stored:
            stored[candidate.layer] = torch.cat([self._states[candidate.layer][i] for i in chunk])
        return self._layer_output(self.base + [candidate], candidate.layer, stored[candidate.layer], ids)

    def evaluate_many(self, candidates: list[Component], bound: float | Callable[[], float] = math.inf,
                      ) -> Iterator[CandidateResult]:
        """:meth:`evaluate` of each candidate, those joining the base plan at one layer (:meth:`joins_at`)
        together; results come as each group finishes (so not in the order asked)."""
        joining: dict[int | None, list[Component]] = {}
        for candidate in candidates:
            joining.setdefault(self.joins_at(candidate), []).append(candidate)
        for layer, group in joining.items():
            if layer is not None:
                yield from self.evaluate_together(group, bound)
            else:
                yield from (self.evaluate(candidate, bound) for candidate in group)

    def next_batch(self, earlier: CandidateResult | None) -> int:
        """The window batch an evaluation resumed from ``earlier`` (None: from the start) begins with."""
        return math.ceil(earlier.windows_done / self.batches[0].shape[0]) if earlier is not None else 0

    def evaluate_unit(self, candidates: list[Component], bound: float | Callable[[], float] = math.inf,
                      resume: dict[Component, CandidateResult] | None = None) -> list[CandidateResult]:
        """:meth:`evaluate_together` where ``candidates`` can join the base plan at one layer, else :meth:`evaluate`
        of each in turn (the same results either way)."""
        resume = resume or {}
        if self.joins_at(candidates[0], self.next_batch(resume.get(candidates[0]))) is not None:
            return self.evaluate_together(candidates, bound, resume=resume)
        return [self.evaluate(candidate, bound, resume=resume.get(candidate)) for candidate in candidates]

    def evaluate_together(self, candidates: list[Component], bound: float | Callable[[], float] = math.inf,
                          max_windows: int | None = None, resume: dict[Component, CandidateResult] | None = None,
                          ) -> list[CandidateResult]:
        """:meth:`evaluate` for candidates that join the base plan at one layer (:meth:`joins_at`), at once (the
        same results): each gets its state entering that layer (its own layer run on the stored input, or its
        carried state), and the layers from there run once for all, their windows stacked. After each window batch
        the candidates whose partial sum exceeds ``bound`` stop, where one-at-a-time evaluation stops. At most
        ``max_windows`` windows run in one forward (None: the settings', or :func:`windows_per_forward`); more
        candidates are split into groups, and fewer run several window batches per forward (after the first batch,
        which runs alone: a screening reads only that). ``resume``: earlier, stopped evaluations of these
        candidates, each after the same number of windows, to continue from."""
        batch_size = self.batches[0].shape[0]
        max_windows = max_windows or self._windows_per_forward()
        per_group = max(1, max_windows // batch_size)
        if len(candidates) > per_group:
            return [r for i in range(0, len(candidates), per_group)
                    for r in self.evaluate_together(candidates[i:i + per_group], bound, max_windows, resume)]
        earlier = [(resume or {}).get(c) for c in candidates]
        starts = {r.windows_done if r is not None else 0 for r in earlier}
        if len(starts) > 1:
            raise ShedderError("Candidates evaluated together must resume after the same number of windows.")
        totals = {c: torch.tensor(r.nll_sum if r is not None else 0.0, dtype=torch.float64)
                  for c, r in zip(candidates, earlier)}
        done = {c: r.windows_done if r is not None else 0 for c, r in zip(candidates, earlier)}
        b = self.next_batch(earlier[0])
        start = self.joins_at(candidates[0], b)
        if start is None or any(self.joins_at(c, b) != start for c in candidates):
            raise ShedderError(f"Candidates {candidates} cannot be evaluated together.")
        live = list(candidates)
        base = self.grouping.with_removed(self.base)
        at: dict = {}
        while b < len(self.batches) and live:
            per_forward = 1 if b == 0 else max(1, max_windows // (len(live) * batch_size))
            chunk = list(range(b, min(b + per_forward, len(self.batches))))
            ids = torch.cat([self.batches[i] for i in chunk])
            stored: dict[int, torch.Tensor] = {}
            states = [self._joining_state(c, start, chunk, ids, stored) for c in live]
            # a removed layer hands on its input, which in a model spread over GPUs may sit on the previous GPU
            at["hidden"] = torch.cat([state.to(states[0].device) for state in states])
            at["rows"] = [(c, i, self.batches[i].shape[0]) for c in live for i in chunk]
            with masked(self.model, base), start_at_layer(self.model, start, at), self._keeping(live, start, at):
                nll = window_nll(self.model, ids.repeat(len(live), 1)).view(len(live), -1)
            del at["hidden"]
            self.work += sum(self._layers_run(self.base + [c], start if start > c.layer + 1 else c.layer)
                             for c in live) * ids.numel()
            going = []
            for c, rows in zip(live, nll):
                offset = 0
                for i in chunk:  # batch by batch, as one-at-a-time evaluation adds and stops
                    size = self.batches[i].shape[0]
                    totals[c] += rows[offset:offset + size].sum()
                    done[c] += size
                    offset += size
                    if self._over(totals[c], bound):
                        break
                else:
                    going.append(c)
            live, b = going, chunk[-1] + 1
        return [CandidateResult(c, float(totals[c]), done[c] == len(self.windows), done[c], len(self.windows),
                                self.windows.seq_len) for c in candidates]

    def _windows_per_forward(self) -> int:
        return self.settings.windows_per_forward or windows_per_forward(self.model, self.windows.seq_len)

    @staticmethod
    def _over(total: torch.Tensor, bound: float | Callable[[], float]) -> bool:
        return float(total) > (bound() if callable(bound) else bound)


class _LayerDone(Exception):
    """Raised by a forward hook once the layer it watches has produced its output."""


def windows_per_forward(model: nn.Module, seq_len: int, cap: int = 128) -> int:
    """How many windows one forward of candidate evaluation takes at most: on a GPU what half of its free memory
    holds of the largest per-window tensors (the logits in the model's dtype and a float32 copy, and a few layer
    activations), at most ``cap``; ``cap`` on a CPU. On an H200, 128 windows of 1024 per forward took 10-15% less
    time than 64 in searches on smollm2-135m and smollm2-hybrid (``bench/search_cost.py --windows-per-forward``)."""
    device = model_device(model)
    if device.type != "cuda":
        return cap
    config = model.config
    width = max(getattr(config, "intermediate_size", 0) or 0, 2 * config.hidden_size)
    per_window = seq_len * (config.vocab_size * 6 + width * 16)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(cap, free // 2 // per_window))


def default_state_budget(device: torch.device) -> int:
    """Memory for stored layer inputs: 40% of free GPU memory, or a quarter of the machine's RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


@contextmanager
def _nothing():
    yield
