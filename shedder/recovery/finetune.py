"""A short, seeded, resumable fine-tune: the training loop under recovery tuning.

Next-token loss on token windows; AdamW, linear warm-up then cosine / linear decay (or constant),
gradient-norm clipping; bfloat16 autocast on a CUDA GPU with float32 master weights, plain float32
on the CPU. A checkpoint (trainable weights, optimiser, schedule, RNG states, the loss log) is
written atomically every ``checkpoint_every`` steps and after the last one; training started again
from it follows the same trajectory as an uninterrupted run, because the data order is a pure
function of the seed and the step (:class:`WindowSampler`).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ShedderError

log = logging.getLogger(__name__)

StepCallback = Callable[[dict, int], None]  # (this step's record, total steps)
SCHEDULES = ("cosine", "linear", "constant")
FINAL_LR_SHARE = 0.1  # cosine decays to this share of the peak learning rate


class WindowSampler:
    """Batches of training windows: every window once per epoch, in an order drawn from (seed, epoch).

    Batch ``step`` is a pure function of the step, so a resumed run reads exactly what an
    uninterrupted one would have read, with no state to store.
    """

    def __init__(self, windows: torch.Tensor, batch_size: int, seed: int):
        if len(windows) == 0:
            raise ShedderError("No training windows.")
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.windows), generator=generator)}
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        rows = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, index = divmod(position, len(self.windows))
            rows.append(int(self._order(epoch)[index]))
        return self.windows[rows]


@dataclass(frozen=True)
class Optimisation:
    steps: int
    lr: float
    warmup: int
    schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50  # 0: only after the last step

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        if self.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainingState:
    step: int = 0  # steps done
    seconds: float = 0.0
    log: list[dict] = field(default_factory=list)  # one record per step done


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, params: dict[str, nn.Parameter], optimiser, scheduler, state: TrainingState) -> None:
    payload = {
        "step": state.step, "seconds": state.seconds, "log": state.log,
        "params": {name: p.detach().cpu() for name, p in params.items()},
        "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, params: dict[str, nn.Parameter], optimiser, scheduler) -> TrainingState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if set(payload["params"]) != set(params):
        raise ShedderError(f"The checkpoint {path} holds other trainable weights than this run; "
                           "delete it or use a new output folder.")
    with torch.no_grad():
        for name, value in payload["params"].items():
            params[name].copy_(value)
    optimiser.load_state_dict(payload["optimiser"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"])
    return TrainingState(payload["step"], payload["seconds"], payload["log"])


def _no_gradient(params: dict[str, nn.Parameter]) -> list[str]:
    return [name for name, p in params.items() if p.grad is None]


def train(model: nn.Module, params: dict[str, nn.Parameter], sampler: WindowSampler, opt: Optimisation,
          checkpoint: Path, before_step: Callable[[], None] = lambda: None, all_need_gradients: bool = False,
          on_step: StepCallback | None = None) -> TrainingState:
    """Train ``params`` of ``model`` up to ``opt.steps`` steps, resuming from ``checkpoint`` if it exists.

    ``before_step`` runs after ``model.train()`` each step (LoRA uses it to keep Mamba mixers off
    their fused kernels). With ``all_need_gradients`` every parameter must receive a gradient in
    the first step, or the run stops with an error instead of silently training nothing.
    """
    device = next(model.parameters()).device
    optimiser = torch.optim.AdamW(params.values(), lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, opt.lr_factor)
    state = TrainingState()
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, params, optimiser, scheduler)
        log.info("Resuming from step %d (%s)", state.step, checkpoint)
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    first = True
    while state.step < opt.steps:
        start = time.perf_counter()
        model.train()
        before_step()
        ids = sampler.batch(state.step).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        if not torch.isfinite(loss):
            raise ShedderError(f"The training loss became {loss.item()} at step {state.step + 1}; "
                               "lower the learning rate (--lr) and start again in a new folder.")
        loss.backward()
        if first and all_need_gradients and _no_gradient(params):
            missing = _no_gradient(params)
            raise ShedderError(f"{len(missing)} trainable tensors got no gradient (e.g. {missing[0]}): the model "
                               "bypasses them. Choose other --target-modules or use --method full.")
        first = False
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), opt.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimiser.step()
        scheduler.step()
        optimiser.zero_grad(set_to_none=True)
        state.step += 1
        state.seconds += time.perf_counter() - start
        record = {"step": state.step, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                  "tokens": state.step * ids.numel(), "seconds": round(state.seconds, 3)}
        state.log.append(record)
        every = opt.checkpoint_every
        if (every > 0 and state.step % every == 0) or state.step == opt.steps:
            save_checkpoint(checkpoint, params, optimiser, scheduler, state)
        if on_step is not None:
            on_step(record, opt.steps)
    model.eval()
    return state


# --- inputs a pruned model silences -------------------------------------------------------------------

def silenced_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per linear module (by name), its input columns whose weights are all zero.

    A pruned layout keeps some removed heads as zero columns of ``o_proj`` / ``out_proj`` (slots that
    keep grouped-query attention's groups equal, SSM heads spread unevenly over the B/C groups); the
    catalogue reads them as removed. Training must leave them zero, or it brings removed heads back.
    """
    found = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear:
                zero = (module.weight == 0).all(dim=0)
                if zero.any():
                    found[name] = torch.nonzero(zero).flatten()
    return found


@contextmanager
def inputs_silenced(model: nn.Module, silenced: dict[str, torch.Tensor]):
    """While inside, zero the silenced input channels before each of those modules (a LoRA wrapper too,
    so its adapter never learns from them and their weights get no gradient)."""

    def hook_for(columns: torch.Tensor):
        def zero_inputs(module, args):
            x = args[0]
            return (x.index_fill(-1, columns.to(x.device), 0.0), *args[1:])

        return zero_inputs

    hooks = [model.get_submodule(name).register_forward_pre_hook(hook_for(columns))
             for name, columns in silenced.items()]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def zero_silenced_columns(model: nn.Module, silenced: dict[str, torch.Tensor]) -> None:
    """Zero the silenced columns again (a merged LoRA update covers every column). The model computes
    what it computed in training inside :func:`inputs_silenced`, because those inputs were zero there."""
    for name, columns in silenced.items():
        weight = model.get_submodule(name).weight
        weight.index_fill_(1, columns.to(weight.device), 0.0)
