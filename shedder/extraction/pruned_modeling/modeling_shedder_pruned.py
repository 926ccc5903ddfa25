"""A model pruned with shedder: its family's stock transformers model, with some layers' modules
replaced by smaller ones (see ``pruned_layers.py``) as ``config.pruned_layout`` lists.

Load it with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``; it needs
torch and transformers only. ``config.json`` names the family's own model type, so that tools which only
read the config (``AutoTokenizer``, ``AutoConfig``) need no code from the folder; the weights are the
``pruned`` variant (``model.pruned.safetensors``), so that the stock model, which would not fit them,
finds no weights to load instead of loading them wrongly.
"""
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .pruned_layers import apply_layout

BASE_MODEL_TYPE = "mamba2"  # the family the model was pruned from (set by shedder extract)
WEIGHTS_VARIANT = "pruned"  # the weights are model.pruned.safetensors

_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]
_BaseModel = MODEL_FOR_CAUSAL_LM_MAPPING[_BaseConfig]


class ShedderPrunedConfig(_BaseConfig):
    """The family's config plus ``pruned_layout``; its own model type so that loading without this
    file fails loudly instead of building the unpruned architecture."""

    model_type = f"shedder_pruned_{BASE_MODEL_TYPE}"

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        config_dict["model_type"] = cls.model_type  # the file names the family; this class is the pruned one
        return config_dict, kwargs

    def to_dict(self):
        output = super().to_dict()
        output["model_type"] = BASE_MODEL_TYPE
        return output


class ShedderPrunedForCausalLM(_BaseModel):
    config_class = ShedderPrunedConfig

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        kwargs.setdefault("variant", WEIGHTS_VARIANT)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        kwargs.setdefault("variant", WEIGHTS_VARIANT)
        return super().save_pretrained(*args, **kwargs)

    @classmethod
    def is_custom_code(cls) -> bool:
        # Every module is the family's own or a slice of one, so let transformers load and initialise it as
        # the stock model (e.g. it refills Falcon-H1's non-persistent mup_vector buffers only for stock code).
        return False

    def post_init(self):
        # the stock modules are built (empty) by now; swap in the pruned ones before weights are loaded
        apply_layout(self, getattr(self.config, "pruned_layout", None))
        super().post_init()


# generate() reads some behaviour off the class name (Mamba models pass their cache as ``cache_params``), so
# the class carries its family's name; save_pretrained records that name in auto_map, so it is exported too.
ShedderPrunedForCausalLM.__name__ = ShedderPrunedForCausalLM.__qualname__ = f"ShedderPruned{_BaseModel.__name__}"
globals()[ShedderPrunedForCausalLM.__name__] = ShedderPrunedForCausalLM
