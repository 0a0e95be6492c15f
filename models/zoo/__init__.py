"""The model zoo: the paper's workloads and the cascade's trained pair, built offline in four formats.

This package owns the zoo's public API. Reading what is built needs only the base install:
:func:`path`, :func:`metadata`, :func:`split_points`, :func:`built`, :data:`MODELS`,
:data:`FORMATS`. Building
needs the ``zoo`` extra (``pip install -e '.[zoo]'``) and is imported lazily: :func:`build`
(also ``python -m models build``), :func:`build_split` (a model's head and tail at a split
point) and :func:`load_model` (the PyTorch model every format of a model was exported from).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.zoo.catalog import (
    FORMATS,
    MODELS,
    BuildDependencyMissing,
    BuiltFile,
    ModelNotBuilt,
    ModelSpec,
    UnknownFormat,
    UnknownModel,
    ZooError,
    built,
    cache_dir,
    file_path,
    metadata,
    path,
    resolve,
    split_points,
)

if TYPE_CHECKING:
    from models.zoo.builder import BuildResult, SplitFiles

__all__ = [
    "FORMATS",
    "MODELS",
    "BuildDependencyMissing",
    "BuiltFile",
    "ModelNotBuilt",
    "ModelSpec",
    "UnknownFormat",
    "UnknownModel",
    "ZooError",
    "build",
    "build_split",
    "built",
    "cache_dir",
    "file_path",
    "load_model",
    "metadata",
    "path",
    "resolve",
    "split_points",
]


def _builder() -> Any:
    try:
        from models.zoo import builder
    except ImportError as exc:  # torch and friends are build-only
        raise BuildDependencyMissing(
            f"building models needs the zoo extra ({exc}); install it with: pip install -e '.[zoo]'"
        ) from exc
    return builder


def build(*args: Any, **kwargs: Any) -> list[BuildResult]:
    """Build models; see :func:`models.zoo.builder.build`."""
    results: list[BuildResult] = _builder().build(*args, **kwargs)
    return results


def build_split(name: str, index: int, fmt: str, **kwargs: Any) -> SplitFiles:
    """A model's head and tail at split point ``index``; see :func:`models.zoo.builder.build_split`."""
    split: SplitFiles = _builder().build_split(name, index, fmt, **kwargs)
    return split


def load_model(name: str) -> Any:
    """The PyTorch model behind every format of ``name``; see :func:`models.zoo.builder.load_model`."""
    return _builder().load_model(name)
