"""Plans coming into the dashboard and named plans going out: an uploaded file checked against the loaded
model (size, format, the mapping of a reference config, weights it was made for), and the box that saves
a plan under a name without overwriting another."""
from __future__ import annotations

import dataclasses
import hashlib

import streamlit as st
from torch import nn

from shedder.errors import ShedderError
from shedder.formats.reference_format import plan_from_data
from shedder.plan import Plan, plan_json
from shedder.removal.masks import model_lock

from . import store

MAX_UPLOAD_BYTES = 1_000_000  # a plan of every component of a 100-layer model is a few tens of kB


@dataclasses.dataclass
class Upload:
    """An uploaded plan that fits the loaded model, and what the user must see before using it."""

    plan: Plan  # what the plan format keeps: anything else in the file is dropped
    digest: str  # of the file's bytes: a new file asks for a new confirmation
    dropped: list[str]  # top-level keys of the file that are not part of a plan (not kept, never saved)
    mapping: str | None  # reference config: which of our components each of its indices became
    other_weights: str | None  # our format: why the plan names other weights, else None

    @property
    def needs_confirmation(self) -> bool:
        return self.mapping is not None or self.other_weights is not None

    def adopted(self, fingerprint: str) -> Plan:
        """The plan as one for the loaded weights (``fingerprint``), once the user confirmed; a plan made for
        other weights names them under ``made_for``, as an extraction records it."""
        plan = self.plan
        if plan.fingerprint in (None, fingerprint):
            return dataclasses.replace(plan, fingerprint=fingerprint)
        made_for = {"model_type": plan.model_type, "n_layers": plan.n_layers, "fingerprint": plan.fingerprint}
        return dataclasses.replace(plan, fingerprint=fingerprint, extra={**plan.extra, "made_for": made_for})


def read_upload(name: str, raw: bytes, model: nn.Module, fingerprint: str) -> Upload:
    """The plan in an uploaded file, for ``model`` (whose fingerprint is ``fingerprint``); a ShedderError that
    says why for anything else, whatever is wrong with the file."""
    if len(raw) > MAX_UPLOAD_BYTES:
        raise ShedderError(f"{name} is {len(raw):,} bytes; a plan file is at most {MAX_UPLOAD_BYTES:,} bytes. "
                           "Upload a shedder plan or a reference pruning_config.json.")
    data = plan_json(raw, name)
    try:
        plan, mapping = plan_from_data(data, model, allow_other_weights=True)  # other weights: asked below
    except ShedderError as exc:
        raise ShedderError(f"{name} does not fit the loaded model: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  (a file from anywhere: say what is wrong, never a traceback)
        raise ShedderError(f"{name} is not a plan this dashboard can read ({type(exc).__name__}: {exc}).") from exc
    dropped = [] if mapping is not None else sorted(str(k) for k in set(data) - set(plan.to_dict()))
    other = None
    if mapping is None and plan.fingerprint and plan.fingerprint != fingerprint:
        with model_lock(model):  # never hash weights another session has masked
            same = plan.fits_weights(model)
        if not same:
            other = (f"{name} was made for other weights: the same architecture ({plan.model_type}, {plan.n_layers} "
                     f"layers), but its weight fingerprint {plan.fingerprint[:12]} is not the loaded model's "
                     f"({fingerprint[:12]}): another checkpoint or a fine-tune. Its removals apply, but a search on "
                     "these weights could choose differently.")
    return Upload(plan, hashlib.sha256(raw).hexdigest()[:16], dropped, mapping, other)


def save_box(fingerprint: str, plan: Plan, key: str, default: str, button: str = "Save as a named plan",
             where=None) -> None:
    """A name, a 'replace' tick and a save button for ``plan`` (in the columns ``where``, default two new
    ones); a name taken already, too long or empty is refused with the reason."""
    name_col, button_col = where or st.columns([3, 1])
    # keyed by the plan too, so another plan gets its own default name
    name = name_col.text_input("Name", value=default[:store.MAX_NAME], max_chars=store.MAX_NAME,
                               key=f"name-{key}-{hash(tuple(plan.removed))}", label_visibility="collapsed",
                               help=f"The plan's name: {store.NAME_RULE}.")
    replace = name_col.checkbox("Replace a saved plan of that name", key=f"replace-{key}")
    if button_col.button(button, key=f"save-{key}"):
        try:
            st.success(f"Saved as {store.save_plan(fingerprint, name, plan, replace)}.")
        except ShedderError as exc:
            st.error(str(exc))
