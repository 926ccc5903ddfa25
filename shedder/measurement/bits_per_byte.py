"""Held-out perplexity and bits per byte of a text (the demo models' measure, see zoo/TRAINING.md).

The text is tokenised without special tokens and cut from the start into non-overlapping windows of
``seq_len`` tokens (:func:`shedder.measurement.calibration.cut_windows`; the incomplete tail is dropped). The
next-token NLL in nats is summed over every predicted position (1 .. seq_len - 1 of each window),
divided by ln 2 and by the UTF-8 byte length of the predicted tokens.

A token's byte length: under byte-level BPE every vocabulary character is one byte, so it is the
length of the token's string, exactly as ``scripts/train_demo_models.py`` counts it. Other tokenizers
(SentencePiece, whitespace pre-tokenisers ...) drop or rewrite characters, so there each position
is given the bytes of the text from the end of the previous token to the end of its own (whitespace
goes to the token after it, and any trailing text to the last token), read from the tokenizer's
character offsets. Either way the byte
lengths of all positions add up to the whole text, and bits per byte compares models with different
tokenizers.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ShedderError
from .calibration import calibration_windows, load_text, tokenize_text, tokenizer_fingerprint
from .perplexity import Progress, window_nll


@dataclass(frozen=True)
class ByteScore:
    """Perplexity and bits per byte of one model on one text."""

    source: str
    ppl: float
    bpb: float
    nll_per_token: float
    n_predictions: int
    predicted_bytes: int
    n_windows: int
    seq_len: int

    def to_dict(self) -> dict:
        return asdict(self)


def vocabulary_byte_lengths(tokenizer) -> torch.Tensor:
    """Length of every vocabulary entry's string (its byte length under byte-level BPE); 0 for specials."""
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        if idx < len(lengths):
            lengths[idx] = 0 if idx in special else len(token)
    return lengths


def _offset_byte_lengths(tokenizer, text: str, n_positions: int) -> torch.Tensor:
    """Bytes of the text from the previous token's end to each token's end (character offsets)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    ends = torch.tensor([end for _, end in encoded["offset_mapping"]], dtype=torch.long)
    if len(ends) != n_positions:
        raise ShedderError("The tokenizer gave a different number of tokens with offsets; cannot count bytes.")
    char_bytes = torch.tensor([len(ch.encode()) for ch in text], dtype=torch.long)
    bytes_before = torch.cat([torch.zeros(1, dtype=torch.long), char_bytes.cumsum(0)])  # bytes before char i
    ends = torch.cummax(ends, 0).values  # a token inside a multi-byte character reports an earlier end
    end_bytes = bytes_before[ends]
    end_bytes[-1] = bytes_before[-1]  # text after the last token (trailing whitespace) goes to it
    return torch.diff(end_bytes, prepend=torch.zeros(1, dtype=torch.long))


def position_byte_lengths(tokenizer, text: str, stream: torch.Tensor) -> torch.Tensor:
    """UTF-8 bytes each position of ``stream`` (the tokenised ``text``) stands for; they add up to the text."""
    key = (hashlib.sha256(text.encode()).hexdigest(), tokenizer_fingerprint(tokenizer))
    if key not in _MEASURED:
        _MEASURED.clear()  # one text at a time is all a run needs
        _MEASURED[key] = _position_byte_lengths(tokenizer, text, stream)
    return _MEASURED[key]


_MEASURED: dict[tuple[str, str], torch.Tensor] = {}


def _position_byte_lengths(tokenizer, text: str, stream: torch.Tensor) -> torch.Tensor:
    total = len(text.encode())
    by_vocabulary = vocabulary_byte_lengths(tokenizer)[stream]
    if int(by_vocabulary.sum()) == total:
        return by_vocabulary
    if not getattr(tokenizer, "is_fast", False):
        raise ShedderError("Bits per byte needs a byte-level BPE or a fast tokenizer (for character offsets).")
    return _offset_byte_lengths(tokenizer, text, len(stream))


def bits_per_byte(model: nn.Module, tokenizer, source: str = "wiki-test", seq_len: int = 512,
                  n_tokens: int | None = None, batch_size: int = 8, progress: Progress | None = None) -> ByteScore:
    """Perplexity and bits per byte of ``model`` on ``source`` (see the module docstring)."""
    text = load_text(source)
    windows = calibration_windows(source, tokenizer, seq_len, n_tokens)
    stream = tokenize_text(text, tokenizer)
    used = len(windows) * seq_len
    per_position = position_byte_lengths(tokenizer, text, stream)[:used].view(len(windows), seq_len)
    predicted_bytes = int(per_position[:, 1:].sum())
    if batch_size < 1:
        raise ShedderError("batch_size must be at least 1.")
    if predicted_bytes == 0:
        raise ShedderError(f"The predicted tokens of {source!r} hold no bytes; use a longer text.")
    # the model as it is, no masks: any causal LM, also a pruned layout the catalogue does not describe
    nll_sum = 0.0
    for start in range(0, len(windows), batch_size):
        nll_sum += float(window_nll(model, windows.ids[start:start + batch_size]).sum())
        if progress is not None:
            progress(min(start + batch_size, len(windows)), len(windows))
    n_predictions = len(windows) * (seq_len - 1)
    return ByteScore(source=source, ppl=math.exp(nll_sum / n_predictions), bpb=nll_sum / math.log(2) / predicted_bytes,
                     nll_per_token=nll_sum / n_predictions, n_predictions=n_predictions,
                     predicted_bytes=predicted_bytes, n_windows=len(windows), seq_len=seq_len)
