"""shedder: training-free structured pruning of Mamba, Mamba-2 and hybrid language models."""
from .catalogue import Catalogue, Component, build_catalogue
from .errors import ShedderError
from .masks import masked

__all__ = ["Catalogue", "Component", "ShedderError", "build_catalogue", "masked"]
