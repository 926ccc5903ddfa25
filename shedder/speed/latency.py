"""Measured latency of a model, dense and (with a plan) physically extracted.

For each model and batch size, greedy ``generate`` of exactly ``new_tokens`` tokens (end of sequence
forbidden until then) on random prompt tokens; a stopping criterion that never stops notes when the
first token exists, so each run gives the time to first token (the prompt's forward pass; reported at
batch 1) and the decode rate ``batch * (new_tokens - 1) / seconds after the first token``. The
overhead-free decode loop of :mod:`shedder.speed.static_decode` (a CUDA graph on a GPU) is timed on the
same prompt, together with its prompt forward pass alone (``prefill_ms``: no ``generate`` overhead),
and peak memory is read around each. Every figure is the median (with min and max) of
``repeats`` timed runs after ``warmup`` untimed ones, with the device synchronised around every timed
region. With a plan the extracted model is timed, never the masked one (masks make nothing faster),
and the measured speedups are set against the ideal ones of :mod:`shedder.speed.cost_model`.
"""
from __future__ import annotations

import json
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from ..errors import ShedderError
from ..families import describe_model
from ..paths import write_text_atomic
from ..plan import Plan
from .cost_model import ideal_speedups, model_cost
from .static_decode import StaticDecoder, cache_bytes, eos_ids

FORMAT, VERSION = "shedder-latency", 1


@dataclass
class BenchSettings:
    prompt_len: int = 2048
    new_tokens: int = 128
    batch_sizes: tuple[int, ...] = (1, 16)
    repeats: int = 3
    warmup: int = 1
    static_loop: bool = True  # also time the overhead-free decode loop
    use_graph: bool = True  # capture it in a CUDA graph (GPU only)
    seed: int = 0

    def check(self) -> None:
        if self.prompt_len < 1:
            raise ShedderError("--prompt-len must be at least 1.")
        if self.new_tokens < 2:
            raise ShedderError("--new-tokens must be at least 2 (the first token comes from the prompt).")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ShedderError("--batch-sizes must be positive whole numbers, e.g. 1,16.")
        if self.repeats < 1 or self.warmup < 0:
            raise ShedderError("--repeats must be at least 1 and --warmup at least 0.")

    @property
    def mean_decode_context(self) -> int:
        """The average context length while decoding, for the ideal bytes per step."""
        return self.prompt_len + self.new_tokens // 2


# --- what ran, where ------------------------------------------------------------------------------

def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _kernel_of(function) -> str | None:
    """The module that really runs a transformers kernel-with-fallback function, or None if not one.

    transformers wraps each Mamba kernel entry point (``causal_conv1d_fn``, ``selective_state_update``
    ...) in a closure that holds the chosen ``implementation``: the mamba-ssm / causal-conv1d function
    when importable, else its own PyTorch reference.
    """
    seen = 0
    while function is not None and seen < 5:
        code = getattr(function, "__code__", None)
        if code is not None and "implementation" in code.co_freevars and function.__closure__:
            chosen = function.__closure__[code.co_freevars.index("implementation")].cell_contents
            return getattr(chosen, "__module__", None) or "?"
        function, seen = getattr(function, "__wrapped__", None), seen + 1
    return None


def kernel_backend(model: nn.Module, device: torch.device) -> dict:
    """Which implementation runs the model's Mamba mixers: mamba-ssm kernels or pure PyTorch."""
    _, layers = describe_model(model)
    mixer = next((p.ssm for p in layers if p.ssm is not None), None)
    if mixer is None:
        return {"summary": "no Mamba layers", "functions": {}}
    module = sys.modules[type(mixer).__module__]
    functions = {}
    for name, value in vars(module).items():
        chosen = _kernel_of(value) if callable(value) else None
        if chosen is not None:
            functions[name] = "pure PyTorch" if chosen.startswith("transformers") else chosen
    if not functions and hasattr(module, "is_fast_path_available"):  # older transformers: one flag
        fast = bool(module.is_fast_path_available)
        functions = {"is_fast_path_available": "mamba-ssm kernels" if fast else "pure PyTorch"}
    kernels = [f for f, impl in functions.items() if impl != "pure PyTorch"]
    if device.type != "cuda" or not kernels:
        summary = "pure PyTorch"
    elif len(kernels) == len(functions):
        summary = "mamba-ssm kernels"
    else:
        summary = f"mixed: kernels for {', '.join(sorted(kernels))}; PyTorch for the rest"
    return {"summary": summary, "functions": functions}


def environment(model: nn.Module) -> dict:
    device = next(model.parameters()).device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {
        "device": str(device),
        "device_name": name,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "backend": kernel_backend(model, device),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": _version("transformers"),
            "mamba-ssm": _version("mamba-ssm") or _version("mamba_ssm"),
            "causal-conv1d": _version("causal-conv1d") or _version("causal_conv1d"),
        },
    }


# --- timing helpers -------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: list[float], digits: int = 3) -> dict:
    """:func:`spread`, plus the interquartile range over the median where there are 4 runs or more."""
    out = spread(values, digits)
    if len(values) >= 4 and out["median"] > 0:
        out["iqr_over_median"] = round((out["q3"] - out["q1"]) / out["median"], 4)
    return out


class PeakMemory:
    """Peak memory of what runs between :meth:`reset` and :meth:`read`: allocated GPU memory on a GPU,
    the process's resident-set high-water mark on a CPU (Linux can reset it; elsewhere it is the peak
    since the process started)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated"
        elif Path("/proc/self/clear_refs").exists():
            self.kind = "process resident set high-water mark (VmHWM), reset before each measurement"
        else:
            self.kind = "process resident set high-water mark since start (ru_maxrss)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Seconds ``run`` takes: between CUDA events on a GPU (the GPU's own clock, so the host's wake-up after
    the synchronisation is not counted), by the wall clock on a CPU."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class _FirstTokenClock(StoppingCriteria):
    """A stopping criterion that never stops: it notes when ``generate`` has produced its first token
    (the prompt's forward pass), so one run gives both the time to first token and the decode time."""

    def __init__(self, device: torch.device):
        self.device, self.first = device, None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.first is None:
            _sync(self.device)
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate_exactly(model: nn.Module, prompt: torch.Tensor, new_tokens: int, clock: _FirstTokenClock | None = None
              ) -> torch.Tensor:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (end-of-sequence suppressed until then)."""
    eos = eos_ids(model)
    pad = model.generation_config.pad_token_id
    criteria = StoppingCriteriaList([clock] if clock is not None else [])
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, num_beams=1, eos_token_id=eos or None,
                             pad_token_id=pad if pad is not None else (eos[0] if eos else None),
                             stopping_criteria=criteria)
    return out[:, prompt.shape[1]:]


def _generate_runs(model: nn.Module, prompt: torch.Tensor, settings: BenchSettings) -> dict:
    """Per timed run of ``generate``: seconds to the first token, and seconds of the decode steps after it."""
    device = prompt.device
    for _ in range(settings.warmup):
        generate_exactly(model, prompt, settings.new_tokens)
    first, decode, tokens = [], [], None
    for _ in range(settings.repeats):
        clock = _FirstTokenClock(device)
        _sync(device)
        start = time.perf_counter()
        tokens = generate_exactly(model, prompt, settings.new_tokens, clock)
        _sync(device)
        end = time.perf_counter()
        first.append(clock.first - start)
        decode.append(end - clock.first)
    return {"first": first, "decode": decode, "tokens": tokens}


def random_prompt(model: nn.Module, batch: int, length: int, seed: int) -> torch.Tensor:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(device)


# --- one model ------------------------------------------------------------------------------------

def _decode_at(model: nn.Module, batch: int, settings: BenchSettings, memory: PeakMemory) -> dict:
    prompt = random_prompt(model, batch, settings.prompt_len, settings.seed + batch)
    steps = settings.new_tokens - 1
    memory.reset()
    runs = _generate_runs(model, prompt, settings)
    record = {
        "first_token_ms": _stats([1000 * s for s in runs["first"]]),
        "generate": {
            "tokens_per_s": _stats([batch * steps / s for s in runs["decode"]], 1),
            "ms_per_step": _stats([1000 * s / steps for s in runs["decode"]]),
            "peak_memory_bytes": memory.read(),
        },
    }
    if settings.static_loop:
        try:
            record["static"] = _static_decode(model, prompt, settings, memory, runs["tokens"])
        except torch.OutOfMemoryError as exc:
            record["static"] = _out_of_memory(batch, exc, prompt.device)
    return record


def _static_decode(model: nn.Module, prompt: torch.Tensor, settings: BenchSettings, memory: PeakMemory,
                   reference: torch.Tensor) -> dict:
    device = prompt.device
    batch, steps = prompt.shape[0], settings.new_tokens - 1
    memory.reset()
    decoder = StaticDecoder(model, batch, settings.prompt_len, settings.new_tokens, settings.use_graph)
    decoder.prepare(prompt)
    for _ in range(settings.warmup):
        decoder.run(prompt)
    prefill, seconds = [], []
    for _ in range(settings.repeats):
        prefill.append(timed(lambda: decoder.prefill(prompt), device))
        seconds.append(timed(decoder.decode, device))
    tokens = decoder.generated
    record = {
        "mode": decoder.mode,
        "fallback_reason": decoder.fallback_reason,
        "prefill_ms": _stats([1000 * s for s in prefill]),  # the prompt's forward pass alone, no generate
        "tokens_per_s": _stats([batch * steps / s for s in seconds], 1),
        "ms_per_step": _stats([1000 * s / steps for s in seconds]),
        "peak_memory_bytes": memory.read(),
        "cache_bytes": cache_bytes(decoder.cache),
        "tokens_equal_generate": bool(torch.equal(tokens, reference)),
        "tokens_agreement": round((tokens == reference).float().mean().item(), 4),
    }
    return record


def _out_of_memory(batch: int, exc: BaseException, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"error": f"out of memory at batch {batch}: {str(exc).splitlines()[0]}"}


def time_model(model: nn.Module, settings: BenchSettings, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Time-to-first-token, decode rates and peak memory of one model (see the module docstring)."""
    device = next(model.parameters()).device
    memory = PeakMemory(device)
    params = {id(p): p for p in model.parameters()}.values()
    record = {
        "params": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "layers": model.config.num_hidden_layers,
        "peak_memory_kind": memory.kind,
    }
    record["decode"] = {}
    for batch in settings.batch_sizes:
        progress(f"batch {batch}")
        try:
            record["decode"][str(batch)] = _decode_at(model, batch, settings, memory)
        except torch.OutOfMemoryError as exc:
            record["decode"][str(batch)] = _out_of_memory(batch, exc, device)
    at_one = record["decode"].get("1")
    if at_one is None:  # time to first token is defined at batch 1
        progress("time to first token")
        runs = _generate_runs(model, random_prompt(model, 1, settings.prompt_len, settings.seed + 1), settings)
        at_one = {"first_token_ms": _stats([1000 * s for s in runs["first"]])}
    record["ttft_ms"] = at_one.get("first_token_ms")
    return record


# --- dense vs extracted ---------------------------------------------------------------------------

def extracted_model(model: nn.Module, plan: Plan) -> nn.Module:
    """The physically smaller model for ``plan``, built in memory as ``extract`` would write it
    (on the CPU, in the source dtype)."""
    from ..extraction.extract import build_extracted

    return build_extracted(model, plan).eval()


def _speedups(dense: dict, pruned: dict, ideal: dict) -> dict:
    """Measured dense/pruned time ratios, and each as a fraction of the ideal one."""
    out = {"ttft": None, "ttft_over_ideal": None, "prefill": None, "prefill_over_ideal": None, "decode": {}}
    if dense["ttft_ms"] and pruned["ttft_ms"]:
        out["ttft"] = round(dense["ttft_ms"]["median"] / pruned["ttft_ms"]["median"], 4)
        out["ttft_over_ideal"] = round(out["ttft"] / ideal["prefill_flops"], 4)
    prefill = [record["decode"].get("1", {}).get("static", {}).get("prefill_ms") for record in (dense, pruned)]
    if all(prefill):  # batch 1, without generate's own overhead
        out["prefill"] = round(prefill[0]["median"] / prefill[1]["median"], 4)
        out["prefill_over_ideal"] = round(out["prefill"] / ideal["prefill_flops"], 4)
    for batch, row in dense["decode"].items():
        other = pruned["decode"].get(batch, {})
        if "error" in row or "error" in other:
            continue
        entry = {}
        for path in ("generate", "static"):
            if "tokens_per_s" in row.get(path, {}) and "tokens_per_s" in other.get(path, {}):
                ratio = other[path]["tokens_per_s"]["median"] / row[path]["tokens_per_s"]["median"]
                entry[path] = round(ratio, 4)
                entry[f"{path}_over_ideal"] = round(ratio / ideal["decode_bytes"][batch], 4)
        out["decode"][batch] = entry
    return out


def benchmark(model: nn.Module, tokenizer=None, plan: Plan | None = None, settings: BenchSettings | None = None,
              progress: Callable[[str], None] = lambda _: None, dense_record: dict | None = None) -> dict:
    """The full report: environment, the dense model's timings, and with a non-empty ``plan`` the
    extracted model's timings, the ideal speedups and measured / ideal. (``tokenizer`` is not needed:
    prompts are random token ids and extraction happens in memory; it is accepted so that what
    ``load_model`` returns can be passed as it is.)

    With a plan the dense model is moved to the CPU while the extracted one is timed (so each peak
    memory is that model's alone) and moved back afterwards. ``dense_record`` (the ``"dense"`` part of
    an earlier report on the same model and settings) skips timing the dense model again.
    """
    settings = settings or BenchSettings()
    settings.check()
    device = next(model.parameters()).device
    removed = list(plan.removed) if plan is not None else []
    report = {
        "format": FORMAT,
        "version": VERSION,
        "model_type": model.config.model_type,
        "settings": {**asdict(settings), "batch_sizes": list(settings.batch_sizes)},
        "environment": environment(model),
        "removed": [c.to_dict() for c in removed],
    }
    small = None
    if removed:
        progress("extracting")
        small = extracted_model(model, plan).to("cpu")  # off the device while the dense model is timed
    if dense_record is None:
        progress("dense model")
        dense_record = time_model(model, settings, lambda what: progress(f"dense: {what}"))
    report["dense"] = dense_record
    if small is None:
        return report
    dense_cost, pruned_cost = model_cost(model, plan.with_removed([])), model_cost(model, plan)
    model.to("cpu")
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        small.to(device)
        report["extracted"] = time_model(small, settings, lambda what: progress(f"extracted: {what}"))
        progress("prefill of both, in turns")
        model.to(device)
        report["paired_prefill"] = paired_prefill(model, small, settings)
    finally:
        del small
        model.to(device)
    batches = list(settings.batch_sizes)
    context = settings.mean_decode_context
    ideal = ideal_speedups(dense_cost, pruned_cost, settings.prompt_len, batches, context)
    report["cost_model"] = {"dense": dense_cost.to_dict(settings.prompt_len, batches, context),
                            "extracted": pruned_cost.to_dict(settings.prompt_len, batches, context),
                            "decode_context": context}
    report["ideal_speedup"] = _rounded(ideal)
    report["measured_speedup"] = _speedups(report["dense"], report["extracted"], ideal)
    paired = report["paired_prefill"]["speedup"]
    report["measured_speedup"]["prefill_paired"] = paired["median"]
    report["measured_speedup"]["prefill_paired_over_ideal"] = round(paired["median"] / ideal["prefill_flops"], 4)
    return report


PAIRED_PREFILL_RUNS = 21


def paired_prefill(dense: nn.Module, pruned: nn.Module, settings: BenchSettings) -> dict:
    """The prompt's forward pass at batch 1 (filling the cache, no ``generate``) of both models, timed in
    turns with the order alternating, so that drift of clocks and temperature falls on both alike: per
    model the times, and the speedup as the spread of the per-pair ratios. At least
    ``PAIRED_PREFILL_RUNS`` pairs, after ``settings.warmup`` (at least 2) untimed ones."""
    device = next(dense.parameters()).device
    prompt = random_prompt(dense, 1, settings.prompt_len, settings.seed + 1)
    decoders = [StaticDecoder(m, 1, settings.prompt_len, 2, use_graph=False) for m in (dense, pruned)]
    for _ in range(max(2, settings.warmup)):
        for decoder in decoders:
            decoder.prefill(prompt)
    seconds: tuple[list[float], list[float]] = ([], [])
    for run in range(max(settings.repeats, PAIRED_PREFILL_RUNS)):
        for which in ((0, 1) if run % 2 == 0 else (1, 0)):
            seconds[which].append(timed(lambda: decoders[which].prefill(prompt), device))
    return {"dense_ms": _stats([1000 * t for t in seconds[0]]), "extracted_ms": _stats([1000 * t for t in seconds[1]]),
            "speedup": spread([d / p for d, p in zip(*seconds)]),
            "timer": "CUDA events" if device.type == "cuda" else "wall clock"}


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def save_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    return path


# --- dense and extracted timed in turns, with their spread (the dashboard's latency) -----------------

WIDE_SPREAD = 0.10  # interquartile range over median of the speedup above this: too noisy to read closely
BEYOND_IDEAL = 1.2  # measured speedup above this many times the cost model's ideal: suspect


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, quartiles (inclusive method), min, max and the number of runs of ``values``."""
    if not values:
        raise ShedderError("No timed runs to summarise.")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": round(statistics.median(values), digits), "q1": round(q1, digits), "q3": round(q3, digits),
            "min": round(min(values), digits), "max": round(max(values), digits), "runs": len(values)}


def timed_generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds in all) of one greedy ``generate``."""
    device = prompt.device
    clock = _FirstTokenClock(device)
    _sync(device)
    start = time.perf_counter()
    generate_exactly(model, prompt, new_tokens, clock)
    _sync(device)
    return clock.first - start, time.perf_counter() - start


def latency_verdict(speedup: dict, ideal: float | None) -> list[str]:
    """Why a measured speedup (a :func:`spread` of per-pair ratios) should not be read closely, if it should not."""
    notes = []
    if speedup["median"] > 0 and (speedup["q3"] - speedup["q1"]) / speedup["median"] > WIDE_SPREAD:
        notes.append(f"wide spread: the middle half of the {speedup['runs']} pairs lies between "
                     f"{speedup['q1']:.2f}x and {speedup['q3']:.2f}x; the machine was busy, or the model is too small "
                     "to time well; measure again or with more tokens")
    if ideal is not None and speedup["median"] > BEYOND_IDEAL * ideal:
        notes.append(f"{speedup['median']:.2f}x is far beyond the cost model's ideal {ideal:.2f}x: the cost model counts "
                     "weights and FLOPs only, so per-layer overhead (which dominates a small model, e.g. on a CPU) or "
                     "noise made up the rest")
    return notes


def compare_latency(model: nn.Module, plan: Plan, prompt_len: int, new_tokens: int, repeats: int = 21,
                    warmup: int = 2, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Batch-1 time of ``generate`` (a ``prompt_len``-token random prompt, then exactly ``new_tokens`` greedy
    tokens) of the dense model and of the extracted one, timed in turns (dense, extracted, dense ...) so that
    both see the same machine load. Each model's times and the per-pair speedup (dense / extracted) are given
    as :func:`spread`; the ideal speedup of :mod:`shedder.speed.cost_model` for the whole run (prefill at its ideal
    FLOP ratio, decode at its ideal byte ratio, weighted by the dense model's measured times) and
    :func:`latency_verdict`'s notes come with them. An empty plan times the model against itself."""
    if repeats < 3:
        raise ShedderError("Latency needs at least 3 timed runs per model to show its spread.")
    settings = BenchSettings(prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=(1,), repeats=repeats,
                             warmup=warmup, static_loop=False, seed=seed)
    settings.check()
    device = next(model.parameters()).device
    small = extracted_model(model, plan).to(device) if plan.removed else model
    prompt = random_prompt(model, 1, prompt_len, seed)
    runs = {"dense": {"first": [], "total": []}, "extracted": {"first": [], "total": []}}
    try:
        for _ in range(warmup):
            for m in (model, small):
                generate_exactly(m, prompt, new_tokens)
        for n in range(repeats):
            for name, m in (("dense", model), ("extracted", small)):
                first, total = timed_generate(m, prompt, new_tokens)
                runs[name]["first"].append(1000 * first)
                runs[name]["total"].append(1000 * total)
            if progress is not None:
                progress(n + 1, repeats)
        params = sum(p.numel() for p in {id(p): p for p in small.parameters()}.values())
    finally:
        if small is not model:
            del small
    ratios = [d / e for d, e in zip(runs["dense"]["total"], runs["extracted"]["total"])]
    ideal = None
    if plan.removed:
        costs = ideal_speedups(model_cost(model, plan.with_removed([])), model_cost(model, plan), prompt_len, [1],
                               settings.mean_decode_context)
        first = statistics.median(runs["dense"]["first"])
        rest = statistics.median(runs["dense"]["total"]) - first
        ideal = round((first + rest) / (first / costs["prefill_flops"] + rest / costs["decode_bytes"]["1"]), 4)
    speedup = spread(ratios)
    return {
        "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup,
        "dense_ms": spread(runs["dense"]["total"], 3), "extracted_ms": spread(runs["extracted"]["total"], 3),
        "dense_first_token_ms": spread(runs["dense"]["first"], 3),
        "extracted_first_token_ms": spread(runs["extracted"]["first"], 3),
        "speedup": speedup, "ideal_speedup": ideal, "notes": latency_verdict(speedup, ideal),
        "params": params, "device": environment(model)["device_name"],
    }
