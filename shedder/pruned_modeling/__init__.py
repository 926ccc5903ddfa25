"""Model code written next to the weights of a pruned model so that it loads without shedder.

``pruned_layers`` holds the smaller modules and the layout format; ``modeling_shedder_pruned`` is the
template of the model file (its ``BASE_MODEL_TYPE`` line is set to the family when it is written).
"""
from pathlib import Path

FILES = ("modeling_shedder_pruned.py", "pruned_layers.py")
HERE = Path(__file__).resolve().parent
