"""The pruning plan: which components are removed, in removal order, for which model.

JSON, versioned::

    {"format": "shedder-plan", "version": 1,
     "model": {"model_type": "mamba2", "n_layers": 24, "fingerprint": "..."},
     "channel_group_size": 256, "channel_reorder": null,
     "removed": [{"kind": "ssm", "layer": 7}, {"kind": "mlp_channels", "layer": 3, "index": 2}]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .catalogue import Component
from .errors import ShedderError
from .identity import model_fingerprint
from .masks import catalogue_of, validate
from .paths import write_text_atomic

FORMAT, VERSION = "shedder-plan", 1


@dataclass
class Plan:
    removed: list[Component] = field(default_factory=list)
    model_type: str | None = None
    n_layers: int | None = None
    fingerprint: str | None = None
    channel_group_size: int | None = None
    channel_reorder: str | None = None  # None, or "l1": MLP channels grouped in order of weight L1 norm
    extra: dict = field(default_factory=dict)  # anything else a producer wants to keep (scores, steps ...)

    @classmethod
    def for_model(cls, model: nn.Module, removed: list[Component] = (), channel_group_size: int | None = None,
                  channel_reorder: str | None = None) -> "Plan":
        catalogue = catalogue_of(model, channel_group_size)
        return cls(list(removed), catalogue.model_type, catalogue.n_layers, model_fingerprint(model),
                   catalogue.channel_group_size, channel_reorder)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {"model_type": self.model_type, "n_layers": self.n_layers, "fingerprint": self.fingerprint},
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
        model = data.get("model") or {}
        known = {"format", "version", "model", "channel_group_size", "channel_reorder", "removed"}
        return cls(
            removed=[Component.from_dict(c) for c in data.get("removed", [])],
            model_type=model.get("model_type"),
            n_layers=model.get("n_layers"),
            fingerprint=model.get("fingerprint"),
            channel_group_size=data.get("channel_group_size"),
            channel_reorder=data.get("channel_reorder"),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ShedderError(f"Plan file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise ShedderError(f"Plan file {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def check(self, model: nn.Module, strict_weights: bool = False) -> None:
        """Raise a ShedderError that explains why this plan does not fit ``model``."""
        catalogue = catalogue_of(model, self.channel_group_size)
        if self.model_type and self.model_type != catalogue.model_type:
            raise ShedderError(f"The plan is for a {self.model_type} model; this one is {catalogue.model_type}.")
        if self.n_layers is not None and self.n_layers != catalogue.n_layers:
            raise ShedderError(f"The plan is for a model with {self.n_layers} layers; this one has {catalogue.n_layers}.")
        if strict_weights and self.fingerprint and self.fingerprint != model_fingerprint(model):
            raise ShedderError("The plan was made for a model with other weights (fingerprint differs).")
        validate(model, self.removed, self.channel_group_size)
