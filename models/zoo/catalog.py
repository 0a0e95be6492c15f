"""What the zoo holds and where its files live: model names, formats, cache paths, metadata, errors.

This module owns the zoo's catalogue (every model it can build, with its task, input and outputs)
and the layout of the cache folder, and reads what the builder wrote there. It imports neither
torch nor any runtime, so the daemon, the experiments and the split-processing code can call
:func:`path`, :func:`metadata` and :func:`split_points` with only the base install. Built files
live under ``$TENANTD_MODELS_DIR`` (default ``.cache/models`` in the repository, which git
ignores): ``<dir>/<model>/<model>.onnx``, ``.xml`` + ``.bin`` (OpenVINO IR), ``.tflite`` (float32),
``_int8.tflite`` (full-integer int8), and beside each a ``<format>.json`` metadata file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "built",
    "cache_dir",
    "metadata",
    "model_dir",
    "path",
    "resolve",
    "split_points",
]

FORMATS: tuple[str, ...] = ("onnx", "openvino", "tflite", "tflite_int8")
_SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite", "tflite_int8": "_int8.tflite"}
ENV_DIR = "TENANTD_MODELS_DIR"
INSTALL_HINT = "pip install -e '.[zoo]'"


class ZooError(Exception):
    """Base class of the zoo's errors."""


class UnknownModel(ZooError, KeyError):
    """A model name the zoo does not know; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownFormat(ZooError, ValueError):
    """A format name the zoo does not know or a model does not come in."""


class ModelNotBuilt(ZooError, FileNotFoundError):
    """The file or its metadata is not in the cache; the message gives the command that builds it."""


class BuildDependencyMissing(ZooError, ImportError):
    """A build-only package (torch, onnx, openvino, ...) is missing; the message says how to install it."""


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model: what it is for and how it is fed.

    ``input_shape`` is PyTorch's (NCHW); the TFLite files take the NHWC equivalent.
    ``input_range`` bounds the synthetic representative inputs of untrained models.
    ``formats`` are those it is built in; ``kind`` says where its weights come from:
    ``untrained`` (published architecture, initialised here), ``trained`` (trained here) or
    ``copied`` (a trained file copied from an installed wheel).
    """

    name: str
    task: str
    kind: str
    summary: str
    input_shape: tuple[int, ...] = ()
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits",)
    input_range: tuple[float, float] = (-1.0, 1.0)
    formats: tuple[str, ...] = FORMATS
    split: bool = False
    source: str = ""


_IMAGE = "image-classification"
_DETECT = "object-detection"
_KWS = "keyword-spotting"
_SSD_OUT = ("boxes", "scores")
_WAKEWORDS = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "mobilenet_v2", _IMAGE, "untrained", "MobileNetV2 1.0, 224x224x3, 1000 classes (logits)",
            (1, 3, 224, 224), split=True, source="Sandler et al. 2018; torchvision mobilenet_v2 definition",
        ),
        ModelSpec(
            "inception_v4", _IMAGE, "untrained", "Inception V4, 299x299x3, 1000 classes (logits)",
            (1, 3, 299, 299), split=True, source="Szegedy et al. 2016; timm inception_v4 definition",
        ),
        ModelSpec(
            "ssd_mobilenet_v1", _DETECT, "untrained",
            "SSD-MobileNetV1, 300x300x3, 1917 anchors x 91 classes (raw boxes and scores)",
            (1, 3, 300, 300), output_names=_SSD_OUT, split=True,
            source="Liu et al. 2016; TF object-detection API ssd_mobilenet_v1_coco",
        ),
        ModelSpec(
            "ssd_mobilenet_v2", _DETECT, "untrained",
            "SSD-MobileNetV2, 300x300x3, 1917 anchors x 91 classes (raw boxes and scores)",
            (1, 3, 300, 300), output_names=_SSD_OUT, split=True,
            source="Liu et al. 2016; TF object-detection API ssd_mobilenet_v2_coco",
        ),
        ModelSpec(
            "cnn_trad_fpool3", _KWS, "untrained",
            "cnn-trad-fpool3 keyword spotting, 98x40 MFCC, 12 classes (softmax)",
            (1, 1, 98, 40), output_names=("probs",), input_range=(-3.0, 3.0), split=True,
            source="Sainath & Parada, Interspeech 2015, table 1",
        ),
        ModelSpec(
            "digits_compact", _IMAGE, "trained", "compact CNN on 8x8 digits (compression cascade, edge side)",
            (1, 1, 8, 8), input_range=(0.0, 1.0), split=True,
            source="trained here on scikit-learn load_digits (UCI optical digits)",
        ),
        ModelSpec(
            "digits_full", _IMAGE, "trained", "full CNN on 8x8 digits (compression cascade, cloud side)",
            (1, 1, 8, 8), input_range=(0.0, 1.0), split=True,
            source="trained here on scikit-learn load_digits (UCI optical digits)",
        ),
        *(
            ModelSpec(
                f"wakeword_{word}", _KWS, "copied", f"microWakeWord '{word}' streaming detector (int8, trained)",
                formats=("tflite_int8",), source="pymicro-wakeword wheel",
            )
            for word in _WAKEWORDS
        ),
    )
}  # fmt: skip


def resolve(name: str) -> ModelSpec:
    """The spec of ``name`` (hyphens and case are forgiven: ``cnn-trad-fpool3`` works)."""
    key = name.strip().lower().replace("-", "_")
    if key not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]


def _check_format(spec: ModelSpec, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UnknownFormat(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if fmt not in spec.formats:
        raise UnknownFormat(f"{spec.name} is built only as {', '.join(spec.formats)}, not {fmt}")


def cache_dir(root: str | Path | None = None) -> Path:
    """The cache folder: ``root``, else ``$TENANTD_MODELS_DIR``, else ``.cache/models`` in the repository."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "models"


def model_dir(name: str, root: str | Path | None = None) -> Path:
    return cache_dir(root) / resolve(name).name


def file_path(name: str, fmt: str, root: str | Path | None = None) -> Path:
    """Where ``name`` in ``fmt`` is (or will be) built, whether or not it exists yet."""
    spec = resolve(name)
    _check_format(spec, fmt)
    return model_dir(spec.name, root) / f"{spec.name}{_SUFFIX[fmt]}"


def metadata_path(name: str, fmt: str, root: str | Path | None = None) -> Path:
    spec = resolve(name)
    _check_format(spec, fmt)
    return model_dir(spec.name, root) / f"{fmt}.json"


def _not_built(name: str, fmt: str) -> ModelNotBuilt:
    return ModelNotBuilt(f"{name} ({fmt}) is not built; run: python -m models build {name} --formats {fmt}")


def path(name: str, fmt: str, root: str | Path | None = None) -> Path:
    """The built file of ``name`` in ``fmt``; raises :class:`ModelNotBuilt` if it is not there."""
    file = file_path(name, fmt, root)
    if not file.exists() or not metadata_path(name, fmt, root).exists():
        raise _not_built(resolve(name).name, fmt)
    return file


def metadata(name: str, fmt: str, root: str | Path | None = None) -> dict[str, Any]:
    """The metadata the builder wrote for ``name`` in ``fmt`` (see ``models/zoo/builder.py`` for the fields)."""
    meta = metadata_path(name, fmt, root)
    if not meta.exists():
        raise _not_built(resolve(name).name, fmt)
    data: dict[str, Any] = json.loads(meta.read_text())
    return data


def split_points(name: str, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Where ``name`` can be split: one entry per stage boundary, with the intermediate tensor's
    shape (NCHW; TFLite files hold it NHWC) and its bytes in float32 and int8. Read from the
    metadata of whichever format is built."""
    spec = resolve(name)
    if not spec.split:
        raise UnknownFormat(f"{spec.name} has no split points (it is a copied file)")
    for fmt in spec.formats:
        if metadata_path(spec.name, fmt, root).exists():
            points: list[dict[str, Any]] = metadata(spec.name, fmt, root)["split_points"]
            return points
    raise _not_built(spec.name, spec.formats[0])


@dataclass(frozen=True)
class BuiltFile:
    """One built (model, format) in the cache: ``path`` is the file a runtime loads."""

    name: str
    fmt: str
    path: Path


def built(root: str | Path | None = None) -> list[BuiltFile]:
    """Every (model, format) whose file and metadata are in the cache, in catalogue order."""
    return [
        BuiltFile(spec.name, fmt, file_path(spec.name, fmt, root))
        for spec in MODELS.values()
        for fmt in spec.formats
        if file_path(spec.name, fmt, root).exists() and metadata_path(spec.name, fmt, root).exists()
    ]
