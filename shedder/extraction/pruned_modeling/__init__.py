"""Model code written next to the weights of a pruned model so that it loads without shedder.

``pruned_layers`` holds the smaller modules and the layout format; ``modeling_shedder_pruned`` is the
template of the model file (its ``BASE_MODEL_TYPE`` line is set to the family when it is written).
"""
import re
from pathlib import Path

FILES = ("modeling_shedder_pruned.py", "pruned_layers.py")
WEIGHTS_VARIANT = "pruned"  # a pruned layout's weights: model.pruned.safetensors (see the model file)
# what config.json's auto_map names for a pruned layout: the template's classes, nothing else
AUTO_MAP = {"AutoConfig": "modeling_shedder_pruned.ShedderPrunedConfig",
            "AutoModelForCausalLM": "modeling_shedder_pruned.ShedderPrunedForCausalLM"}
HERE = Path(__file__).resolve().parent


def model_file_text(name: str, base_model_type: str) -> str:
    """The text of model file ``name`` as written next to a model pruned from ``base_model_type``."""
    text = (HERE / name).read_text(encoding="utf-8")
    if name == "modeling_shedder_pruned.py":
        text = re.sub(r'^BASE_MODEL_TYPE = ".*?"', f'BASE_MODEL_TYPE = "{base_model_type}"', text, count=1, flags=re.M)
    return text
