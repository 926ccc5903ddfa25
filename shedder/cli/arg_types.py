"""What the command line accepts: number types for argparse, and a parser whose errors are one line.

Every numeric option of every command goes through one of these types, so a bad number (``--tokens -100``,
``--lr nan``) is refused by argparse in one line before anything loads. (Output paths are checked before
the work by :func:`shedder.paths.check_output_dir` and :func:`shedder.paths.check_output_file`.)
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[minimum, maximum]``."""
    span = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give one {span})") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number {span}")
        return value

    return parse


def real(minimum: float | None = None, maximum: float | None = None, above: bool = False,
         below: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``minimum`` (excluded with ``above``) to ``maximum``
    (excluded with ``below``); nan and inf are refused."""
    parts = []
    if minimum is not None:
        parts.append(f"{'above' if above else 'at least'} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'below' if below else 'at most'} {maximum:g}")
    span = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (give {span})") from None
        low_bad = minimum is not None and (value <= minimum if above else value < minimum)
        high_bad = maximum is not None and (value >= maximum if below else value > maximum)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number (give {span})")
        if low_bad or high_bad:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {span}")
        return value

    return parse


def nonempty(text: str) -> str:
    """An argparse type: any text but an empty one (``--model ""`` would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


POSITIVE = whole(1)
NON_NEGATIVE = whole(0)
SEQ_LEN = whole(2)  # one window of n tokens predicts n - 1 of them
SEED = whole(0, 2**63 - 1)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")
