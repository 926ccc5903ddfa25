"""Recovery tuning on a tiny pruned Mamba-2: LoRA and full fine-tunes lower the loss, save a model that
reloads with plain from_pretrained, resume exactly, and never train on the held-out text."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import run_cli
from shedder.cli import main
from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.measurement.bits_per_byte import bits_per_byte, position_byte_lengths
from shedder.measurement.calibration import tokenize_text
from shedder.model.model_folders import extracted_dir, find_dense_model, local_dir, local_models, recovered_dir
from shedder.plan import Plan
from shedder.recovery.lora import LoraSettings, add_lora, keep_mixers_off_fused_training_path, target_module_names
from shedder.recovery.recover import Evaluation, RecoverySettings, recover
from shedder.removal.catalogue import Component
from tiny_models import FAMILIES, SAMPLE_TEXT, build, tiny_tokenizer, token_ids, train_briefly

EVAL = Evaluation(tokens=512, seq_len=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A briefly trained tiny Mamba-2 (dense), the same with block 1 extracted away, and training text."""
    root = tmp_path_factory.mktemp("recover")
    tokenizer = tiny_tokenizer()
    ids = torch.tensor(tokenizer(SAMPLE_TEXT)["input_ids"][: 4 * 48]).view(4, 48)
    dense = train_briefly(build("mamba2"), ids, steps=10)
    dense.save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    extract(dense, tokenizer, Plan.for_model(dense, [Component("block", 1)]), root / "pruned")
    (root / "train.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    return {"dense": root / "dense", "pruned": root / "pruned", "text": root / "train.txt", "root": root}


def quick(models, **overrides) -> RecoverySettings:
    settings = dict(data=str(models["text"]), steps=8, batch_size=2, seq_len=32, lr=3e-3, checkpoint_every=4)
    return RecoverySettings(**{**settings, **overrides})


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=token_ids() if ids is None else ids, use_cache=False).logits


@pytest.mark.parametrize("method", ["lora", "full"])
def test_recovery_lowers_the_loss_and_saves_a_plain_model(models, tmp_path, method):
    out = tmp_path / method
    result = recover(str(models["pruned"]), out, quick(models, method=method), EVAL, dense=str(models["dense"]),
                     device="cpu")
    losses = [r["loss"] for r in result.log]
    assert len(losses) == 8
    assert statistics.fmean(losses[-3:]) < statistics.fmean(losses[:3]) - 0.05

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # no shedder, no peft
    assert not any("lora" in key for key in reloaded.state_dict())
    torch.testing.assert_close(logits(reloaded), logits(result.model), rtol=1e-5, atol=1e-5)
    pruned = AutoModelForCausalLM.from_pretrained(models["pruned"]).eval()
    changed = {k for k, v in reloaded.state_dict().items() if not torch.equal(v, pruned.state_dict()[k])}
    if method == "lora":  # adapters sit on the mixers' in_proj / out_proj only
        assert changed and all(k.endswith(("in_proj.weight", "out_proj.weight")) for k in changed)
    else:
        assert {"backbone.embeddings.weight", "backbone.layers.0.mixer.A_log"} <= changed

    record = json.loads((out / "recovery.json").read_text())
    measured = bits_per_byte(reloaded, tiny_tokenizer(), "wiki-test", EVAL.seq_len, EVAL.tokens)
    assert record["metrics"]["recovered"]["held_out"]["bpb"] == pytest.approx(measured.bpb, rel=1e-6)
    bpb = {name: record["metrics"][name]["held_out"]["bpb"] for name in ("dense", "pruned", "recovered")}
    assert bpb["dense"] != bpb["pruned"]
    share = (bpb["pruned"] - bpb["recovered"]) / (bpb["pruned"] - bpb["dense"])
    assert record["recovered_share"]["bpb"] == pytest.approx(share)
    assert record["training"]["steps"] == 8 and record["settings"]["method"] == method
    card = (out / "README.md").read_text()
    assert card.startswith("# Pruned mamba2 model") and "## Recovery tuning" in card and f"{share:.1%}" in card
    assert (out / "plan.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "checkpoint.pt").exists() and not list(out.parent.glob(".*"))


class Stop(Exception):
    pass


def stop_at(step: int):
    def on_step(record: dict, total: int) -> None:
        if record["step"] == step:
            raise Stop

    return on_step


def test_resume_follows_the_uninterrupted_trajectory(models, tmp_path):
    settings = quick(models, steps=5, checkpoint_every=2)  # LoRA with dropout: the RNG state matters
    with pytest.raises(Stop):
        recover(str(models["pruned"]), tmp_path / "a", settings, EVAL, device="cpu", on_step=stop_at(3))
    assert (tmp_path / "a" / "checkpoint.pt").is_file() and not (tmp_path / "a" / "config.json").exists()
    resumed = recover(str(models["pruned"]), tmp_path / "a", settings, EVAL, device="cpu")
    straight = recover(str(models["pruned"]), tmp_path / "b", settings, EVAL, device="cpu")
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in straight.log]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)

    again = recover(str(models["pruned"]), tmp_path / "a", settings, EVAL, device="cpu")
    assert again.already_done and again.record == resumed.record and len(again.log) == 5
    with pytest.raises(ShedderError, match="other settings"):
        recover(str(models["pruned"]), tmp_path / "a", quick(models, steps=7), EVAL, device="cpu")


def test_held_out_text_and_foreign_folders_are_refused(models, tmp_path):
    for name in ("wiki-test", "WIKI-TEST"):
        with pytest.raises(ShedderError, match="held-out"):
            recover(str(models["pruned"]), tmp_path / "x", quick(models, data=name), EVAL, device="cpu")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShedderError, match="not a shedder recovery run"):
        recover(str(models["pruned"]), foreign, quick(models), EVAL, device="cpu")
    with pytest.raises(ShedderError, match="method"):
        RecoverySettings(method="qlora").resolved()
    with pytest.raises(ShedderError, match="No linear module is called"):
        target_module_names(build("mamba2"), ("q_proj",))


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lora_targets_train_and_merge_exactly(family):
    model = build(family)
    targets = target_module_names(model)
    shared = {"shared_transformer"} if family == "zamba2" else set()
    assert targets and not any(part in name for name in targets for part in shared)
    if family not in ("llama",):
        assert any(name.endswith("in_proj") for name in targets)
    torch.manual_seed(0)
    wrapped = add_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.0))
    model.train()
    keep_mixers_off_fused_training_path(wrapped.model)
    loss = wrapped(input_ids=token_ids(), labels=token_ids(), use_cache=False).loss
    loss.backward()
    adapters = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n and p.grad is not None for n, p in adapters.items())
    with torch.no_grad():
        for name, p in adapters.items():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: merging must now change the weights
    model.eval()
    expected = logits(wrapped)
    merged = wrapped.merge_and_unload()
    assert not any("lora" in key for key in merged.state_dict())
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-5)


def test_bits_per_byte_counts_every_byte_of_the_text():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "Café au lait, naïve façade — 東京 is far. " * 20
    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    byte_level.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for tokenizer in (tiny_tokenizer(), PreTrainedTokenizerFast(tokenizer_object=byte_level)):
        stream = tokenize_text(text, tokenizer, use_cache=False)
        lengths = position_byte_lengths(tokenizer, text, stream)
        assert len(lengths) == len(stream) and int(lengths.sum()) == len(text.encode())
        assert (lengths >= 0).all()


def test_cli_recovers_resumes_and_refuses_held_out_data(models, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["recover", "--model", str(models["pruned"]), "--data", str(models["text"]), "--steps", "3",
            "--batch-size", "2", "--seq-len", "32", "--eval-tokens", "512", "--dense", str(models["dense"]),
            "--device", "cpu", "--target-modules", "in_proj", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "share of the pruning loss recovered" in printed and "wrote" in printed
    record = json.loads((out / "recovery.json").read_text())
    assert record["settings"]["target_modules"] == ["in_proj"] and record["training"]["lora_targets"] == 2
    assert main(args) == 0 and "already finished" in capsys.readouterr().out
    held_out = [a if a != str(models["text"]) else "wiki-test" for a in args[:-1]] + [str(tmp_path / "y")]
    assert main(held_out) == 2 and "held-out" in capsys.readouterr().err
    refused = run_cli("recover", "--model", str(models["pruned"]), "--data", "wiki-test", "--out", str(tmp_path / "z"),
                      cache=tmp_path / "cache")  # the real command line, end to end
    assert refused.returncode == 2 and "held-out" in refused.stderr and not (tmp_path / "z").exists()


def test_dense_reference_is_found_in_the_zoo_and_dashboard_folders_are_listed(models, tmp_path, monkeypatch):
    import shutil

    import shedder.model.loading

    zoo = tmp_path / "zoo"
    shutil.copytree(models["dense"], zoo / "tiny-dense")
    monkeypatch.setattr(shedder.model.loading, "ZOO_DIR", zoo)
    assert find_dense_model(local_dir(str(models["pruned"]))) == "tiny-dense"
    assert find_dense_model(local_dir(str(models["dense"]))) is None  # no plan.json: not an extraction

    shutil.copytree(models["pruned"], extracted_dir() / "pruned")
    out = recovered_dir() / "pruned-lora"
    result = recover(str(extracted_dir() / "pruned"), out, quick(models, steps=2), EVAL, device="cpu")
    assert result.record["dense"] == "tiny-dense" and result.share["bpb"] is not None
    listed = local_models()
    assert [(Path(m.path).name, m.kind) for m in listed] == [("pruned-lora", "recovered"), ("pruned", "extracted")]
    assert "won back" in listed[0].description


def test_recovery_page_recovers_a_model_and_offers_it_in_the_sidebar(models, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from app.state import ModelChoice
    from test_app import finish_job

    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(models["root"]))  # the text and the dense model typed below
    shutil.copytree(models["pruned"], extracted_dir() / "tiny-pruned")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=300)
    at.session_state["model_choice"] = ModelChoice(str(models["dense"]), device="cpu")
    at.switch_page("pages/recover.py").run()
    assert not at.exception, at.exception

    def widget(kind: str, label: str):
        return next(w for w in getattr(at, kind) if w.label == label)

    widget("number_input", "Steps").set_value(4)
    widget("selectbox", "Windows per step").set_value(2)
    widget("select_slider", "Window (tokens)").set_value(32)
    widget("select_slider", "Held-out tokens").set_value("512")
    widget("text_input", "Training text").set_value(str(models["text"]))
    widget("text_input", "Dense reference").set_value(str(models["dense"]))
    at.run()
    assert widget("selectbox", "Extracted model").value.endswith("tiny-pruned")
    widget("button", "Start recovery").click().run()
    assert not at.exception, at.exception
    finish_job(at, "recovery")  # a background job; the page shows its result once it ends
    assert not at.error, at.error[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["share of the pruning loss recovered"].endswith("%")
    assert list(at.dataframe[0].value["model"]) == ["dense", "pruned", "recovered"]
    recovered = [m for m in local_models() if m.kind == "recovered"]
    assert len(recovered) == 1 and json.loads((Path(recovered[0].path) / "recovery.json").read_text())[
        "training"]["steps"] == 4


    dense = AutoModelForCausalLM.from_pretrained(models["dense"])  # the current plan of the sidebar's model
    at.session_state["plans"] = {str(models["dense"]): Plan.for_model(dense, [Component("block", 0)])}
    widget("radio", "Recover").set_value("the current plan").run()
    widget("number_input", "Steps").set_value(2).run()
    widget("button", "Start recovery").click().run()
    assert not at.exception, at.exception
    finish_job(at, "recovery")  # a background job; the page shows its result once it ends
    assert not at.error, at.error[0].value
    newest = local_models()[0]
    assert newest.kind == "recovered" and len(local_models()) == 4  # + the plan's extraction and its recovery
    assert json.loads((Path(newest.path) / "plan.json").read_text())["removed"] == [{"kind": "block", "layer": 0}]

    widget("button", "Use the recovered model").click().run()
    assert not at.exception, at.exception
    assert at.session_state["model_choice"].spec == newest.path
    assert widget("radio", "Source").value == "extracted / recovered"


def test_a_pruned_layout_with_its_own_model_file_is_recovered_and_reloads(tmp_path):
    """SSM removal extracts to a checkpoint that loads with trust_remote_code (its model file beside the
    weights); the recovered folder keeps that file and loads the same way."""
    model, tokenizer = build("mamba2"), tiny_tokenizer()
    try:
        result = extract(model, tokenizer, Plan.for_model(model, [Component("ssm", 0)]), tmp_path / "pruned")
    except ShedderError as exc:
        pytest.skip(f"SSM removals are not extracted yet: {exc}")
    if not getattr(result, "needs_remote_code", False):
        pytest.skip("this extraction writes a stock checkpoint")
    (tmp_path / "train.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    settings = RecoverySettings(data=str(tmp_path / "train.txt"), steps=2, batch_size=2, seq_len=32)
    try:
        recovered = recover(str(tmp_path / "pruned"), tmp_path / "out", settings, EVAL, device="cpu")
    except ShedderError as exc:
        if "is not supported" in str(exc):
            pytest.skip(f"shedder.model.loading does not load pruned layouts yet: {exc}")
        raise
    assert {"modeling_shedder_pruned.py", "pruned_layers.py"} <= {p.name for p in (tmp_path / "out").iterdir()}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    torch.testing.assert_close(logits(reloaded), logits(recovered.model), rtol=1e-5, atol=1e-5)
