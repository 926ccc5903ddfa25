"""The Mamba-Shedder zero-shot suite, one declaration per task, each mirroring lm-eval's YAML.

Every template below is the Python spelling of the lm-eval 0.4.13 config named in ``lm_eval_yaml``
(its ``doc_to_text``, ``doc_to_target``, ``doc_to_choice``, ``process_docs``, delimiter and metric
list); ``tests/test_tasks.py`` renders documents through lm-eval's own task objects and checks
the requests are identical. The paper's average takes ``acc`` for arc_easy, winogrande and
lambada_openai and ``acc_norm`` for the others.
"""
from __future__ import annotations

import re

from .olmo_data import OlmesRequests, SavedSplit, arc_raw, lambada_raw, openbookqa_raw
from .spec import Doc, TaskSpec


# hellaswag/utils.py: process_docs and preprocess
def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are WikiHow artefacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(doc: Doc) -> Doc:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": _hellaswag_clean(doc["activity_label"] + ": " + context),
        "choices": [_hellaswag_clean(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


# winogrande/preprocess_winogrande.py: partial scoring, the blank filled by each option is the context
def _winogrande_gold(doc: Doc) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def _winogrande_target(doc: Doc) -> str:
    blank = doc["sentence"].index("_") + 1
    return doc["sentence"][blank:].strip()


def _winogrande_contexts(doc: Doc) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def _lambada_context(doc: Doc) -> str:
    return " ".join(doc["text"].split(" ")[:-1])


def _lambada_target(doc: Doc) -> str:
    return " " + doc["text"].split(" ")[-1]


def _arc(name: str, title: str, paper_metric: str) -> TaskSpec:
    return TaskSpec(
        name=name, title=title, split="test",
        data=OlmesRequests(name, "test_rc_5shot", arc_raw),
        doc_to_text=lambda d: f"Question: {d['question']}\nAnswer:",
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"]),
        doc_to_choice=lambda d: list(d["choices"]["text"]),
        paper_metric=paper_metric, lm_eval_yaml=f"arc/{name}.yaml",
    )


SUITE: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="lambada_openai", title="LAMBADA (OpenAI)", split="test",
        data=OlmesRequests("lambada", "bpb_0shot", lambada_raw),
        output_type="loglikelihood", doc_to_text=_lambada_context, doc_to_target=_lambada_target,
        metrics=("perplexity", "acc"), paper_metric="acc", lm_eval_yaml="lambada/lambada_openai.yaml",
    ),
    TaskSpec(
        name="hellaswag", title="HellaSwag", split="validation",
        data=SavedSplit("hellaswag/none/validation"), process_doc=_hellaswag_doc,
        doc_to_text=lambda d: d["query"], doc_to_target=lambda d: int(d["label"]),
        doc_to_choice=lambda d: list(d["choices"]), lm_eval_yaml="hellaswag/hellaswag.yaml",
    ),
    TaskSpec(
        name="piqa", title="PIQA", split="validation",
        data=SavedSplit("piqa/plain_text/validation"),
        doc_to_text=lambda d: f"Question: {d['goal']}\nAnswer:", doc_to_target=lambda d: d["label"],
        doc_to_choice=lambda d: [d["sol1"], d["sol2"]], lm_eval_yaml="piqa/piqa.yaml",
    ),
    _arc("arc_easy", "ARC-Easy", paper_metric="acc"),
    _arc("arc_challenge", "ARC-Challenge", paper_metric="acc_norm"),
    TaskSpec(
        name="winogrande", title="WinoGrande (xl)", split="validation",
        data=SavedSplit("winogrande/winogrande_xl/validation"),
        multiple_input=True, doc_to_text=_winogrande_gold, doc_to_target=_winogrande_target,
        doc_to_choice=_winogrande_contexts, metrics=("acc",), paper_metric="acc",
        lm_eval_yaml="winogrande/default.yaml",
    ),
    TaskSpec(
        name="openbookqa", title="OpenBookQA", split="test",
        data=OlmesRequests("openbookqa", "test_rc_5shot", openbookqa_raw),
        doc_to_text=lambda d: d["question_stem"],
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
        doc_to_choice=lambda d: list(d["choices"]["text"]), lm_eval_yaml="openbookqa/openbookqa.yaml",
    ),
)
