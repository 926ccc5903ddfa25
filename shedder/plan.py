"""The pruning plan: which components are removed, in removal order, for which model.

JSON, versioned::

    {"format": "shedder-plan", "version": 1,
     "model": {"model_type": "mamba2", "n_layers": 24, "fingerprint": "..."},
     "channel_group_size": 256, "channel_reorder": null,
     "removed": [{"kind": "ssm", "layer": 7}, {"kind": "mlp_channels", "layer": 3, "index": 2}]}
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from torch import nn

from .errors import ShedderError
from .kinds import KINDS
from .model.identity import model_fingerprint, rounded_fingerprints, same_weights
from .paths import write_text_atomic
from .removal.catalogue import Component, catalogue_of, validate

log = logging.getLogger(__name__)

FORMAT, VERSION = "shedder-plan", 1
MAX_PLAN_BYTES = 4 * 2**20  # a plan of every component of a 100-layer model, with every search step, is < 1 MiB
# what a plan keeps besides its own fields: the search steps it came from, the model a plan applied
# with --allow-other-weights was made for, and "about" (what a downloaded plan says of itself: the model's
# name, path or hub id, the evaluation setting, the metrics measured for it); anything else in a file is
# dropped on reading
EXTRA_KEYS = ("steps", "made_for", "about")


def _too_large(name: str, size: int) -> ShedderError:
    return ShedderError(f"{name} is {size:,} bytes, too large to be a plan (at most {MAX_PLAN_BYTES:,}); "
                        "give a shedder plan or a reference pruning_config.json.")


def plan_json(raw: bytes, name: str) -> object:
    """The JSON in a plan file's bytes; refuses files too large to be a plan and text that is not JSON."""
    if len(raw) > MAX_PLAN_BYTES:
        raise _too_large(name, len(raw))
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShedderError(f"Plan file {name} is not valid JSON: {exc}") from exc


def read_plan_json(path: str | Path) -> object:
    """The JSON in a plan file (ours or a reference config), read with the checks of :func:`plan_json`."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise _too_large(str(path), path.stat().st_size)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ShedderError(f"Plan file {path} does not exist.") from None
    except OSError as exc:
        raise ShedderError(f"Cannot read plan file {path}: {exc.strerror or exc}.") from None
    return plan_json(raw, str(path))


def not_plan_keys(data: dict) -> list[str]:
    """The top-level keys of a plan file that are not part of a plan (reading drops them)."""
    known = {"format", "version", "model", "channel_group_size", "channel_reorder", "removed", *EXTRA_KEYS}
    return sorted(str(k) for k in data if k not in known)


def _optional(data: dict, key: str, kind: type, where: str = ""):
    """``data[key]`` when it is None or of ``kind`` (a bool is not a whole number), else a ShedderError."""
    value = data.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    wanted = {int: "a whole number", str: "a string", list: "a list", dict: "an object"}[kind]
    raise ShedderError(f'Plan field "{where}{key}" must be {wanted} or null, not {str(value)[:80]}.')


@dataclass
class Plan:
    """Removed components, in removal order, and how MLP channels are grouped (size and order); also the model
    it is for, when known. Everything that evaluates, masks, scores, searches or extracts takes one."""

    removed: list[Component] = field(default_factory=list)
    model_type: str | None = None
    n_layers: int | None = None
    fingerprint: str | None = None
    channel_group_size: int | None = None
    channel_reorder: str | None = None  # None, or "l1": MLP channels grouped in order of weight L1 norm
    extra: dict = field(default_factory=dict)  # anything else a producer wants to keep (scores, steps ...)
    rounded_fingerprints: dict = field(default_factory=dict)  # made in float32: the weights' bf16/fp16 fingerprints

    @classmethod
    def for_model(cls, model: nn.Module, removed: list[Component] = (), channel_group_size: int | None = None,
                  channel_reorder: str | None = None) -> "Plan":
        catalogue = catalogue_of(model, channel_group_size)
        return cls(list(removed), catalogue.model_type, catalogue.n_layers, model_fingerprint(model),
                   catalogue.channel_group_size, channel_reorder, rounded_fingerprints=rounded_fingerprints(model))

    @property
    def uses_grouping(self) -> bool:
        """Whether the channel grouping changes what this plan removes (it removes grouped components)."""
        return any(KINDS[c.kind].grouped for c in self.removed if c.kind in KINDS)

    def with_removed(self, removed: Iterable[Component]) -> "Plan":
        """This plan (model, grouping) with other components removed."""
        return replace(self, removed=list(removed), extra={})

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {"model_type": self.model_type, "n_layers": self.n_layers, "fingerprint": self.fingerprint,
                      **({"fingerprint_rounded": self.rounded_fingerprints} if self.rounded_fingerprints else {})},
            "channel_group_size": self.channel_group_size,
            "channel_reorder": self.channel_reorder,
            "removed": [c.to_dict() for c in self.removed],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ShedderError("Not a shedder plan (expected \"format\": \"shedder-plan\").")
        if data.get("version") != VERSION:
            raise ShedderError(f"Plan version {data.get('version')} is not supported (this shedder reads {VERSION}).")
        model = {} if data.get("model") is None else data["model"]
        if not isinstance(model, dict):
            raise ShedderError(f'Plan field "model" must be an object such as {{"model_type": "mamba2", '
                               f'"n_layers": 24, "fingerprint": "..."}}, not {model!r}.')
        n_layers = _optional(model, "n_layers", int, "model.")
        group_size = _optional(data, "channel_group_size", int)
        if (n_layers is not None and n_layers < 1) or (group_size is not None and group_size < 1):
            raise ShedderError("Plan fields model.n_layers and channel_group_size must be at least 1.")
        rounded = _optional(model, "fingerprint_rounded", dict, "model.") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in rounded.items()):
            raise ShedderError('Plan field "model.fingerprint_rounded" must map dtype names to fingerprints.')
        reorder = data.get("channel_reorder")
        if reorder not in (None, "l1"):
            raise ShedderError(f'Plan field "channel_reorder" must be null or "l1", not {reorder!r}.')
        removed = _optional(data, "removed", list) or []
        for key in ("steps", "made_for"):
            _optional(data, key, list if key == "steps" else dict)
        dropped = not_plan_keys(data)
        if dropped:
            log.warning("Ignoring what is not part of a plan: %s", ", ".join(dropped)[:200])
        return cls(
            removed=[Component.from_dict(c) for c in removed],
            model_type=_optional(model, "model_type", str, "model."),
            n_layers=n_layers,
            fingerprint=_optional(model, "fingerprint", str, "model."),
            channel_group_size=group_size,
            channel_reorder=reorder,
            extra={k: data[k] for k in EXTRA_KEYS if data.get(k) is not None},
            rounded_fingerprints=rounded,
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_dict(read_plan_json(path))

    def fits_weights(self, model: nn.Module) -> bool:
        """Whether this plan was made for ``model``'s weights (or records none), in any precision."""
        return not self.fingerprint or same_weights(model, self.fingerprint, self.rounded_fingerprints)

    def check(self, model: nn.Module, strict_weights: bool = False) -> None:
        """Raise a ShedderError that explains why this plan does not fit ``model``."""
        catalogue = catalogue_of(model, self.channel_group_size)
        if self.model_type and self.model_type != catalogue.model_type:
            raise ShedderError(f"The plan is for a {self.model_type} model; this one is {catalogue.model_type}.")
        if self.n_layers is not None and self.n_layers != catalogue.n_layers:
            raise ShedderError(f"The plan is for a model with {self.n_layers} layers; this one has {catalogue.n_layers}.")
        if strict_weights and not self.fits_weights(model):
            raise ShedderError(
                f"The plan was made for other weights: same architecture ({catalogue.model_type}, "
                f"{catalogue.n_layers} layers), but its weight fingerprint {self.fingerprint[:12]} is not this "
                f"model's ({model_fingerprint(model)[:12]}). Use the plan with the model it was made for; to apply a "
                "plan searched on a base model to its fine-tune, pass --allow-other-weights.")
        validate(model, self.removed, self.channel_group_size)


def as_plan(plan: "Plan | Iterable[Component]") -> Plan:
    """``plan`` itself, or a plan of the components listed (the model's default channel grouping)."""
    return plan if isinstance(plan, Plan) else Plan(list(plan))
