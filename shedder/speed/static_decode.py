"""Greedy decoding without per-step overhead: one decode step captured in a CUDA graph and replayed.

With eager ``generate`` every layer costs a few kernel launches plus Python per token, which on a GPU
hides what removing layers saves. Here one decode step (the model's forward for one token, the
argmax, writing the token back) runs on static buffers, so it can be captured once and replayed:

- the cache is transformers' ``StaticCache``: its Mamba layers update their conv and recurrent
  states with in-place copies (``copy_``), its attention layers write K/V into preallocated
  tensors at a position held in a device tensor, so every replay reads and writes the same memory;
- the step reads the current token and position from ``token`` / ``position`` and writes the next
  token into ``token`` and into column ``step`` of ``generated``, then advances ``position`` and
  ``step``; all of it on the device, so no value ever goes back to Python between steps;
- ``generate``'s ``min_new_tokens`` forbids end-of-sequence tokens, so the step masks them too,
  which makes the tokens exactly those of ``generate(do_sample=False, min_new_tokens=max_new_tokens)``.

Each run resets the cache in place and runs the prompt (prefill) eagerly; only the decode steps are
replayed. Without CUDA (or with ``use_graph=False``) the same step runs eagerly, which is how the
tests check the logic on a CPU. If a family's step cannot be captured, ``torch.compile`` with
``mode="reduce-overhead"`` is tried, then the eager loop; ``mode`` and ``fallback_reason`` say which.
"""
from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before capture: kernels compile and autotune outside the graph


def eos_ids(model: nn.Module) -> list[int]:
    """End-of-sequence ids that ``generate`` would stop on (and ``min_new_tokens`` suppresses)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a cache holds (states, K/V, lengths), to check they stay where they are."""
    found = []
    for layer in getattr(cache, "layers", []):
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else [value]
            found += [t for t in items if isinstance(t, torch.Tensor)]
    return found


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in _cache_tensors(cache))


class StaticDecoder:
    """Greedy decoding of ``new_tokens`` tokens for a fixed (batch, prompt length) on static buffers."""

    def __init__(self, model: nn.Module, batch: int, prompt_len: int, new_tokens: int, use_graph: bool = True):
        from transformers import StaticCache

        if new_tokens < 2:
            raise ValueError("new_tokens must be at least 2 (one from the prompt, then decode steps).")
        self.model, self.batch, self.prompt_len, self.new_tokens = model, batch, prompt_len, new_tokens
        self.device = next(model.parameters()).device
        accepted = inspect.signature(model.forward).parameters
        self._cache_arg = "past_key_values" if "past_key_values" in accepted else "cache_params"
        self._takes_positions = "position_ids" in accepted
        self._takes_logits_to_keep = "logits_to_keep" in accepted
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.generated = torch.zeros(batch, new_tokens, dtype=torch.long, device=self.device)
        self._eos = torch.tensor(eos_ids(model), dtype=torch.long, device=self.device)
        self.mode, self.fallback_reason = "eager", None
        self._graph = None
        self._compiled = None
        self._want_graph = use_graph and self.device.type == "cuda"

    # --- the two forwards ---------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kwargs = {self._cache_arg: self.cache, "use_cache": True}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        logits = self.model(input_ids=ids, **kwargs).logits[:, -1].float()
        if self._eos.numel():
            logits = logits.index_fill(-1, self._eos, float("-inf"))
        return logits.argmax(-1, keepdim=True)

    def _step(self) -> None:
        """One decode step, reading and writing only the static buffers (safe to capture)."""
        next_token = self._forward(self.token, self.position)
        self.token.copy_(next_token)
        self.generated.index_copy_(1, self.step_index, next_token)
        self.position.add_(1)
        self.step_index.add_(1)

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> None:
        """Reset the cache in place and run the prompt; leaves the first new token in ``token``."""
        if tuple(prompt.shape) != (self.batch, self.prompt_len):
            raise ValueError(f"prompt shape {tuple(prompt.shape)} != {(self.batch, self.prompt_len)}")
        self.cache.reset()
        positions = torch.arange(self.prompt_len, device=self.device).expand(self.batch, -1)
        first = self._forward(prompt.to(self.device), positions)
        self.token.copy_(first)
        self.generated[:, :1].copy_(first)
        self.position.fill_(self.prompt_len)
        self.step_index.fill_(1)

    # --- capture ------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, prompt: torch.Tensor) -> None:
        """Allocate the cache with one prefill, then capture the step (CUDA) or leave it eager."""
        self.prefill(prompt)
        if not self._want_graph:
            return
        before = [t.data_ptr() for t in _cache_tensors(self.cache)]
        try:
            self._graph = self._capture()
            self.mode = "cuda_graph"
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back, with the reason kept
            self._graph = None
            self.fallback_reason = f"CUDA graph capture failed: {type(exc).__name__}: {exc}"
            log.warning("%s; trying torch.compile(mode='reduce-overhead')", self.fallback_reason)
            self._try_compile(prompt)
        self.prefill(prompt)
        if [t.data_ptr() for t in _cache_tensors(self.cache)] != before:
            self._graph, self._compiled, self.mode = None, None, "eager"
            self.fallback_reason = "the cache reallocated its tensors between runs; replay would be wrong"
            log.warning(self.fallback_reason)

    def _capture(self) -> "torch.cuda.CUDAGraph":
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(min(WARMUP_STEPS, self.new_tokens - 1)):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        return graph

    def _try_compile(self, prompt: torch.Tensor) -> None:
        try:
            compiled = torch.compile(self._step, mode="reduce-overhead")
            self.prefill(prompt)
            for _ in range(min(WARMUP_STEPS, self.new_tokens - 1)):
                compiled()
            self._compiled, self.mode = compiled, "torch_compile_reduce_overhead"
        except Exception as exc:  # noqa: BLE001
            self.fallback_reason += f"; torch.compile failed too: {type(exc).__name__}: {exc}"
            log.warning("torch.compile failed as well; decoding eagerly")
            self.mode = "eager"

    # --- running ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self) -> None:
        """The decode steps after :meth:`prefill`: ``new_tokens - 1`` replays (or eager steps)."""
        for _ in range(self.new_tokens - 1):
            if self._graph is not None:
                self._graph.replay()
            elif self._compiled is not None:
                self._compiled()
            else:
                self._step()

    def run(self, prompt: torch.Tensor) -> torch.Tensor:
        """Prefill + decode; the ``(batch, new_tokens)`` greedy tokens."""
        self.prefill(prompt)
        self.decode()
        return self.generated.clone()
