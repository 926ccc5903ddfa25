"""Bad inputs on the dashboard, as a careless or hostile user gives them: each ends in an error box that
says why (never a traceback), nothing is overwritten or kept that should not be, and nothing is applied to
the model without the user's confirmation where the input cannot prove what it was made for."""
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import store
from app.state import ModelChoice
from shedder.errors import ShedderError
from shedder.model.identity import model_fingerprint
from shedder.model.loading import load_model
from shedder.paths import cache_dir, data_root, inside_data_root
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from test_app import APP, bamba_dir, finish_job  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba saved as a local folder)
from test_app_pages import open_page
from test_consent import foreign_remote_code_model  # noqa: F401  (a fixture: a foreign folder with a payload)
from tiny_models import save_tiny


def widget(at: AppTest, kind: str, label: str):
    return next(w for w in getattr(at, kind) if w.label == label)


def labels(at: AppTest, kind: str) -> list[str]:
    return [w.label for w in getattr(at, kind)]


def upload(at: AppTest, name: str, data) -> AppTest:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    at.file_uploader[0].set_value((name, raw, "application/json")).run()
    assert not at.exception, at.exception
    return at


def current(at: AppTest, spec) -> Plan:
    return at.session_state["plans"][str(spec)]


# --- a model that does not load ----------------------------------------------------------------------

def _copy(bamba: Path, to: Path, change) -> Path:
    shutil.copytree(bamba, to)
    change(to)
    return to


def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


BROKEN = {
    # the folder is not there
    "missing folder": lambda bamba, to: to,
    # weights that are not a safetensors file, and one cut short
    "corrupt weights": lambda bamba, to: _copy(bamba, to, lambda d: (d / "model.safetensors").write_bytes(b"x" * 64)),
    "truncated weights": lambda bamba, to: _copy(
        bamba, to, lambda d: (d / "model.safetensors").write_bytes((bamba / "model.safetensors").read_bytes()[:4000])),
    # a config transformers' own validation rejects, with an exception class of its own
    "inconsistent config": lambda bamba, to: _copy(bamba, to, lambda d: _config(d, hidden_size=48)),
    "config not JSON": lambda bamba, to: _copy(bamba, to, lambda d: (d / "config.json").write_text("{oops")),
    "unknown model type": lambda bamba, to: _copy(bamba, to, lambda d: _config(d, model_type="no-such-model")),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_model_that_fails_to_load_shows_an_error_box_and_the_page_stays_usable(bamba_dir, tmp_path, case):
    broken = BROKEN[case](Path(bamba_dir), tmp_path / "broken")
    at = open_page(bamba_dir, "pages/model.py")
    assert widget(at, "metric", "architecture").value == "bamba"

    widget(at, "text_input", "Folder or hub id").set_value(str(broken)).run()  # typed into the sidebar
    assert not at.exception, at.exception
    assert len(at.error) == 1 and str(broken) in at.error[0].value
    assert not at.metric  # nothing of the previous model is passed off as this one's
    assert at.sidebar.radio and at.sidebar.text_input  # the sidebar is still there to choose another

    widget(at, "button", f"Back to {bamba_dir}").click().run()  # the model loaded before
    assert not at.exception, at.exception
    assert not at.error and widget(at, "metric", "architecture").value == "bamba"


def test_an_exception_no_loader_expects_is_still_an_error_box(bamba_dir, monkeypatch):
    """Whatever a loader raises (here an exception class of its own, as third-party code may), the page
    shows it in an error box with its type, not as a traceback."""
    import app.state

    class ExoticFailure(Exception):
        pass

    def fails(*args, **kwargs):
        raise ExoticFailure("the weights disagree with themselves")

    monkeypatch.setattr(app.state, "load_model", fails)
    at = open_page(Path(bamba_dir) / "never-loaded", "pages/export.py")
    assert "ExoticFailure" in at.error[0].value and "disagree with themselves" in at.error[0].value
    assert "Choose another model in the sidebar." in at.info[0].value  # nothing loaded before: an empty state


# --- named plans -------------------------------------------------------------------------------------

def test_named_plans_are_never_overwritten_silently_and_keep_to_a_length(bamba_dir):
    model, _ = load_model(str(bamba_dir))
    first, second = (Plan.for_model(model, [Component("block", 0)]), Plan.for_model(model, [Component("ssm", 2)]))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.session_state["plans"] = {str(bamba_dir): first}
    at.switch_page("pages/export.py").run()
    folder = store.plans_root(model_fingerprint(model), at.session_state["workspace"])  # the session's own
    assert at.session_state["workspace"].startswith(store.SESSION_PREFIX)

    def save(name: str, replace: bool = False) -> None:
        box = next(t for t in at.text_input if t.key and t.key.startswith("name-current-"))
        box.set_value(name)
        widget(at, "checkbox", "Replace a saved plan of that name").set_value(replace)
        widget(at, "button", "Save as a named plan").click().run()
        assert not at.exception, at.exception

    save("a b")
    assert [s.value for s in at.success] == ["Saved as a-b."]
    at.session_state["plans"] = {str(bamba_dir): second}
    at.run()
    for clash in ("a/b", "a-b", "A B"):  # the same file name, or the same one on a case-blind file system
        save(clash)
        assert "already named a-b" in at.error[0].value and not at.success
        assert [p.name for p in folder.iterdir()] == ["a-b.json"]
        assert Plan.load(folder / "a-b.json").removed == first.removed  # untouched

    save("a/b", replace=True)  # asked for: replaced, under the one name
    assert [s.value for s in at.success] == ["Saved as a-b."]
    assert [p.name for p in folder.iterdir()] == ["a-b.json"]
    assert Plan.load(folder / "a-b.json").removed == second.removed

    box = next(t for t in at.text_input if t.key and t.key.startswith("name-current-"))
    assert box.max_chars == 100 and "at most 100 characters" in box.help  # the limit, said where it is typed
    save("x" * 300)  # cut to the limit as it is typed, and saved under that name
    assert [s.value for s in at.success] == [f"Saved as {'x' * 100}."]
    with pytest.raises(ShedderError, match="at most 100 characters"):  # the store refuses it from any caller
        store.save_plan(model_fingerprint(model), "y" * 300, second)
    (folder / f"{'x' * 100}.json").unlink()
    save("/ . -")
    assert "Give the plan a name" in at.error[0].value
    assert [p.name for p in folder.iterdir()] == ["a-b.json"]
    assert widget(at, "multiselect", "Plans").options == ["a-b"]  # the comparison still lists it


# --- uploads -----------------------------------------------------------------------------------------

def test_a_reference_config_is_applied_only_after_its_mapping_is_shown_and_confirmed(bamba_dir, mamba2_dir):
    at = open_page(bamba_dir, "pages/export.py")
    # a Mamba-2's config: index 1 meant its layer 1; on this Bamba (attention at layer 1) SSM 1 is layer 2
    upload(at, "pruning_config.json", {"pruned_ssm_idx": [1], "pruned_mlp_idx": [0]})
    assert any("names no model" in w.value and "pruned_mlp_idx 0 -> mlp@0; pruned_ssm_idx 1 -> ssm@2" in w.value
               for w in at.warning)  # the mapping, shown
    assert "Make it the current plan" not in labels(at, "button")
    assert "Save as a named plan" not in labels(at, "button")  # nor saved unconfirmed
    assert current(at, bamba_dir).removed == []

    widget(at, "checkbox", "The mapping is what I meant").check().run()
    widget(at, "button", "Make it the current plan").click().run()
    assert not at.exception, at.exception
    assert current(at, bamba_dir).removed == [Component("mlp", 0), Component("ssm", 2)]

    upload(at, "other.json", {"pruned_ssm_idx": [1]})  # another file asks again
    assert "Make it the current plan" not in labels(at, "button")
    widget(at, "checkbox", "The mapping is what I meant").check().run()
    assert "Make it the current plan" in labels(at, "button")
    widget(at, "text_input", "Folder or hub id").set_value(str(mamba2_dir)).run()  # the same file, another model
    assert not at.exception, at.exception
    assert any("pruned_ssm_idx 1 -> ssm@1 (on this mamba2" in w.value for w in at.warning)
    assert not widget(at, "checkbox", "The mapping is what I meant").value  # asked again
    assert "Make it the current plan" not in labels(at, "button")


def test_a_plan_of_other_weights_says_so_and_needs_confirmation(bamba_dir, tmp_path):
    other_dir = tmp_path / "other-weights"
    other = save_tiny("bamba", other_dir, seed=1)  # same layout, other weights
    plan = Plan.for_model(other, [Component("block", 2)])
    at = open_page(bamba_dir, "pages/export.py")
    upload(at, "plan.json", plan.to_dict())
    assert any("other weights" in w.value and plan.fingerprint[:12] in w.value for w in at.warning)
    assert "Make it the current plan" not in labels(at, "button")

    widget(at, "checkbox", "Use it on these weights anyway").check().run()
    widget(at, "button", "Make it the current plan").click().run()
    assert not at.exception, at.exception
    adopted = current(at, bamba_dir)
    assert adopted.removed == plan.removed
    assert adopted.fingerprint == model_fingerprint(load_model(str(bamba_dir))[0])  # now a plan for these weights
    assert adopted.extra["made_for"]["fingerprint"] == plan.fingerprint  # and it says what it was made for


def test_an_uploaded_plan_keeps_none_of_its_extra_keys(bamba_dir):
    model, _ = load_model(str(bamba_dir))
    data = {**Plan.for_model(model, [Component("attn", 1)]).to_dict(), "payload": "x" * 5000, "notes": {"a": 1}}
    at = open_page(bamba_dir, "pages/export.py")
    upload(at, "plan.json", data)
    assert any("not kept" in i.value and "notes, payload" in i.value for i in at.info)
    widget(at, "button", "Make it the current plan").click().run()
    assert current(at, bamba_dir).extra == {}
    box = next(t for t in at.text_input if t.key and t.key.startswith("name-uploaded-"))
    assert box.value == "plan"
    next(b for b in at.button if b.key == "save-uploaded").click().run()
    assert not at.exception, at.exception
    saved = json.loads((store.plans_root(model_fingerprint(model), at.session_state["workspace"]) / "plan.json")
                       .read_text())
    assert "payload" not in saved and "notes" not in saved and saved["removed"] == [{"kind": "attn", "layer": 1}]


BAD_UPLOADS = {
    "over a megabyte": (b"{" + b" " * 2_000_000 + b"}", "at most 1,000,000 bytes"),
    "not JSON": (b"\x89PNG\r\n", "not valid JSON"),
    "a JSON list": ([1, 2], "Not a shedder plan"),
    "model as a string": ({"format": "shedder-plan", "version": 1, "model": "mamba2", "removed": []}, ""),
    "removed entries of nothing": ({"format": "shedder-plan", "version": 1, "removed": [{"x": 1}]}, ""),
    "reference index 5": ({"pruned_ssm_idx": 5}, ""),
    "reference index null": ({"pruned_ssm_idx": [None]}, ""),
    "reference index text": ({"pruned_ssm_idx": ["abc"]}, ""),
    "reference index past the end": ({"pruned_ssm_idx": [7]}, "0..1"),
    "reference unknown key": ({"pruned_ssm_idx": [0], "evil": 1}, "Unknown key"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_an_error_box_and_changes_nothing(bamba_dir, case):
    data, says = BAD_UPLOADS[case]
    at = open_page(bamba_dir, "pages/export.py")
    upload(at, "plan.json", data)
    assert len(at.error) == 1 and "plan.json" in at.error[0].value and says in at.error[0].value
    assert "Make it the current plan" not in labels(at, "button")
    assert current(at, bamba_dir).removed == []


# --- paths typed into the pages ----------------------------------------------------------------------

def test_paths_stay_inside_the_data_folder(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "texts").mkdir(parents=True)
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(root))
    assert data_root() == root.resolve()
    assert inside_data_root("texts/a.txt") == root.resolve() / "texts" / "a.txt"  # relative: from the root
    assert inside_data_root(root / "x") == root.resolve() / "x"
    assert inside_data_root(cache_dir() / "extracted" / "m") == cache_dir().resolve() / "extracted" / "m"
    (root / "out").symlink_to(tmp_path)  # a link inside that leads outside
    for outside in ("/etc/passwd", "../elsewhere", "texts/../../elsewhere", "~", "out/x"):
        with pytest.raises(ShedderError, match="outside the data folder"):
            inside_data_root(outside)
    with pytest.raises(ShedderError, match="is empty"):
        inside_data_root("  ")
    with pytest.raises(ShedderError, match="not a usable path"):
        inside_data_root("a\x00b")
    with pytest.raises(ShedderError, match="has 300 bytes; file systems allow at most 255"):
        inside_data_root("texts/" + "y" * 300)
    assert inside_data_root("y" * 255) == root.resolve() / ("y" * 255)
    monkeypatch.delenv("SHEDDER_DATA_ROOT")
    assert data_root() == cache_dir().resolve()  # the default: the results cache


def test_the_export_page_refuses_a_folder_outside_and_shows_where_it_writes(bamba_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(tmp_path / "data"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    model, _ = load_model(str(bamba_dir))
    at.session_state["plans"] = {str(bamba_dir): Plan.for_model(model, [Component("block", 0)])}
    at.switch_page("pages/export.py").run()
    default = widget(at, "text_input", "Folder").value
    assert any(c.value == f"Writes to `{store.shown_path(cache_dir() / 'extracted' / Path(default).name)}`" for c in at.caption)

    for outside, says in ((str(tmp_path / "elsewhere"), "outside the data folder"),
                          ("../elsewhere", "outside the data folder"), ("/", "outside the data folder"),
                          ("z" * 300, "file systems allow at most 255"), ("a\x00b", "not a usable path")):
        widget(at, "text_input", "Folder").set_value(outside).run()
        assert not at.exception, at.exception
        assert says in at.error[0].value
        assert widget(at, "button", "Extract").disabled
    assert not (tmp_path / "elsewhere").exists()

    widget(at, "text_input", "Folder").set_value("mine").run()  # relative: inside the data folder
    assert any(c.value == f"Writes to `{store.shown_path(tmp_path / 'data' / 'mine')}`" for c in at.caption)
    widget(at, "button", "Extract").click().run()
    assert not at.exception, at.exception
    assert (tmp_path / "data" / "mine" / "config.json").is_file()


MODEL_FOLDER = "Model folder (empty: choose one the dashboard extracted)"


@pytest.mark.parametrize("field", [MODEL_FOLDER, "Training text", "Dense reference"])
def test_the_recovery_page_refuses_paths_outside_the_data_folder(bamba_dir, tmp_path, monkeypatch, field):
    root, outside = tmp_path / "data", tmp_path / "outside"
    save_tiny("mamba2", root / "pruned")
    save_tiny("mamba2", outside)
    (outside / "train.txt").write_text("some text " * 100)
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(root))
    at = open_page(bamba_dir, "pages/recover.py")
    widget(at, "text_input", MODEL_FOLDER).set_value("pruned").run()  # relative: inside the data folder
    assert not at.error and "Start recovery" in labels(at, "button")
    assert any(c.value.startswith(f"Runs in and writes the recovered model to `{store.shown_path(cache_dir())}")
               for c in at.caption)

    widget(at, "text_input", field).set_value(str(outside / ("train.txt" if field == "Training text" else ""))).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "outside the data folder" in at.error[0].value
    assert "Start recovery" not in labels(at, "button")


# --- remote code on the Recovery page ----------------------------------------------------------------

@pytest.mark.parametrize("ticked", [False, True])
def test_the_recovery_page_runs_a_folders_code_only_with_the_box_ticked(bamba_dir, foreign_remote_code_model,
                                                                       monkeypatch, ticked):
    """The page hands the sidebar's 'Allow remote code' to the library as it is: unticked, the payload of a
    foreign folder with a plan.json never runs; ticked, it does (so the unticked case could fail)."""
    folder, marker = foreign_remote_code_model
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(folder.parent))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir), trust_remote_code=ticked)
    at.switch_page("pages/recover.py").run()
    widget(at, "text_input", MODEL_FOLDER).set_value(folder.name).run()
    assert any(f"(now {'ticked' if ticked else 'not ticked'})" in c.value for c in at.caption)
    widget(at, "number_input", "Steps").set_value(1)
    widget(at, "select_slider", "Window (tokens)").set_value(32)
    widget(at, "select_slider", "Held-out tokens").set_value("512")
    at.run()
    widget(at, "button", "Start recovery").click().run()
    assert not at.exception, at.exception
    finish_job(at, "recovery")  # a background job; the page shows how it ended
    assert len(at.error) == 1
    if ticked:
        assert marker.exists()  # its code ran (and the architecture check refused it after)
    else:
        assert "needs code from its folder" in at.error[0].value and not marker.exists()


def test_damaged_saved_plans_do_not_hide_the_others(bamba_dir):
    model, _ = load_model(str(bamba_dir))
    fingerprint = model_fingerprint(model)
    store.save_plan(fingerprint, "good", Plan.for_model(model, [Component("block", 0)]))
    folder = cache_dir() / "plans" / fingerprint
    (folder / "cut-short.json").write_text('{"format": "shedder-plan", "vers')
    (folder / "wrong-shape.json").write_text(json.dumps({"format": "shedder-plan", "version": 1, "removed": [5]}))
    assert list(store.saved_plans(fingerprint)) == ["good"]
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.session_state["workspace"] = store.SHARED  # where the plans above were saved (outside any session)
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    assert list(at.dataframe[-1].value["plan"]) == ["dense", "good"]
    with pytest.raises(ShedderError):
        store.delete_plan(fingerprint, "../../elsewhere/x")


def test_the_search_page_refuses_a_calibration_text_outside_the_data_folder(bamba_dir, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("inside " * 200)
    (tmp_path / "theirs.txt").write_text("outside " * 200)
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(root))
    at = open_page(bamba_dir, "pages/search.py")
    widget(at, "selectbox", "Calibration text").set_value("a .txt file").run()
    widget(at, "text_input", "Path of the .txt file").set_value(str(tmp_path / "theirs.txt")).run()
    assert not at.exception, at.exception
    assert "outside the data folder" in at.error[0].value
    assert widget(at, "button", "Run search").disabled
    widget(at, "text_input", "Path of the .txt file").set_value("mine.txt").run()  # relative: inside
    assert not at.error and not widget(at, "button", "Run search").disabled


@pytest.mark.parametrize("stages", ["ssm:99999999999999999999", "block:0", "attn,mlp:4;ssm:3"])
def test_the_search_page_refuses_stages_with_impossible_step_counts(bamba_dir, stages):
    at = open_page(bamba_dir, "pages/search.py")
    widget(at, "radio", "What to search").set_value("several stages").run()
    assert not at.error, at.error[0].value  # the default stages fit even a 3-layer model
    widget(at, "text_input", "Stages").set_value(stages).run()
    assert not at.exception, at.exception
    assert "steps go from 1 to" in at.error[0].value
    assert widget(at, "button", "Run search").disabled


def test_pages_show_paths_inside_the_working_folder_relative_and_others_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store.shown_path(tmp_path / "cache" / "extracted" / "m") == str(Path("cache") / "extracted" / "m")
    assert store.shown_path("/") == "/"
