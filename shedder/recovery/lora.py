"""LoRA adapters through peft: which projections get them, per family, and merging them back.

Default targets are the linear projections of every Mamba mixer (``in_proj``, ``out_proj``), of
attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) and of dense MLPs (``gate_proj``,
``up_proj``, ``down_proj``; Zamba2's ``gate_up_proj``, Granite's ``input_linear``/``output_linear``)
that the model has. MoE experts keep fused 3-D weights, not linear modules, so LoRA leaves them alone.

A projection whose weight is shared with another module (Zamba2's shared transformer block, used by
several hybrid layers; tied embeddings) gets no adapter: each use would train its own adapter, and
merging them all into the one shared weight would change what every other use computes.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from torch import nn

from ..errors import ShedderError
from ..families import PRUNED_PREFIX, family_for

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # short names (e.g. in_proj); None: the family's defaults


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that more than one module holds (tied or shared)."""
    holders = Counter(id(p) for module in model.modules() for p in module.parameters(recurse=False))
    return {pid for pid, n in holders.items() if n > 1}


def family(model: nn.Module) -> str:
    """The model's family; an extracted pruned layout (``shedder_pruned_<family>``) counts as its family."""
    return model.config.model_type.removeprefix(PRUNED_PREFIX)


def target_module_names(model: nn.Module, names: tuple[str, ...] | None = None) -> list[str]:
    """Full names of the linear modules that get adapters (see the module docstring)."""
    # plain nn.Linear only: a pruned layout's column-selecting projections read a wider input than
    # their weight, which an adapter built from the weight's shape would not fit
    linear = {name: module for name, module in model.named_modules() if type(module) is nn.Linear}
    short_names = {name.rsplit(".", 1)[-1] for name in linear}
    wanted = names if names else family_for(model.config.model_type).lora_targets
    if names:
        unknown = sorted(set(names) - short_names)
        if unknown:
            raise ShedderError(f"No linear module is called {', '.join(unknown)} in this "
                               f"{family(model)} model; its linear modules are: {', '.join(sorted(short_names))}.")
    shared = _shared_weights(model)
    chosen, left_out = [], []
    for name, module in linear.items():
        if name.rsplit(".", 1)[-1] not in wanted:
            continue
        (left_out if id(module.weight) in shared else chosen).append(name)
    if left_out:
        log.info("LoRA leaves out %d projections whose weights are shared (e.g. %s)", len(left_out), left_out[0])
    if not chosen:
        raise ShedderError(f"None of the target modules ({', '.join(wanted)}) of this {family(model)} "
                           "model can take a LoRA adapter (shared weights get none); choose others with "
                           "--target-modules, or use --method full.")
    return chosen


def _lora_model_class():
    from peft import LoraModel

    class MixerAwareLoraModel(LoraModel):
        """peft's LoRA tuner, allowed to put adapters on a Mamba mixer's ``out_proj``.

        peft refuses ``out_proj`` for Mamba models because the fused training kernel reads that
        weight directly and would bypass the adapter. Here the mixers are kept off that path
        (:func:`keep_mixers_off_fused_training_path`), and the first training step checks that
        every adapter received a gradient.
        """

        def _check_target_module_compatiblity(self, peft_config, model, target_name):
            return None

    return MixerAwareLoraModel


def add_lora(model: nn.Module, settings: LoraSettings):
    """peft's LoRA tuner around ``model`` with fresh adapters (random A, zero B: outputs unchanged at
    first); only the adapters are trainable. ``.model`` is the model itself, with adapters inside."""
    from peft import LoraConfig

    if settings.rank < 1:
        raise ShedderError("--rank must be at least 1.")
    targets = target_module_names(model, settings.target_modules)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    wrapped = _lora_model_class()(model, config, "default")
    log.info("LoRA r=%d alpha=%g on %d projections", settings.rank, settings.alpha, len(targets))
    return wrapped


def _narrowed(mixer: nn.Module) -> bool:
    """A mixer whose ``out_proj`` reads only some heads of its gated norm (a pruned layout's ``ssm_heads``)."""
    width = getattr(getattr(mixer, "out_proj", None), "in_features", None)
    return isinstance(width, int) and width != getattr(mixer, "intermediate_size", width)


def keep_mixers_off_fused_training_path(model: nn.Module, hooked: Collection[nn.Module] = ()) -> None:
    """Keep Mamba mixers that a fused training kernel would get wrong on their unfused path (CUDA kernels
    installed).

    In training mode, transformers' Mamba mixers (the modules with an ``A_log``) hand
    ``out_proj.weight`` (Mamba-1 also ``x_proj``/``dt_proj``) and the gated norm's weight straight to a
    fused mamba-ssm kernel. That would bypass a LoRA adapter or a forward hook (``hooked``) on those
    projections, and it cannot run a pruned layout's narrowed ``out_proj`` behind the full-width norm.
    Those mixers' own ``training`` flag is cleared (not their children's, so LoRA dropout stays on) and
    they take their unfused path, which is differentiable too. Mixers have no dropout of their own, so
    nothing else changes.
    """
    from peft.tuners.lora import LoraLayer

    hooked_ids = {id(module) for module in hooked}
    for module in model.modules():
        if hasattr(module, "A_log") and (_narrowed(module) or any(
                isinstance(m, LoraLayer) or id(m) in hooked_ids for m in module.modules())):
            module.training = False


def merge_lora(wrapped) -> nn.Module:
    """The base model with the adapters merged into its weights (plain modules again)."""
    return wrapped.merge_and_unload()
