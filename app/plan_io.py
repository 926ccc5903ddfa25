"""Plans coming into the dashboard and named plans going out: an uploaded file checked against the loaded
model (size, format, the mapping of a reference config, weights it was made for), and the box that saves
a plan under a name without overwriting another."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pandas as pd
import streamlit as st
from torch import nn

from shedder.catalogue import Component
from shedder.errors import ShedderError
from shedder.masks import catalogue_of
from shedder.plan import Plan
from shedder.reference_format import CHANNELS_KEY, KEY_TO_KIND, from_reference, is_reference_config

from . import store

MAX_UPLOAD_BYTES = 1_000_000  # a plan of every component of a 100-layer model is a few tens of kB


@dataclasses.dataclass
class Upload:
    """An uploaded plan that fits the loaded model, and what the user must see before using it."""

    plan: Plan  # only a plan's own fields: anything else in the file is dropped
    digest: str  # of the file's bytes: a new file asks for a new confirmation
    dropped: list[str]  # top-level keys of the file that are not part of a plan (not kept, never saved)
    mapping: pd.DataFrame | None  # reference config: each of its indices and the component it became here
    other_weights: str | None  # our format: why the plan names other weights, else None

    @property
    def needs_confirmation(self) -> bool:
        return self.mapping is not None or self.other_weights is not None


def read_upload(name: str, raw: bytes, model: nn.Module, fingerprint: str) -> Upload:
    """The plan in an uploaded file, for ``model`` (whose fingerprint is ``fingerprint``); a ShedderError that
    says why for anything else, whatever is wrong with the file."""
    if len(raw) > MAX_UPLOAD_BYTES:
        raise ShedderError(f"{name} is {len(raw):,} bytes; a plan file is at most {MAX_UPLOAD_BYTES:,} bytes. "
                           "Upload a shedder plan or a reference pruning_config.json.")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShedderError(f"{name} is not a JSON file ({exc}).") from exc
    digest = hashlib.sha256(raw).hexdigest()[:16]
    try:
        if is_reference_config(data):
            plan = from_reference(data, model)  # refuses keys the format does not have
            return Upload(plan, digest, [], reference_mapping(data, plan, model), None)
        plan = Plan.from_dict(data)
        dropped = sorted(plan.extra)
        plan = dataclasses.replace(plan, extra={})
        plan.check(model)
    except ShedderError as exc:
        raise ShedderError(f"{name} does not fit the loaded model: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  (a file from anywhere: say what is wrong, never a traceback)
        raise ShedderError(f"{name} is not a plan this dashboard can read ({type(exc).__name__}: {exc}).") from exc
    other = None
    if plan.fingerprint and plan.fingerprint != fingerprint:
        other = (f"{name} was made for a {plan.model_type} model of this shape with other weights (fingerprint "
                 f"{plan.fingerprint[:12]}, the loaded one is {fingerprint[:12]}): another checkpoint, a fine-tune "
                 "or another dtype. Its removals apply, but a search on these weights could choose differently.")
    return Upload(plan, digest, dropped, None, other)


def reference_mapping(data: dict, plan: Plan, model: nn.Module) -> pd.DataFrame:
    """Which of ``model``'s components each index of a reference config became in ``plan``.

    The format counts, per kind, the layers that hold that kind, in order, and names no model: the same
    file means other layers on another hybrid layout."""
    catalogue = catalogue_of(model, plan.channel_group_size)
    holders = {kind: sorted({c.layer for c in catalogue.components([kind])})
               for kind in {*KEY_TO_KIND.values(), "mlp_channels"}}
    rows = []
    for key, kind in KEY_TO_KIND.items():
        for ordinal in data.get(key) or []:
            layer = holders[kind][ordinal]
            rows.append({"reference entry": f"{key} {ordinal}",
                         "means": f"{kind} number {ordinal} of {len(holders[kind])}",
                         "here": str(Component(kind, layer)), "layer": layer})
    for ordinal, kept in (data.get(CHANNELS_KEY) or {}).items():
        layer = holders["mlp_channels"][int(ordinal)]
        groups = [c.index for c in plan.removed if c.kind == "mlp_channels" and c.layer == layer]
        rows.append({"reference entry": f"{CHANNELS_KEY} {ordinal}: keep {kept}",
                     "means": f"MLP number {ordinal} of {len(holders['mlp_channels'])}",
                     "here": f"mlp_channels@{layer} groups {', '.join(map(str, sorted(groups)))}", "layer": layer})
    return pd.DataFrame(rows, columns=["reference entry", "means", "here", "layer"])


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
