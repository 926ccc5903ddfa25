"""Bad numbers, bad plans, damaged files and unwritable folders: each ends in one line of error text and
exit status 2 (Ctrl-C: 130), never a traceback, and nothing is lost.

The commands run in this process (``shedder.cli.main``), so an uncaught exception fails the test just as a
traceback would show; one case runs a real ``python -m shedder`` to check the process's own exit status.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from shedder.cli import main
from shedder.errors import ShedderError
from shedder.model.loading import load_model
from shedder.plan import MAX_PLAN_BYTES, Plan
from shedder.removal.catalogue import Component
from tiny_models import SAMPLE_TEXT, save_tiny


# --- shared tiny models (saved once for the module) ----------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory, mamba2_dir) -> dict[str, Path]:
    """The session's tiny Mamba-2, the same architecture with other weights, and a tiny Bamba (hybrid)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    save_tiny("mamba2", root / "other", seed=1)
    save_tiny("bamba", root / "bamba")
    return {"mamba2": mamba2_dir, "other": root / "other", "bamba": root / "bamba"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def calib(text_file) -> list[str]:
    return ["--calib", str(text_file), "--tokens", "256", "--seq-len", "32", "--batch-size", "4"]


def copy_model(models, tmp_path: Path, name: str = "mamba2") -> Path:
    folder = tmp_path / f"copy-{name}"
    shutil.copytree(models[name], folder)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m shedder ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str) -> str:
    """The one error line of a command that must be refused with exit status 2."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- numbers -------------------------------------------------------------------------------------

M = "MODEL"  # replaced by the tiny Mamba-2's folder
NUMBERS = [
    (["ppl", "--tokens", "-100"], "--tokens: -100 is out of range"),
    (["ppl", "--tokens", "0"], "--tokens: 0 is out of range"),
    (["ppl", "--seq-len", "1"], "--seq-len: 1 is out of range"),
    (["ppl", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["ppl", "--seed", "-1"], "--seed: -1 is out of range"),
    (["ppl", "--channel-group-size", "0"], "--channel-group-size: 0 is out of range"),
    (["score", "--tokens", "-100", "--out", "s.json"], "--tokens: -100 is out of range"),
    (["search", "--steps", "-3", "--out", "run"], "--steps: -3 is out of range"),
    (["search", "--workers", "0", "--out", "run"], "--workers: 0 is out of range"),
    (["search", "--steps", "2.5", "--out", "run"], "--steps: '2.5' is not a whole number"),
    (["eval", "--limit", "0"], "--limit: 0 is out of range"),
    (["eval", "--tokens", "abc"], "--tokens: 'abc' is not a whole number"),
    (["bench", "--repeats", "0", "--out", "b.json"], "--repeats: 0 is out of range"),
    (["bench", "--prompt-len", "-1", "--out", "b.json"], "--prompt-len: -1 is out of range"),
    (["bench", "--warmup", "-1", "--out", "b.json"], "--warmup: -1 is out of range"),
    (["recover", "--lr", "nan", "--out", "r"], "--lr: nan is not a finite number"),
    (["recover", "--lr=-1e-4", "--out", "r"], "--lr: -1e-4 is out of range"),
    (["recover", "--steps", "0", "--out", "r"], "--steps: 0 is out of range"),
    (["recover", "--dropout", "1.5", "--out", "r"], "--dropout: 1.5 is out of range"),
    (["recover", "--dropout", "nan", "--out", "r"], "--dropout: nan is not a finite number"),
    (["recover", "--rank", "0", "--out", "r"], "--rank: 0 is out of range"),
    (["recover", "--alpha", "inf", "--out", "r"], "--alpha: inf is not a finite number"),
    (["recover", "--warmup", "-1", "--out", "r"], "--warmup: -1 is out of range"),
    (["recover", "--weight-decay", "-0.1", "--out", "r"], "--weight-decay: -0.1 is out of range"),
    (["recover", "--grad-clip", "0", "--out", "r"], "--grad-clip: 0 is out of range"),
    (["recover", "--checkpoint-every", "-1", "--out", "r"], "--checkpoint-every: -1 is out of range"),
    (["recover", "--eval-tokens", "-5", "--out", "r"], "--eval-tokens: -5 is out of range"),
    (["recover", "--eval-seq-len", "1", "--out", "r"], "--eval-seq-len: 1 is out of range"),
    (["recover", "--limit", "-2", "--out", "r"], "--limit: -2 is out of range"),
]


@pytest.mark.parametrize("argv, message", NUMBERS, ids=[" ".join(a[:3]) for a, _ in NUMBERS])
def test_bad_numbers_are_refused_before_anything_loads(argv, message, models, tmp_path, capsys, monkeypatch):
    import shedder.model.loading

    monkeypatch.setattr(shedder.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    command, rest = argv[0], [str(tmp_path / a) if a in ("s.json", "run", "b.json", "r") else a for a in argv[1:]]
    assert message in refused(capsys, command, "--model", models["mamba2"], *rest)


def test_the_process_exits_with_status_2_and_one_line(models, tmp_path):
    result = run_cli("ppl", "--model", str(models["mamba2"]), "--tokens", "-100", cache=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: argument --tokens: -100 is out of range: give a whole number at least 1 "
        "(see `python -m shedder ppl --help`)"]


def test_library_refuses_a_negative_token_count():
    from shedder.measurement.calibration import cut_windows

    with pytest.raises(ShedderError, match="--tokens -100: give a positive number"):
        cut_windows(torch.arange(1000), 32, n_tokens=-100)


def test_library_recovery_settings_refuse_nan():
    from shedder.recovery.recover import RecoverySettings

    with pytest.raises(ShedderError, match="--lr must be a positive number"):
        RecoverySettings(lr=float("nan")).resolved()
    with pytest.raises(ShedderError, match="--dropout from 0 to below 1"):
        RecoverySettings(dropout=float("nan")).resolved()


def test_unknown_device(models, capsys):
    assert "Unknown device 'tpu'" in refused(capsys, "inspect", "--model", models["mamba2"], "--device", "tpu")


# --- plans ---------------------------------------------------------------------------------------

def plan_data(models, **changes) -> dict:
    model, _ = load_model(str(models["mamba2"]))
    return {**Plan.for_model(model, [Component("ssm", 1)]).to_dict(), **changes}


@pytest.mark.parametrize("change, message", [
    ({"model": "mamba2"}, 'Plan field "model" must be an object'),
    ({"removed": [{"kind": "ssm", "layer": 1.7}]}, "Not a component"),
    ({"removed": [{"kind": "ssm", "layer": True}]}, "Not a component"),
    ({"removed": [{"kind": "ssm_heads", "layer": 0, "index": "2"}]}, "Not a component"),
    ({"removed": {"kind": "ssm", "layer": 1}}, 'Plan field "removed" must be a list'),
    ({"channel_group_size": -4}, "must be at least 1"),
    ({"channel_reorder": "l2"}, 'must be null or "l1"'),
], ids=["model-string", "layer-1.7", "layer-true", "index-string", "removed-object", "group-size", "reorder"])
def test_malformed_plans_are_refused(change, message, models, tmp_path, capsys):
    path = write_json(tmp_path / "plan.json", plan_data(models, **change))
    assert message in refused(capsys, "ppl", "--model", models["mamba2"], "--plan", path)


def test_a_plan_keeps_only_what_a_plan_holds(models, tmp_path):
    data = plan_data(models, payload="x" * 1000, scores=[1, 2], steps=[{"step": 0}])
    plan = Plan.load(write_json(tmp_path / "plan.json", data))
    assert set(plan.to_dict()) == {"format", "version", "model", "channel_group_size", "channel_reorder",
                                   "removed", "steps"}
    plan.save(tmp_path / "saved.json")
    assert "payload" not in (tmp_path / "saved.json").read_text()


def test_an_absurdly_large_plan_is_refused_unread(models, tmp_path, capsys):
    path = tmp_path / "huge.json"
    with path.open("w") as f:
        f.write('{"format": "shedder-plan", "version": 1, "pad": "')
        f.write("x" * MAX_PLAN_BYTES)
        f.write('"}')
    assert "too large to be a plan" in refused(capsys, "ppl", "--model", models["mamba2"], "--plan", path)


def test_a_plan_for_other_weights_is_refused_unless_allowed(models, tmp_path, calib, capsys):
    other, _ = load_model(str(models["other"]))
    path = tmp_path / "plan.json"
    Plan.for_model(other, [Component("ssm", 1)]).save(path)
    line = refused(capsys, "ppl", "--model", models["mamba2"], "--plan", path, *calib)
    assert "made for other weights: same architecture (mamba2, 3 layers)" in line and "--allow-other-weights" in line
    code, out, err = run(capsys, "ppl", "--model", models["mamba2"], "--plan", path, "--allow-other-weights", *calib)
    assert code == 0 and "1 components removed" in out and "made for other weights" in err


def test_a_plan_searched_in_bfloat16_names_the_same_weights(models):
    from shedder.model.identity import model_fingerprint, same_weights

    model, _ = load_model(str(models["mamba2"]))
    low = model_fingerprint(load_model(str(models["mamba2"]), dtype="bfloat16")[0])
    assert low != model_fingerprint(model) and same_weights(model, low)
    other, _ = load_model(str(models["other"]))
    assert not same_weights(model, model_fingerprint(other))


def test_extract_refuses_other_weights_and_records_its_own_when_allowed(models, tmp_path, capsys):
    other, _ = load_model(str(models["other"]))
    path = tmp_path / "plan.json"
    Plan.for_model(other, [Component("ssm", 1)]).save(path)
    out = tmp_path / "extracted"
    assert "made for other weights" in refused(capsys, "extract", "--model", models["mamba2"], "--plan", path,
                                               "--out", out)
    assert not out.exists()
    code, _, err = run(capsys, "extract", "--model", models["mamba2"], "--plan", path, "--out", out,
                       "--allow-other-weights")
    assert code == 0, err
    model, _ = load_model(str(models["mamba2"]))
    written = json.loads((out / "plan.json").read_text())
    from shedder.model.identity import model_fingerprint

    assert written["model"]["fingerprint"] == model_fingerprint(model)
    assert written["made_for"]["fingerprint"] == model_fingerprint(other)


# --- reference configs (pruning_config.json) -----------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"pruned_ssm_idx": 5}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": None}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": [[1]]}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": "abc"}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": [1.7]}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": [True]}, "pruned_ssm_idx must be a list of whole numbers"),
    ({"pruned_ssm_idx": [1, 1]}, "pruned_ssm_idx lists 1 more than once"),
    ({"pruned_mamba_block_idx": [0], "pruned_hymba_block_idx": [0]}, "both name block@0"),
    ({"pruned_mlp_channels": [64]}, "pruned_mlp_channels must map MLP numbers"),
    ({"pruned_mlp_channels": {"0": "abc"}}, "pruned_mlp_channels must map MLP numbers"),
], ids=["int", "null", "nested-list", "string", "float", "bool", "duplicate", "duplicate-across-keys",
        "channels-list", "channels-string"])
def test_malformed_reference_configs_are_refused(config, message, models, tmp_path, capsys):
    path = write_json(tmp_path / "pruning_config.json", config)
    assert message in refused(capsys, "ppl", "--model", models["bamba"], "--plan", path)


@pytest.mark.parametrize("config, message", [
    ({"pruned_mha_idx": [0]}, "pruned_mha_idx: this mamba2 model has no 'attn' components"),
    ({"pruned_ssm_idx": [3]}, "pruned_ssm_idx: 3 is not one of the model's 3 'ssm' components (0..2)"),
], ids=["kind-missing", "index-out-of-range"])
def test_reference_indices_the_model_does_not_have(config, message, models, tmp_path, capsys):
    path = write_json(tmp_path / "pruning_config.json", config)
    assert message in refused(capsys, "ppl", "--model", models["mamba2"], "--plan", path)


@pytest.mark.parametrize("kept", [0, -5, 65])
def test_reference_channel_widths_out_of_range(kept, models, tmp_path, capsys):
    path = write_json(tmp_path / "pruning_config.json", {"pruned_mlp_channels": {"0": kept}})
    assert "the channels kept must be from 1 to 64" in refused(capsys, "ppl", "--model", models["bamba"], "--plan", path)


def test_an_empty_model_name(capsys):
    assert "argument --model: is empty" in refused(capsys, "inspect", "--model", "")


def test_an_empty_search_folder(models, capsys):
    assert "argument --out: is empty" in refused(capsys, "search", "--model", models["mamba2"], "--out", "")


def test_a_reference_config_is_read_by_every_plan_option_and_its_mapping_said(models, tmp_path, calib, capsys):
    path = write_json(tmp_path / "pruning_config.json", {"pruned_ssm_idx": [1]})  # a Mamba-2 config: layer 1
    code, out, err = run(capsys, "ppl", "--model", models["bamba"], "--plan", path, *calib)
    assert code == 0, err
    assert "1 components removed" in out
    assert "records no model" in err and "pruned_ssm_idx 1 -> ssm@2" in err and "bamba with 3 layers" in err
    code, out, err = run(capsys, "extract", "--model", models["bamba"], "--plan", path, "--out", tmp_path / "x")
    assert code == 0 and "pruned_ssm_idx 1 -> ssm@2" in err
    assert json.loads((tmp_path / "x" / "plan.json").read_text())["removed"] == [{"kind": "ssm", "layer": 2}]


# --- targets, tokenizer, NaN ---------------------------------------------------------------------

def test_empty_targets(models, tmp_path, calib, capsys):
    line = refused(capsys, "search", "--model", models["mamba2"], "--targets", "", *calib, "--out", tmp_path / "r")
    assert "No component kinds given" in line


def test_a_target_kind_the_model_does_not_have(models, tmp_path, calib, capsys):
    line = refused(capsys, "search", "--model", models["mamba2"], "--targets", "attn", *calib, "--out", tmp_path / "r")
    assert "This mamba2 model has no attn components; it has block, ssm, ssm_heads" in line
    assert "no attn, mlp components" in refused(capsys, "score", "--model", models["mamba2"], "--kinds", "attn,mlp",
                                           *calib, "--out", tmp_path / "s.json")


def test_a_folder_without_a_tokenizer(models, tmp_path, calib, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models["mamba2"] / name, folder / name)
    assert "has no tokenizer files" in refused(capsys, "ppl", "--model", folder, *calib)


def test_nan_perplexity_says_the_weights_produce_nan(models, tmp_path, calib, capsys):
    from safetensors.torch import load_file, save_file

    folder = copy_model(models, tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if "embed" in k)
    weights[name][:] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "is NaN: the weights produce NaN" in refused(capsys, "ppl", "--model", folder, *calib)
    assert "is NaN: the weights produce NaN" in refused(capsys, "score", "--model", folder, "--kinds", "block", *calib,
                                                        "--out", tmp_path / "scores.json")
    assert not (tmp_path / "scores.json").exists()


# --- damaged files -------------------------------------------------------------------------------

def test_truncated_safetensors(models, tmp_path, capsys):
    folder = copy_model(models, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "damaged or truncated" in refused(capsys, "inspect", "--model", folder)


def test_corrupt_safetensors(models, tmp_path, capsys):
    folder = copy_model(models, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00not safetensors" * 64)
    assert "damaged or truncated" in refused(capsys, "inspect", "--model", folder)


def test_truncated_pytorch_model_bin(models, tmp_path, capsys):
    from safetensors.torch import load_file

    folder = copy_model(models, tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert "the weight files may be damaged or truncated" in refused(capsys, "inspect", "--model", folder)


def test_corrupt_config_json(models, tmp_path, capsys):
    folder = copy_model(models, tmp_path)
    (folder / "config.json").write_text("{not json")
    assert "config.json cannot be read" in refused(capsys, "inspect", "--model", folder)


def test_a_pickled_checkpoint_with_code_is_refused_and_runs_nothing(models, tmp_path, capsys):
    folder = copy_model(models, tmp_path)
    marker = tmp_path / "marker"
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    assert "a pickle that holds more than tensors" in refused(capsys, "inspect", "--model", folder)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_corrupt_token_cache_is_rebuilt(models, tmp_path, calib, capsys, monkeypatch):
    monkeypatch.setenv("SHEDDER_CACHE", str(tmp_path / "cache"))
    code, first, _ = run(capsys, "ppl", "--model", models["mamba2"], *calib, "--json")
    assert code == 0
    [cached] = (tmp_path / "cache" / "tokens").glob("*.pt")
    cached.write_bytes(b"garbage, not a tensor")
    code, again, err = run(capsys, "ppl", "--model", models["mamba2"], *calib, "--json")
    assert code == 0 and json.loads(again)["ppl"] == json.loads(first)["ppl"]
    assert torch.load(cached, weights_only=True).dtype == torch.long  # rebuilt


# --- output paths --------------------------------------------------------------------------------

def test_search_out_is_a_file(models, tmp_path, calib, capsys):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert "is a file, not a folder" in refused(capsys, "search", "--model", models["mamba2"], *calib, "--out", out)
    assert out.read_text() == "keep me"


def test_score_out_is_a_folder(models, tmp_path, calib, capsys):
    assert "is a folder; give a file name" in refused(capsys, "score", "--model", models["mamba2"], *calib,
                                                      "--out", tmp_path)


def test_bench_out_under_a_file(models, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in refused(capsys, "bench", "--model", models["mamba2"],
                                                "--out", tmp_path / "a-file" / "b.json")


def test_plan_convert_into_a_missing_folder_makes_it(models, tmp_path, capsys):
    path = write_json(tmp_path / "pruning_config.json", {"pruned_ssm_idx": [0]})
    out = tmp_path / "new" / "folder" / "plan.json"
    code, _, err = run(capsys, "plan-convert", "--model", models["mamba2"], "--in", path, "--out", out)
    assert code == 0, err
    assert Plan.load(out).removed == [Component("ssm", 0)]


def test_plan_convert_out_under_a_file(models, tmp_path, capsys):
    path = write_json(tmp_path / "pruning_config.json", {"pruned_ssm_idx": [0]})
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in refused(capsys, "plan-convert", "--model", models["mamba2"], "--in", path,
                                                "--out", tmp_path / "a-file" / "plan.json")


@pytest.mark.parametrize("log", ["{not json", "[1, 2, 3]", '{"settings": {}, "steps": "many"}',
                                 '{"settings": {}, "steps": [{"stage": "x"}]}'],
                         ids=["corrupt", "a-list", "steps-not-a-list", "step-without-stage"])
def test_a_bad_search_log_is_refused_and_kept(log, models, tmp_path, calib, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.json").write_text(log)
    line = refused(capsys, "search", "--model", models["mamba2"], "--targets", "ssm", "--steps", "1", *calib,
                   "--out", out)
    assert "log.json" in line and "use another --out" in line
    assert (out / "log.json").read_text() == log


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody here can write to: permission bits for an ordinary user; for root, who ignores them,
    the immutable attribute (chattr +i). Skipped only where neither stops a write."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _writable(folder) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if _writable(folder):
        folder.chmod(0o755)
        pytest.skip("no way to make a folder read-only here (root without chattr +i)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_search_into_a_read_only_folder_is_refused_before_the_work(read_only, models, calib, capsys, monkeypatch):
    import shedder.model.loading

    monkeypatch.setattr(shedder.model.loading, "load_model", lambda *a, **k: pytest.fail("the work started"))
    line = refused(capsys, "search", "--model", models["mamba2"], *calib, "--out", read_only / "run")
    assert "cannot write there" in line


def test_score_into_a_read_only_folder_is_refused_before_the_work(read_only, models, calib, capsys, monkeypatch):
    import shedder.model.loading

    monkeypatch.setattr(shedder.model.loading, "load_model", lambda *a, **k: pytest.fail("the work started"))
    assert "cannot write there" in refused(capsys, "score", "--model", models["mamba2"], *calib,
                                           "--out", read_only / "s.json")


def test_extract_into_a_read_only_parent(read_only, models, tmp_path, capsys):
    path = tmp_path / "plan.json"
    Plan([Component("ssm", 1)]).save(path)
    assert "cannot write there" in refused(capsys, "extract", "--model", models["mamba2"], "--plan", path,
                                           "--out", read_only / "small")
    assert list(read_only.iterdir()) == []
    from shedder.extraction.extract import extract

    model, tokenizer = load_model(str(models["mamba2"]))
    with pytest.raises(ShedderError, match="cannot write there"):  # the library checks too
        extract(model, tokenizer, Plan([Component("ssm", 1)]), read_only / "small")


def test_recover_into_a_read_only_folder(read_only, models, capsys):
    assert "cannot write there" in refused(capsys, "recover", "--model", models["mamba2"], "--out", read_only / "r")


def test_eval_out_is_a_folder(models, tmp_path, capsys):
    assert "is a folder; give a file name" in refused(capsys, "eval", "--model", models["mamba2"], "--out", tmp_path)


# --- Ctrl-C and the dense reference --------------------------------------------------------------

def test_ctrl_c_during_a_search_keeps_the_finished_steps(models, tmp_path, calib, capsys, monkeypatch):
    import shedder.searching.search

    real_save, out = shedder.searching.search.save_run, tmp_path / "run"

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the first step is written

    monkeypatch.setattr(shedder.searching.search, "save_run", save_then_interrupt)
    argv = ["search", "--model", models["mamba2"], "--targets", "ssm", "--steps", "2", *calib, "--out", out]
    code, _, err = run(capsys, *argv)
    assert code == 130 and "Traceback" not in err
    assert "stopped after step 1 of 2" in err and "re-run the same command to resume" in err
    monkeypatch.setattr(shedder.searching.search, "save_run", real_save)
    code, out_text, err = run(capsys, *argv)
    assert code == 0, err
    assert len(json.loads((out / "log.json").read_text())["steps"]) == 2


def test_a_real_ctrl_c_ends_a_search_process_in_one_line(models, tmp_path, text_file):
    import signal
    import sys
    import time

    from conftest import ROOT

    out = tmp_path / "run"
    command = [sys.executable, "-m", "shedder", "search", "--model", str(models["mamba2"]), "--targets", "ssm_heads",
               "--steps", "20", "--calib", str(text_file), "--tokens", "512", "--seq-len", "32", "--no-early-stop",
               "--out", str(out)]
    env = {**os.environ, "SHEDDER_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "log.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    steps = len(json.loads((out / "log.json").read_text())["steps"])
    assert f"stopped after step {steps} of 20 (Ctrl-C)" in err and 1 <= steps < 20


def test_recover_dense_must_be_the_model_it_was_pruned_from(models, tmp_path, capsys):
    path = tmp_path / "plan.json"
    model, _ = load_model(str(models["mamba2"]))
    Plan.for_model(model, [Component("ssm", 1)]).save(path)
    assert run(capsys, "extract", "--model", models["mamba2"], "--plan", path, "--out", tmp_path / "small")[0] == 0
    common = ["recover", "--model", tmp_path / "small", "--steps", "1", "--batch-size", "2", "--seq-len", "16",
              "--eval-tokens", "64", "--device", "cpu"]
    line = refused(capsys, *common, "--dense", models["other"], "--out", tmp_path / "r1")
    assert "is not the model small was pruned from" in line and "other weights" in line
    line = refused(capsys, *common, "--dense", models["bamba"], "--out", tmp_path / "r2")
    assert "records a mamba2 with 3 layers" in line and "is a bamba with 3 layers" in line
