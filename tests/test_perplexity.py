import math

import pytest
import torch

from shedder.errors import ShedderError
from shedder.measurement.calibration import calibration_windows, cut_windows, load_text, tokenize_text, wiki_articles
from shedder.measurement.perplexity import perplexity
from shedder.removal.catalogue import Component
from tiny_models import SAMPLE_TEXT, build, tiny_tokenizer

FAMILIES_FOR_PPL = ["mamba", "mamba2", "bamba", "llama"]


def naive_perplexity(model, windows):
    """One window at a time, with the library's own loss (mean over seq_len - 1 shifted targets)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in windows.ids:
            ids = row[None]
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            total += loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


@pytest.fixture(scope="module")
def stream():
    return tokenize_text(SAMPLE_TEXT, tiny_tokenizer(), use_cache=False)


@pytest.mark.parametrize("family", FAMILIES_FOR_PPL)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_equals_the_naive_loop(family, batch_size, stream):
    model = build(family)
    windows = cut_windows(stream, seq_len=16, n_tokens=16 * 5)
    result = perplexity(model, windows, batch_size=batch_size)
    assert result.n_windows == 5 and result.n_predictions == 5 * 15
    assert result.ppl == pytest.approx(naive_perplexity(model, windows), rel=1e-5)


def test_perplexity_under_a_plan_equals_the_naive_loop_under_the_same_mask(stream):
    from shedder.removal.masks import masked

    model = build("bamba")
    windows = cut_windows(stream, seq_len=16, n_tokens=64)
    removed = [Component("ssm", 0), Component("mlp_channels", 1, 3)]
    with masked(model, removed):
        expected = naive_perplexity(model, windows)
    result = perplexity(model, windows, removed, batch_size=2)
    assert result.ppl == pytest.approx(expected, rel=1e-5)
    assert result.ppl != pytest.approx(perplexity(model, windows).ppl, rel=1e-4)


def test_progress_reports_every_batch(stream):
    calls = []
    perplexity(build("mamba"), cut_windows(stream, 16, 16 * 5), batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_a_batch_at_a_time_gives_the_same_perplexity_and_frees_the_model_between_batches(stream):
    """around_batch: masks and the model's lock per batch (a shared model's other users go first between them)."""
    import threading
    from contextlib import contextmanager

    from shedder.removal.masks import model_lock

    model, windows = build("bamba"), cut_windows(stream, 16, 16 * 5)
    removed = [Component("ssm", 0), Component("mlp_channels", 1, 3)]
    entered, free_between = [], []

    @contextmanager
    def around():
        entered.append(1)
        yield

    def try_lock():
        free = model_lock(model).acquire(blocking=False)
        if free:
            model_lock(model).release()
        free_between.append(free)

    def lock_is_free(done, total):  # asked from another thread, as another session's toggle would
        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()

    whole = perplexity(model, windows, removed, batch_size=2, progress=lock_is_free)
    assert free_between == [False, False, False]  # the masks and the lock are held for the whole run
    free_between.clear()
    batched = perplexity(model, windows, removed, batch_size=2, progress=lock_is_free, around_batch=around)
    assert batched.ppl == whole.ppl and len(entered) == 3 and free_between == [True, True, True]


def test_windows_from_the_start_and_seeded_samples(stream):
    first = cut_windows(stream, 10, n_tokens=30)
    assert torch.equal(first.ids.reshape(-1), stream[:30])
    a, b = cut_windows(stream, 10, 30, seed=1), cut_windows(stream, 10, 30, seed=1)
    c = cut_windows(stream, 10, 30, seed=2)
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    starts = {tuple(row.tolist()) for row in stream[: stream.numel() // 10 * 10].view(-1, 10)}
    assert all(tuple(row.tolist()) in starts for row in a.ids)  # non-overlapping, aligned windows


def test_too_little_text_is_refused(stream):
    with pytest.raises(ShedderError, match="fewer than one window"):
        cut_windows(stream[:5], seq_len=8)
    with pytest.raises(ShedderError, match="less than one window"):
        cut_windows(stream, seq_len=8, n_tokens=7)


def test_text_files_empty_missing_and_not_utf8(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ShedderError, match="holds no text"):
        load_text(str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ol\xe9".encode("latin-1"))
    with pytest.raises(ShedderError, match="not UTF-8"):
        load_text(str(latin))
    with pytest.raises(ShedderError, match="neither a known set"):
        load_text(str(tmp_path / "missing.txt"))


def test_tokenised_windows_are_cached_on_disk(tmp_path):
    text_file = tmp_path / "mine.txt"
    text_file.write_text(SAMPLE_TEXT, encoding="utf-8")
    tokenizer = tiny_tokenizer()
    windows = calibration_windows(str(text_file), tokenizer, seq_len=12)
    cached = list((tmp_path / "cache" / "tokens").glob("*.pt"))
    assert len(cached) == 1
    again = calibration_windows(str(text_file), tokenizer, seq_len=12)
    assert torch.equal(windows.ids, again.ids)


def test_offline_wikipedia_split_is_disjoint_and_nonempty():
    train, test = wiki_articles("train"), wiki_articles("test")
    assert len(train) > 8000 and len(test) > 800
    assert not set(train) & set(test)
    assert load_text("wiki").startswith(train[0])


def test_hub_sets_fail_clearly_offline():
    with pytest.raises(ShedderError, match="wikitext2"):
        load_text("wikitext2")
