"""Physical extraction: write a smaller model that loads with stock transformers, no shedder needed.

Masks (:mod:`shedder.masks`) remove components reversibly but make nothing faster. ``extract`` turns
a plan of ``block`` removals into a real checkpoint: the removed layers are dropped, the config is
rewritten to describe the remaining ones, a fresh model is built from it and the kept weights are
copied in with their layer numbers renumbered. The result gives the same outputs as the masked
model and loads with ``AutoModelForCausalLM.from_pretrained(out_dir)``.

How each family's config describes its layer layout (the fields rewritten here):

- mamba, falcon_mamba, mamba2, llama, falcon_h1: every layer is alike; ``num_hidden_layers``
  (plus a stored ``layer_types`` list, where a config has one).
- bamba: ``attn_layer_indices``.
- granitemoehybrid: ``layer_types``.
- nemotron_h: ``layers_block_type`` (``hybrid_override_pattern`` is derived from it).
- zamba2: ``layers_block_type`` and ``hybrid_layer_ids``. The shared transformer blocks are kept;
  each hybrid layer's own adapter slots inside them are renumbered, and a removed hybrid layer's
  slots are dropped. With several shared blocks (``num_mem_blocks`` > 1) the blocks are assigned
  to hybrid layers in turn, so removals must keep that assignment.
- jamba: attention and expert layers are placed periodically (``attn_layer_period/offset``,
  ``expert_layer_period/offset``), with no per-layer list the config accepts; a removal whose
  remaining layers are not periodic is refused.

Only ``block`` removals are extracted so far; plans with other kinds are refused (masks still
apply them).
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .adapters import describe_model
from .catalogue import Component
from .errors import ShedderError
from .plan import Plan

log = logging.getLogger(__name__)

EXTRACTABLE_KINDS = ("block",)
_LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")
_ADAPTER_SLOT = re.compile(r"(_adapter_list)\.(\d+)\.")


@dataclass
class ExtractResult:
    out_dir: Path
    params_before: int
    params_after: int
    removed: list[Component] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Which layers of the source model survive: ``kept[new] = old``."""

    n_layers: int
    kept: tuple[int, ...]

    @property
    def new_index(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}

    def keep(self, per_layer: list) -> list:
        return [per_layer[old] for old in self.kept]


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())


# --- configs ------------------------------------------------------------------------------------

ConfigEdit = Callable[[dict, Layout, object], None]


def _plain(data: dict, layout: Layout, config) -> None:
    """Families whose layers are all alike: the layer count, and any stored per-layer type list."""
    data["num_hidden_layers"] = len(layout.kept)
    for key in ("layer_types", "layers_block_type"):
        if isinstance(data.get(key), list) and len(data[key]) == layout.n_layers:
            data[key] = layout.keep(data[key])


def _bamba(data: dict, layout: Layout, config) -> None:
    _plain(data, layout, config)
    attn = set(config.attn_layer_indices or [])
    new = layout.new_index
    data["attn_layer_indices"] = [new[old] for old in sorted(attn) if old in new] or None


def _nemotron_h(data: dict, layout: Layout, config) -> None:
    data["layers_block_type"] = layout.keep(list(config.layers_block_type))
    data.pop("hybrid_override_pattern", None)
    data.pop("num_hidden_layers", None)


def _zamba2(data: dict, layout: Layout, config) -> None:
    types = layout.keep(list(config.layers_block_type))
    data["layers_block_type"] = types
    data["hybrid_layer_ids"] = [i for i, t in enumerate(types) if t == "hybrid"]
    data["num_hidden_layers"] = len(types)
    blocks = config.num_mem_blocks
    old_slots = _zamba2_slot_map(config, layout)
    moved = [(old, new) for old, new in old_slots.items() if old % blocks != new % blocks]
    if moved:
        raise ShedderError(
            f"This Zamba2 model has {blocks} shared transformer blocks, assigned to its hybrid layers in turn; "
            "removing these blocks would give the remaining hybrid layers other shared blocks than they use now. "
            f"Remove hybrid layers in runs of {blocks} (or none) to extract, or keep using masks."
        )


def _zamba2_slot_map(config, layout: Layout) -> dict[int, int]:
    """Old hybrid-layer number -> new one, for hybrid layers that are kept."""
    hybrid = [i for i, t in enumerate(config.layers_block_type) if t == "hybrid"]
    kept = set(layout.kept)
    survivors = [k for k, layer in enumerate(hybrid) if layer in kept]
    return {old: new for new, old in enumerate(survivors)}


def _periodic(flags: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with ``flags[i] == (i % period == offset)``, or None."""
    n = len(flags)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(flag == (i % period == offset) for i, flag in enumerate(flags)):
                return period, offset
    return None


def _jamba(data: dict, layout: Layout, config) -> None:
    data["num_hidden_layers"] = len(layout.kept)
    attn = [t == "attention" for t in layout.keep(list(config.layers_block_type))]
    experts = [n > 1 for n in layout.keep(list(config.layers_num_experts))]
    for name, flags in (("attn", attn), ("expert", experts)):
        fit = _periodic(flags)
        if fit is None:
            where = [i for i, flag in enumerate(flags) if flag]
            raise ShedderError(
                f"After this removal the Jamba {name} layers would sit at {where}, which Jamba's config cannot "
                f"describe ({name}_layer_period/{name}_layer_offset only place them periodically, and it accepts "
                "no per-layer list). Choose blocks whose removal keeps the pattern periodic, or keep using masks."
            )
        data[f"{name}_layer_period"], data[f"{name}_layer_offset"] = fit


CONFIG_EDITS: dict[str, ConfigEdit] = {
    "mamba": _plain,
    "falcon_mamba": _plain,
    "mamba2": _plain,
    "llama": _plain,
    "falcon_h1": _plain,
    "granitemoehybrid": _plain,
    "bamba": _bamba,
    "nemotron_h": _nemotron_h,
    "zamba2": _zamba2,
    "jamba": _jamba,
}


def smaller_config(config, layout: Layout):
    """A config of the same class describing only the kept layers (re-validated by the class)."""
    model_type = config.model_type
    if model_type not in CONFIG_EDITS:
        raise ShedderError(f"Extraction is not implemented for {model_type!r} yet; masks still work for it.")
    data = copy.deepcopy(config.to_dict())
    CONFIG_EDITS[model_type](data, layout, config)
    new = type(config).from_dict(data)
    if new.num_hidden_layers != len(layout.kept):
        raise RuntimeError(f"{model_type}: the new config has {new.num_hidden_layers} layers, "
                           f"expected {len(layout.kept)}.")
    return new


# --- weights ------------------------------------------------------------------------------------

def _renamer(model_type: str, config, layout: Layout) -> Callable[[str], str | None]:
    """Maps a source state-dict key to its key in the smaller model, or None to drop it."""
    new_layer = layout.new_index
    slots = _zamba2_slot_map(config, layout) if model_type == "zamba2" else None

    def rename(key: str) -> str | None:
        match = _LAYER_KEY.search(key)
        if match is None:
            return key
        old = int(match.group(2))
        if old not in new_layer:
            return None
        key = f"{key[:match.start(2)]}{new_layer[old]}{key[match.end(2):]}"
        if slots is not None:
            slot = _ADAPTER_SLOT.search(key)
            if slot is not None:
                k = int(slot.group(2))
                if k not in slots:
                    return None
                key = f"{key[:slot.start(2)]}{slots[k]}{key[slot.end(2):]}"
        return key

    return rename


def smaller_state_dict(model: nn.Module, rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        new_key = rename(key)
        if new_key is not None:
            out[new_key] = tensor
    return out


def build_smaller(model: nn.Module, layout: Layout) -> nn.Module:
    """A new model from the smaller config holding the kept weights, in the source dtype, on the CPU."""
    from transformers import AutoModelForCausalLM

    config = model.config
    new_config = smaller_config(config, layout)
    dtype = next(model.parameters()).dtype
    small = AutoModelForCausalLM.from_config(new_config, dtype=dtype)
    weights = smaller_state_dict(model, _renamer(config.model_type, config, layout))
    expected = set(small.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise RuntimeError(f"Extraction of {config.model_type} does not map the weights one to one: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}.")
    with torch.no_grad():
        small.load_state_dict(weights, strict=True)
    return small.eval()


# --- checks and writing -------------------------------------------------------------------------

def _check_attention_kept(model: nn.Module, kept: tuple[int, ...]) -> None:
    """Stock transformers cannot run a hybrid left without attention layers with a cache (``generate``)."""
    _, layers = describe_model(model)
    with_attn = [p.index for p in layers if p.attn is not None]
    if with_attn and not set(with_attn) & set(kept):
        raise ShedderError(
            f"The plan removes every attention layer ({', '.join(map(str, with_attn))}) of this "
            f"{model.config.model_type} model; transformers cannot run such a hybrid with a cache (generate "
            "fails), so it is not extracted. Keep at least one attention layer, or keep using masks."
        )


def _check_plan(model: nn.Module, plan: Plan) -> Layout:
    plan.check(model)
    other = sorted({c.kind for c in plan.removed if c.kind not in EXTRACTABLE_KINDS})
    if other:
        raise ShedderError(
            f"Extraction of {', '.join(other)} removals is not implemented yet; only block removals can be "
            "extracted. Masks still apply this plan (e.g. ppl/eval with --plan)."
        )
    n_layers = model.config.num_hidden_layers
    removed = {c.layer for c in plan.removed}
    kept = tuple(i for i in range(n_layers) if i not in removed)
    if not kept:
        raise ShedderError("The plan removes every layer; keep at least one block to extract a model.")
    _check_attention_kept(model, kept)
    return Layout(n_layers, kept)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ShedderError(f"{out_dir} already exists and is not an empty folder; choose a new output folder.")


def model_card(model_type: str, layout: Layout, before: int, after: int) -> str:
    removed = sorted(set(range(layout.n_layers)) - set(layout.kept))
    return (
        f"# Pruned {model_type} model\n\n"
        "Blocks removed with shedder (training-free structured pruning after Mamba-Shedder) and physically "
        "dropped; this folder loads with plain `transformers.AutoModelForCausalLM.from_pretrained`.\n\n"
        f"- source model type: `{model_type}`\n"
        f"- removed blocks (source layer numbers): {', '.join(map(str, removed)) or 'none'}\n"
        f"- layers: {layout.n_layers} -> {len(layout.kept)}\n"
        f"- parameters: {before:,} -> {after:,} ({1 - after / before:.1%} fewer)\n\n"
        "The pruning plan is in `plan.json`.\n"
    )


def _write(small: nn.Module, tokenizer, plan: Plan, card: str, directory: Path) -> None:
    small.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    plan.save(directory / "plan.json")
    (directory / "README.md").write_text(card, encoding="utf-8")


def extract(model: nn.Module, tokenizer, plan: Plan, out_dir: str | Path) -> ExtractResult:
    """Write ``model`` without the plan's removed blocks to ``out_dir`` (which must be new or empty)."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    layout = _check_plan(model, plan)
    plan = replace(plan, model_type=plan.model_type or model.config.model_type,
                   n_layers=layout.n_layers if plan.n_layers is None else plan.n_layers)
    small = build_smaller(model, layout)
    before, after = count_params(model), count_params(small)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        _write(small, tokenizer, plan, model_card(model.config.model_type, layout, before, after), staging)
        _check_out_dir(out_dir)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Extracted %s: %d -> %d layers, %d -> %d parameters, written to %s", model.config.model_type,
             layout.n_layers, len(layout.kept), before, after, out_dir)
    return ExtractResult(out_dir, before, after, list(plan.removed))
