"""Physical extraction: a smaller model that computes what the masked model computes, and loads
without shedder.

- ``build_extracted(model, plan) -> nn.Module`` builds the smaller model in memory (on the CPU, in
  the source dtype) without writing anything; e.g. to time it.
- ``extract(model, tokenizer, plan, out_dir) -> ExtractResult`` writes it, with the tokenizer, the
  plan (``plan.json``) and a model card (``README.md``), to a new or empty folder. It writes to a
  temporary sibling folder and renames it at the end, so a failure leaves nothing half-written.

What is physically removed, per kind (the function stays the masked model's, see ``shedder.removal.masks``):

- ``block``: the layer is dropped and the config rewritten (``shedder.extraction.extract_layers``). So is a
  layer without a Mamba mixer that loses all its sub-blocks (NemotronH attention / MLP layers), and a
  Zamba2 hybrid layer that loses its shared-transformer call (``attn``) becomes a Mamba layer.
- ``ssm``: everything only the scan used: ``A_log``, ``D``, ``dt_bias`` / ``dt_proj``, ``x_proj``,
  the B/C/dt rows of ``in_proj`` and the B/C channels of ``conv1d``.
- ``attn`` / ``mlp``: the sub-block and its own pre-norm.
- ``attn_heads``: the heads' rows of ``q_proj`` and columns of ``o_proj``, and key/value heads left
  without query heads. Where the kept heads split unevenly over the key/value heads, each group keeps
  as many query heads as the fullest (removed heads fill the gaps, silenced), so the key/value cache
  never grows.
- ``mlp_channels``: the channels' rows of the gate/up projections and columns of the down projection.
- ``ssm_heads``: where a gated RMSNorm precedes ``out_proj`` (most Mamba-2 mixers), only the heads'
  columns of ``out_proj``: the norm normalises over all heads of its group, so the removed heads'
  activations are still needed. Without it (Falcon-H1's default) the whole heads: their z/x/dt rows
  of ``in_proj``, ``conv1d`` channels, ``A_log``/``D``/``dt_bias`` and ``out_proj`` columns.

Results that the stock config can describe (block removals, NemotronH sub-block layers, Zamba2
hybrid layers turned into Mamba layers, every dense MLP narrowed to one width) are written as stock
checkpoints and load with ``AutoModelForCausalLM.from_pretrained(out_dir)``. Others are written with
their family's model file plus ``pruned_layers.py`` (from ``shedder.extraction.pruned_modeling``) and a
``pruned_layout`` in the config, and load with ``from_pretrained(out_dir, trust_remote_code=True)``,
without shedder.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from ..errors import ShedderError
from ..families import family_for, layers_of
from ..folder_lock import output_lock
from ..kinds import Grouping
from ..model.identity import model_fingerprint, rounded_fingerprints
from ..paths import UMASK
from ..plan import Plan
from ..removal.catalogue import Component, catalogue_of
from .extract_layers import Layers, build_smaller
from .extract_ops import plan_layers, plan_ops, uniform_mlp_width
from .pruned_modeling import AUTO_MAP, FILES as MODEL_FILES, WEIGHTS_VARIANT, model_file_text
from .pruned_modeling.pruned_layers import apply_op

log = logging.getLogger(__name__)

@dataclass
class ExtractResult:
    out_dir: Path
    params_before: int
    params_after: int
    removed: list[Component] = field(default_factory=list)
    needs_remote_code: bool = False  # True: load with trust_remote_code=True (a pruned layout)


@dataclass
class Extraction:
    """A smaller model in memory, and how it was made."""

    model: nn.Module
    layers: Layers
    ops: dict[int, list[dict]]  # per layer of ``model``: the pruning operations applied to it
    config_changes: dict = field(default_factory=dict)  # stock config fields that describe the ops instead

    @property
    def stock(self) -> bool:
        return not self.ops or bool(self.config_changes)


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def _check_plan(model: nn.Module, plan: Plan) -> None:
    plan.check(model)
    if not plan.fits_weights(model):
        log.warning("The plan was made for a model with other weights (fingerprint differs); extracting anyway.")


def extraction(model: nn.Module, plan: Plan) -> Extraction:
    """Check ``plan`` against ``model`` and build the smaller model in memory."""
    _check_plan(model, plan)
    removed = list(plan.removed)
    layers = plan_layers(model, removed)
    small = build_smaller(model, layers)
    grouping = Grouping(catalogue_of(model, plan.channel_group_size).channel_group_size, plan.channel_reorder)
    ops = plan_ops(small, layers, removed, grouping)
    changes = uniform_mlp_width(small, ops)
    family = family_for(model.config.model_type)
    if ops and not changes and not family.pruned_layout:
        raise ShedderError(f"Extracting a {family.name} model writes whole-block removals and one MLP width for "
                           "every layer only; this plan also removes parts inside kept layers. Keep using masks for "
                           "them, or remove whole blocks.")
    decoder = layers_of(small)
    for index, layer_ops in ops.items():
        for op in layer_ops:
            apply_op(decoder[index], op)
    for key, value in changes.items():
        setattr(small.config, key, value)
    return Extraction(small.eval(), layers, ops, changes)


def build_extracted(model: nn.Module, plan: Plan) -> nn.Module:
    """The smaller model ``extract`` would write, in memory (CPU, source dtype); ``model`` is not changed."""
    return extraction(model, plan).model


# --- writing ------------------------------------------------------------------------------------

def saved_layout(ops: dict[int, list[dict]]) -> dict:
    """The layout as stored in the config: channel lists become widths (the weights are sliced already)."""
    layers = {}
    for index, layer_ops in ops.items():
        saved = []
        for op in layer_ops:
            if op["op"] == "mlp_channels":
                op = {**{k: v for k, v in op.items() if k != "kept"}, "width": len(op["kept"])}
            saved.append(op)
        layers[str(index)] = saved
    return {"format": "shedder-pruned-layout", "version": 1, "layers": layers}


def write_model_code(directory: Path, model_type: str, model_class: str, ops: dict[int, list[dict]]) -> None:
    """Copy the model files in and point the config at them (the layout; the family's model type stays, so that
    the tokenizer and config load without the code)."""
    for name in MODEL_FILES:
        (directory / name).write_text(model_file_text(name, model_type), encoding="utf-8")
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(model_type=model_type, architectures=[f"ShedderPruned{model_class}"], auto_map=AUTO_MAP,
                  pruned_layout=saved_layout(ops))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_OP_WORDS = {"remove_ssm": "SSM removed", "ssm_heads": "SSM heads kept", "attn_heads": "attention heads kept",
             "mlp_channels": "MLP channels kept", "zero_attention": "attention removed", "zero": "MLP removed"}


def _op_summary(op: dict) -> str | None:
    word = _OP_WORDS.get(op["op"])
    if word is None:
        return None
    if "kept" in op:
        return f"{word}: {len(op['kept'])} (`{op['module']}`)"
    return f"{word} (`{op['module']}`)"


def model_card(model_type: str, done: Extraction, plan: Plan, before: int, after: int) -> str:
    kinds: dict[str, int] = {}
    for c in plan.removed:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    if done.stock and getattr(done.model.config, "auto_map", None):
        how = ("This folder loads as its source model does, with its own model code: "
               "`transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`; the config "
               "describes it" + "".join(f"; `{key}` is now {value} in every layer"
                                         for key, value in done.config_changes.items()) + ".")
    elif done.stock:
        how = ("This folder loads with plain `transformers.AutoModelForCausalLM.from_pretrained(folder)`: the "
               "stock config describes it"
               + "".join(f"; `{key}` is now {value} in every layer" for key, value in done.config_changes.items())
               + ".")
    else:
        how = ("Some layers are smaller than the stock config can describe, so this folder carries its model code "
               "(`modeling_shedder_pruned.py`, `pruned_layers.py`; torch and transformers only, shedder is not "
               "needed) and the per-layer layout (`pruned_layout` in `config.json`). Load it with\n\n"
               "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
               "model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)\n"
               "tokenizer = AutoTokenizer.from_pretrained(folder)  # no code needed\n```\n\n"
               "The weights are the `pruned` variant (`model.pruned.safetensors`): without `trust_remote_code` the "
               "stock model, which they do not fit, finds no weights and stops.")
    lines = [
        f"# Pruned {model_type} model",
        "",
        "Components removed with shedder (training-free structured pruning after Mamba-Shedder) and physically "
        "dropped; the model computes what the masked model computes.",
        "",
        how,
        "",
        f"- source model type: `{model_type}`",
        f"- removed components: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'}",
        f"- layers: {done.layers.n_layers} -> {len(done.layers.kept)}"
        + (f" (source layers removed: {', '.join(map(str, done.layers.removed))})" if done.layers.removed else ""),
        f"- parameters: {before:,} -> {after:,} ({1 - after / before:.1%} fewer)",
    ]
    if done.layers.to_mamba:
        lines.append(f"- Zamba2 hybrid layers now plain Mamba layers (source numbers): "
                     f"{', '.join(map(str, sorted(done.layers.to_mamba)))}")
    if done.ops:
        lines += ["", "Per layer (numbers of this model):", ""]
        for index, ops in sorted(done.ops.items()):
            words = [w for w in map(_op_summary, ops) if w]
            lines.append(f"- layer {index}: {'; '.join(words)}")
    if "ssm_heads" in kinds:
        lines += ["", "Where a gated RMSNorm precedes `out_proj`, removed SSM heads free only their `out_proj` "
                  "columns: the norm normalises over all heads of its group, so the removed heads still run to keep "
                  "the function."]
    lines += ["", "The pruning plan is in `plan.json`.", ""]
    return "\n".join(lines)


def _write(done: Extraction, tokenizer, plan: Plan, card: str, directory: Path) -> None:
    model_type = plan.model_type
    # a pruned layout is loaded by custom code, which gets none of the family's checkpoint-format conversions
    done.model.save_pretrained(directory, safe_serialization=True, save_original_format=done.stock,
                               variant=None if done.stock else WEIGHTS_VARIANT)
    if not done.stock:
        write_model_code(directory, model_type, type(done.model).__name__, done.ops)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    plan.save(directory / "plan.json")
    (directory / "README.md").write_text(card, encoding="utf-8")


PARTIAL = ".partial"


def _remove_left_behind(out_dir: Path) -> None:
    """Staging folders of earlier extractions into ``out_dir`` that were killed before they could clean up
    (the caller holds the folder's lock, so none of them is still being written)."""
    for folder in out_dir.parent.glob(f".{out_dir.name}.*{PARTIAL}"):
        log.info("Removing %s, left behind by an interrupted extraction.", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ShedderError(f"{out_dir} already exists and is not an empty folder; choose a new output folder.")


def extract(model: nn.Module, tokenizer, plan: Plan, out_dir: str | Path,
            allow_other_weights: bool = False) -> ExtractResult:
    """Write ``model`` without the plan's removed components to ``out_dir`` (which must be new or empty).

    A plan made for other weights of the same architecture is refused unless ``allow_other_weights`` (a
    plan searched on a base model, applied to its fine-tune); the written ``plan.json`` always names the
    weights extracted here, and such a plan's own model under ``made_for``."""
    from ..paths import check_output_dir

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    check_output_dir(out_dir)
    plan.check(model, strict_weights=not allow_other_weights)
    done = extraction(model, plan)
    n_layers = done.layers.n_layers
    made_for = {"made_for": {"model_type": plan.model_type, "n_layers": plan.n_layers,
                             "fingerprint": plan.fingerprint}} if not plan.fits_weights(model) else {}
    plan = replace(plan, model_type=plan.model_type or model.config.model_type,
                   n_layers=n_layers if plan.n_layers is None else plan.n_layers, fingerprint=model_fingerprint(model),
                   rounded_fingerprints=rounded_fingerprints(model), extra={**plan.extra, **made_for})
    before, after = count_params(model), count_params(done.model)
    card = model_card(model.config.model_type, done, plan, before, after)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir, "extraction"):
        _remove_left_behind(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=PARTIAL, dir=out_dir.parent))
        try:
            try:
                _write(done, tokenizer, plan, card, staging)
            except OSError as exc:
                reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
                raise ShedderError(f"Could not write the extracted model next to {out_dir}: {reason}. Nothing "
                                   "was written; free some space or choose another folder.") from exc
            _check_out_dir(out_dir)
            if out_dir.exists():
                out_dir.rmdir()
            staging.chmod(0o777 & ~UMASK)  # mkdtemp's folder is private; the model is an ordinary folder
            staging.rename(out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("Extracted %s: %d -> %d layers, %d -> %d parameters, written to %s", model.config.model_type,
             n_layers, len(done.layers.kept), before, after, out_dir)
    ships_code = bool(getattr(done.model.config, "auto_map", None))
    return ExtractResult(out_dir, before, after, list(plan.removed), needs_remote_code=not done.stock or ships_code)
