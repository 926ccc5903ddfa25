"""Recovery tuning: a short fine-tune (LoRA or full) of a pruned model, measured before and after.

The paper's third stage. :func:`recover` takes an extracted (physically smaller) model, or any model
:func:`shedder.model.loading.load_model` reads, and:

1. measures held-out perplexity and bits per byte on ``wiki-test`` (and, with ``tasks``, zero-shot
   accuracy) of the dense reference, when one is given or can be found, and of the pruned model;
2. fine-tunes it on training text (never ``wiki-test``): LoRA adapters through peft
   (:mod:`shedder.recovery.lora`), or every weight (:mod:`shedder.recovery.finetune`: seeded, checkpointed, resumable);
   removed heads that a pruned layout keeps as zero columns stay zero (:func:`shedder.recovery.finetune.silenced_inputs`);
3. merges the adapters into the weights, saves the model in the input checkpoint's dtype with its
   tokenizer (and plan), so it loads with plain ``from_pretrained``; measures it again, as saved;
4. writes ``recovery.json`` (every number, and the share of the pruning loss recovered:
   ``(pruned - recovered) / (pruned - dense)``, for bits per byte and the zero-shot average), a
   ``training_log.json`` (loss per step) and a model card section into ``README.md``.

The output folder holds the run while it trains (``recovery_run.json``, ``checkpoint.pt``); running
again with the same folder and settings continues from the last checkpoint. The finished model is
written to a temporary sibling folder and swapped in by renames, so the folder is either the run in
progress or the complete result.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ShedderError
from ..formats import result_cache
from ..model.model_folders import (RESULT_FILE, checkpoint_dtype, code_files, config_json, find_dense_model,
                            local_dir, read_json)
from ..folder_lock import output_lock
from ..paths import write_text_atomic

log = logging.getLogger(__name__)

METHODS = ("lora", "full")
HELD_OUT = "wiki-test"
DEFAULT_LR = {"lora": 5e-4, "full": 5e-5}
RUN_FILE, CHECKPOINT, LOG_FILE = "recovery_run.json", "checkpoint.pt", "training_log.json"
RUN_FORMAT, RESULT_FORMAT = "shedder-recovery-run", "shedder-recovery"
MeasureProgress = Callable[[str, int, int], None]  # (what is measured, done, total)


@dataclass(frozen=True)
class RecoverySettings:
    """Everything that determines the training trajectory (plus how often to checkpoint)."""

    method: str = "lora"
    data: str = "wiki"
    steps: int = 200
    lr: float | None = None  # default: DEFAULT_LR[method]
    batch_size: int = 8
    seq_len: int = 512
    seed: int = 0
    warmup: int | None = None  # default: 5% of the steps
    schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # LoRA targets (short names); None: the family's defaults
    checkpoint_every: int = 50

    def resolved(self) -> "RecoverySettings":
        from .finetune import SCHEDULES

        if self.method not in METHODS:
            raise ShedderError(f"Unknown recovery method {self.method!r}; use {' or '.join(METHODS)}.")
        if self.data.strip().lower() in (HELD_OUT, "wiki_test"):
            raise ShedderError(f"{HELD_OUT} is the held-out text that recovery is measured on; it is never "
                               "trained on. Train on wiki (the training split), a .txt file or a hub set.")
        if self.schedule not in SCHEDULES:
            raise ShedderError(f"Unknown schedule {self.schedule!r}; use {', '.join(SCHEDULES)}.")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ShedderError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.seq_len < 2:
            raise ShedderError("--seq-len must be at least 2.")
        lr = DEFAULT_LR[self.method] if self.lr is None else self.lr
        warmup = max(1, round(0.05 * self.steps)) if self.warmup is None else self.warmup
        if not (math.isfinite(lr) and lr > 0) or not 0 <= warmup <= self.steps:
            raise ShedderError("--lr must be a positive number and --warmup between 0 and --steps.")
        if not (math.isfinite(self.alpha) and self.alpha > 0 and 0 <= self.dropout < 1 and self.rank >= 1):
            raise ShedderError("LoRA needs --rank at least 1, a positive --alpha and --dropout from 0 to below 1.")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0 and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0 and self.checkpoint_every >= 0 and self.seed >= 0):
            raise ShedderError("--grad-clip must be positive, --weight-decay, --checkpoint-every and --seed at least 0.")
        targets = tuple(self.target_modules) if self.target_modules else None
        return replace(self, lr=lr, warmup=warmup, target_modules=targets)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules) if self.target_modules else None
        return data

    def trajectory(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        data = self.to_dict()
        data.pop("checkpoint_every")
        if self.method != "lora":
            for key in ("rank", "alpha", "dropout", "target_modules"):
                data.pop(key)
        return data


@dataclass(frozen=True)
class Evaluation:
    """How the models are measured: held-out ``wiki-test`` text, optionally zero-shot tasks."""

    tokens: int | None = None  # held-out tokens from the start of wiki-test (None: all of it)
    seq_len: int = 512
    batch_size: int = 8
    tasks: tuple[str, ...] = ()
    limit: int | None = None  # documents per task, drawn with ``seed``
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "source": HELD_OUT, "tasks": list(self.tasks)}


@dataclass
class RecoveryResult:
    out_dir: Path
    record: dict  # what recovery.json holds
    log: list[dict] = field(default_factory=list)  # one record per training step
    model: nn.Module | None = None  # the recovered model in memory (None when read back from disk)
    already_done: bool = False

    @property
    def share(self) -> dict:
        return self.record["recovered_share"]


# --- measuring ------------------------------------------------------------------------------------

def measure(model: nn.Module, tokenizer, evaluation: Evaluation, progress: MeasureProgress | None = None,
            label: str = "") -> dict:
    """Held-out perplexity / bits per byte and optional zero-shot accuracy; stored by model fingerprint."""
    from ..measurement.bits_per_byte import bits_per_byte
    from ..measurement.calibration import tokenizer_fingerprint
    from ..measurement.evaluation import evaluate_accuracy
    from ..model.identity import model_fingerprint

    def stage(name: str):
        return None if progress is None else (lambda done, total: progress(f"{label}: {name}", done, total))

    parameter = next(model.parameters())
    key = {"version": 1, "model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
           "source": HELD_OUT, "tokens": evaluation.tokens, "seq_len": evaluation.seq_len,
           "dtype": str(parameter.dtype), "device": parameter.device.type}
    held_out = result_cache.load("held_out", key)
    if held_out is None:
        held_out = bits_per_byte(model, tokenizer, HELD_OUT, evaluation.seq_len, evaluation.tokens,
                                 evaluation.batch_size, stage("held-out text")).to_dict()
        result_cache.save("held_out", key, held_out)
    accuracy = None
    if evaluation.tasks:
        report = evaluate_accuracy(model, tokenizer, evaluation.tasks, limit=evaluation.limit, seed=evaluation.seed,
                                   batch_size=evaluation.batch_size, progress=stage("zero-shot"))
        accuracy = report.to_dict()
    return {"held_out": held_out, "accuracy": accuracy}


def recovered_share(pruned: float | None, recovered: float | None, dense: float | None) -> float | None:
    """``(pruned - recovered) / (pruned - dense)``: 1 = all of the pruning loss won back, 0 = none.

    The same formula serves a lower-is-better measure (bits per byte) and a higher-is-better one
    (accuracy). None when a value is missing or pruning cost nothing.
    """
    if pruned is None or recovered is None or dense is None or abs(pruned - dense) < 1e-12:
        return None
    return (pruned - recovered) / (pruned - dense)


def shares(metrics: dict) -> dict:
    def value(name: str, path: tuple[str, str]) -> float | None:
        entry = metrics.get(name)
        part = entry and entry.get(path[0])
        return None if not part else part.get(path[1])

    out = {}
    for label, path in (("bpb", ("held_out", "bpb")), ("zero_shot_average", ("accuracy", "average"))):
        out[label] = recovered_share(value("pruned", path), value("recovered", path), value("dense", path))
    return out


# --- the output folder ----------------------------------------------------------------------------

def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def _siblings(out_dir: Path) -> tuple[Path, Path]:
    """(staging folder for the finished model, where the run goes while they are swapped)."""
    return out_dir.with_name(f".{out_dir.name}.final"), out_dir.with_name(f".{out_dir.name}.run-old")


def _finish_interrupted_swap(out_dir: Path) -> None:
    staging, old = _siblings(out_dir)
    if out_dir.exists() or not old.exists():
        return
    if (staging / RESULT_FILE).is_file():
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(out_dir)


def _publish(staging: Path, out_dir: Path) -> None:
    _, old = _siblings(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _differences(stored: dict, wanted: dict) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _check_out_dir(out_dir: Path, run: dict) -> dict | None:
    """The stored run marker of ``out_dir`` (None for a new or empty folder); errors for anything else."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise ShedderError(f"{out_dir} is a file; choose a folder for the recovered model.")
    stored = read_json(out_dir / RUN_FILE)
    if stored is None:
        if any(out_dir.iterdir()):
            raise ShedderError(f"{out_dir} already holds files that are not a shedder recovery run; "
                               "choose a new (or empty) output folder.")
        return None
    if stored.get("format") != RUN_FORMAT or stored.get("model") != run["model"]:
        raise ShedderError(f"{out_dir} holds a recovery run of another model ({stored.get('model')}); "
                           "choose a new output folder.")
    differ = _differences(stored.get("settings", {}), run["settings"])
    if differ:
        raise ShedderError(f"{out_dir} holds a recovery run with other settings ({', '.join(differ)}); run again "
                           "with the same settings to continue it, or choose a new output folder.")
    return stored


def _finished(out_dir: Path, run: dict, dense: str | None, evaluation: Evaluation) -> RecoveryResult | None:
    record = read_json(out_dir / RESULT_FILE)
    if record is None:
        return None
    if record.get("evaluation") != evaluation.to_dict() or (dense and record.get("dense") != dense):
        raise ShedderError(f"{out_dir} holds a finished recovery measured with other evaluation settings; "
                           "measure it again with `python -m shedder eval`, or recover into a new folder.")
    training_log = (read_json(out_dir / LOG_FILE) or {}).get("steps", [])
    return RecoveryResult(out_dir, record, training_log, None, already_done=True)


# --- model card -----------------------------------------------------------------------------------

def _cell(metrics: dict | None, part: str, key: str, digits: int = 4) -> str:
    value = None if not metrics or not metrics.get(part) else metrics[part].get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def model_card(record: dict, previous: str | None) -> str:
    s = record["settings"]
    how = (f"LoRA (rank {s['rank']}, alpha {s['alpha']:g}, dropout {s['dropout']:g}) on "
           f"{record['training']['lora_targets']} projections, merged into the weights"
           if s["method"] == "lora" else "full fine-tune of every weight")
    rows = [("dense" + (f" (`{record['dense']}`)" if record.get("dense") else ""), record["metrics"]["dense"]),
            ("pruned", record["metrics"]["pruned"]), ("recovered", record["metrics"]["recovered"])]
    lines = [
        "## Recovery tuning", "",
        f"Fine-tuned with shedder after pruning: {how}; {s['steps']} steps of {s['batch_size']} x {s['seq_len']} "
        f"tokens of `{s['data']}`, AdamW, peak learning rate {s['lr']:g}, {s['schedule']} schedule, seed {s['seed']}.",
        "", f"Measured on `{HELD_OUT}` (held out, never trained on):", "",
        "| model | perplexity | bits per byte | zero-shot average |", "| --- | --- | --- | --- |",
    ]
    for name, metrics in rows:
        if metrics is not None:
            lines.append(f"| {name} | {_cell(metrics, 'held_out', 'ppl', 3)} | {_cell(metrics, 'held_out', 'bpb')} | "
                         f"{_cell(metrics, 'accuracy', 'average')} |")
    share = record["recovered_share"]
    parts = [f"{share[k]:.1%} ({label})" for k, label in (("bpb", "bits per byte"),
                                                           ("zero_shot_average", "zero-shot average"))
             if share.get(k) is not None]
    lines += ["", "Share of the pruning loss recovered, (pruned - recovered) / (pruned - dense): "
              + (", ".join(parts) if parts else "not measured (no dense reference)") + ".",
              "", "Every number is in `recovery.json`; the loss per step in `training_log.json`.", ""]
    head = (previous.rstrip() + "\n\n") if previous else "# Recovered model\n\n"
    return head + "\n".join(lines)


# --- the whole run --------------------------------------------------------------------------------

def _train(model: nn.Module, tokenizer, settings: RecoverySettings, out_dir: Path, on_step):
    """Fine-tune ``model``: the final model (LoRA merged), the training state, the number of LoRA
    targets (None for a full fine-tune) and of trainable parameters."""
    from ..measurement.calibration import calibration_windows
    from .finetune import (Optimisation, WindowSampler, inputs_silenced, silenced_inputs, train,
                           zero_silenced_columns)
    from .lora import LoraSettings, add_lora, keep_mixers_off_fused_training_path, merge_lora

    windows = calibration_windows(settings.data, tokenizer, settings.seq_len)
    sampler = WindowSampler(windows.ids, settings.batch_size, settings.seed)
    opt = Optimisation(settings.steps, settings.lr, settings.warmup, settings.schedule, settings.weight_decay,
                       settings.grad_clip, settings.checkpoint_every)
    silenced = silenced_inputs(model)  # removed heads a pruned layout keeps as zero columns stay removed
    torch.manual_seed(settings.seed)  # LoRA's initial A and dropout
    if settings.method == "lora":
        trained = add_lora(model, LoraSettings(settings.rank, settings.alpha, settings.dropout,
                                               settings.target_modules))
        base, n_targets = trained.model, len(trained.targeted_module_names)
        params = {name: p for name, p in trained.named_parameters() if p.requires_grad}
    else:
        trained, base, n_targets = model, model, None
        for p in model.parameters():
            p.requires_grad_(True)
        params = dict(model.named_parameters())
    hooked = [base.get_submodule(name) for name in silenced]
    with inputs_silenced(base, silenced):
        state = train(trained, params, sampler, opt, out_dir / CHECKPOINT,
                      lambda: keep_mixers_off_fused_training_path(base, hooked), settings.method == "lora", on_step)
    model = merge_lora(trained) if settings.method == "lora" else model
    zero_silenced_columns(model, silenced)
    return model, state, n_targets, sum(p.numel() for p in params.values())


def check_dense(dense: nn.Module, spec: str, pruned: Path | None) -> None:
    """Refuse ``dense`` (given as ``spec``) when it is not the model the folder ``pruned`` was extracted from,
    as its ``plan.json`` records it: model type, layer count and, where recorded, weight fingerprint."""
    from ..model.identity import model_fingerprint
    from ..plan import Plan
    from ..removal.masks import catalogue_of

    if pruned is None or not (pruned / "plan.json").is_file():
        return
    source = Plan.load(pruned / "plan.json")
    catalogue = catalogue_of(dense)
    shape_differs = (source.model_type not in (None, catalogue.model_type)
                     or source.n_layers not in (None, catalogue.n_layers))
    if shape_differs or not source.fits_weights(dense):
        recorded = (f"a {source.model_type or 'model'} with {source.n_layers or 'some'} layers"
                    + (f" and weight fingerprint {source.fingerprint[:12]}" if source.fingerprint else ""))
        found = (f"a {catalogue.model_type} with {catalogue.n_layers} layers"
                 + ("" if shape_differs else f" and other weights ({model_fingerprint(dense)[:12]})"))
        raise ShedderError(f"--dense {spec} is not the model {pruned.name} was pruned from: its plan.json records "
                           f"{recorded}, {spec} is {found}. Pass the model it was extracted from, or leave --dense "
                           "out.")


def _measure_dense(spec: str, evaluation: Evaluation, dtype: str, device: str, progress,
                   pruned: Path | None = None) -> dict:
    from ..model.loading import load_model

    dense, tokenizer = load_model(spec, dtype, device)
    try:
        check_dense(dense, spec, pruned)
        return measure(dense, tokenizer, evaluation, progress, "dense")
    finally:
        del dense
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _model_id(spec: str) -> str:
    folder = local_dir(spec)
    return str(folder) if folder is not None else spec


def _save(model: nn.Module, tokenizer, source: Path | None, staging: Path) -> torch.dtype:
    """Write the model in its source checkpoint's dtype, with tokenizer, plan and modeling files."""
    dtype = checkpoint_dtype(source)
    model.to(dtype)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if source is None:
        return dtype
    for extra in [source / "plan.json", *code_files(source)]:
        if extra.is_file():
            shutil.copy2(extra, staging / extra.name)
    original = config_json(source)
    if original.get("auto_map"):  # save_pretrained rewrites these from the class name, which may be an alias
        saved = config_json(staging)
        _write_json(staging / "config.json", {**saved, "auto_map": original["auto_map"],
                                              "architectures": original.get("architectures")})
    return dtype


def recover(model: str, out_dir: str | Path, settings: RecoverySettings = RecoverySettings(),
            evaluation: Evaluation = Evaluation(), dense: str | None = None, device: str = "auto",
            dtype: str = "auto", trust_remote_code: bool = False, on_step=None,
            on_measure: MeasureProgress | None = None) -> RecoveryResult:
    """Recover ``model`` into ``out_dir`` (see the module docstring); weights train in float32 unless ``dtype``.

    ``on_step(record, total_steps)`` is called after every training step, ``on_measure(stage, done,
    total)`` while measuring. Both may raise to stop the run: the last checkpoint stays, and calling
    again with the same arguments continues from it.
    """
    from ..model.identity import model_fingerprint
    from ..model.loading import load_model

    settings = settings.resolved()
    out_dir = Path(out_dir).expanduser().resolve()
    with output_lock(out_dir, "recovery"):
        _finish_interrupted_swap(out_dir)
        source = local_dir(model)
        run = {"format": RUN_FORMAT, "version": 1, "model": _model_id(model), "settings": settings.trajectory()}
        stored = _check_out_dir(out_dir, run)
        if stored is not None:
            done = _finished(out_dir, run, dense, evaluation)
            if done is not None:
                return done
        train_dtype = "float32" if dtype == "auto" else dtype
        net, tokenizer = load_model(model, train_dtype, device, trust_remote_code)
        fingerprint = model_fingerprint(net)
        if stored is not None and stored.get("fingerprint") != fingerprint:
            raise ShedderError(f"The weights of {model} changed since the run in {out_dir} started; "
                               "recover into a new output folder.")
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / RUN_FILE, {**run, "fingerprint": fingerprint})

        dense = dense or find_dense_model(source)
        metrics = {"dense": _measure_dense(dense, evaluation, train_dtype, device, on_measure, source)
                   if dense else None}
        metrics["pruned"] = measure(net, tokenizer, evaluation, on_measure, "pruned")
        total_params = sum(p.numel() for p in net.parameters())

        recovered, state, n_targets, n_trainable = _train(net, tokenizer, settings, out_dir, on_step)
        staging, _ = _siblings(out_dir)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        saved_dtype = _save(recovered, tokenizer, source, staging)
        recovered.float()  # measured as it reloads in float32 (bfloat16 -> float32 is exact)
        metrics["recovered"] = measure(recovered, tokenizer, evaluation, on_measure, "recovered")
        device_used = next(recovered.parameters()).device
        record = {
            "format": RESULT_FORMAT, "version": 1, "model": run["model"], "fingerprint": fingerprint,
            "recovered_fingerprint": model_fingerprint(recovered), "dense": dense,
            "settings": settings.to_dict(), "evaluation": evaluation.to_dict(), "metrics": metrics,
            "recovered_share": shares(metrics),
            "training": {
                "steps": state.step, "tokens": state.log[-1]["tokens"] if state.log else 0,
                "seconds": round(state.seconds, 1), "first_loss": state.log[0]["loss"] if state.log else None,
                "final_loss": state.log[-1]["loss"] if state.log else None, "lora_targets": n_targets,
                "trainable_params": n_trainable, "total_params": total_params, "device": str(device_used),
                "autocast": "bfloat16" if device_used.type == "cuda" else None, "saved_dtype": str(saved_dtype),
            },
        }
        card = source / "README.md" if source else None
        previous = card.read_text(encoding="utf-8") if card is not None and card.is_file() else None
        (staging / "README.md").write_text(model_card(record, previous), encoding="utf-8")
        _write_json(staging / LOG_FILE, {"steps": state.log})
        _write_json(staging / RUN_FILE, {**run, "fingerprint": fingerprint})
        _write_json(staging / RESULT_FILE, record)
        _publish(staging, out_dir)
        log.info("Recovered %s into %s: bpb %.4f -> %.4f", model, out_dir, metrics["pruned"]["held_out"]["bpb"],
                 metrics["recovered"]["held_out"]["bpb"])
        return RecoveryResult(out_dir, record, state.log, recovered)
