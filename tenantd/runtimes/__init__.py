"""Runtime registry: runtimes by name, imported lazily.

The daemon names runtimes (``litert``) in its store and on the wire; this module maps those names
to the classes that implement them without importing any vendor package until a runtime is
actually used. Extra runtimes (third-party backends, or test doubles) can be registered with
:func:`register` or through the ``TENANTD_RUNTIMES`` environment variable
(``name=module:Class,name2=module2:Class2``), which also reaches the probe subprocess.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from tenantd.runtimes.base import LoadedModel, Runtime, RuntimeFailure, TensorSpec

__all__ = [
    "LoadedModel",
    "Runtime",
    "RuntimeFailure",
    "RuntimeNotAvailable",
    "TensorSpec",
    "available_runtimes",
    "get_runtime_class",
    "register",
    "runtime_for_file",
]

# name -> ("module:Class", pip package that provides the engine, file suffixes it loads)
_REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "litert": ("tenantd.runtimes.litert:LiteRTRuntime", "ai-edge-litert (or tflite-runtime)", (".tflite",)),
}


class RuntimeNotAvailable(Exception):
    """A runtime was named that is unknown or whose package is not installed."""


def register(name: str, target: str, package: str = "", suffixes: tuple[str, ...] = ()) -> None:
    """Register ``target`` ("module:Class") as runtime ``name``."""
    _REGISTRY[name] = (target, package or target.split(":")[0], suffixes)


def _register_from_env() -> None:
    spec = os.environ.get("TENANTD_RUNTIMES", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        if not name or ":" not in target:
            raise ValueError(f"TENANTD_RUNTIMES entry {item!r} is not name=module:Class")
        register(name, target)


_register_from_env()


def get_runtime_class(name: str) -> type[Runtime]:
    """Import and return the runtime class registered as ``name``."""
    try:
        target, package, _ = _REGISTRY[name]
    except KeyError:
        raise RuntimeNotAvailable(f"unknown runtime {name!r}; known runtimes: {', '.join(sorted(_REGISTRY))}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeNotAvailable(f"runtime {name!r} is not installed here ({exc}); install {package}") from exc
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise RuntimeNotAvailable(f"{target} is not a tenantd Runtime")
    return cls


def available_runtimes() -> list[str]:
    """Names of registered runtimes whose modules import on this host."""
    names = []
    for name in sorted(_REGISTRY):
        try:
            get_runtime_class(name)
        except RuntimeNotAvailable:
            continue
        names.append(name)
    return names


DEFAULT_RUNTIME = "litert"


def runtime_for_file(filename: str | None) -> str:
    """Pick a runtime for a submitted file from its suffix; LiteRT when the suffix says nothing.
    A file the chosen runtime cannot load is refused by the probe, so a wrong guess costs a
    clear INVALID_MODEL, never a crash."""
    if filename:
        suffix = Path(filename).suffix.lower()
        for name, (_, _, suffixes) in _REGISTRY.items():
            if suffix in suffixes:
                return name
    return DEFAULT_RUNTIME
