"""Runtime registry: runtimes by name, imported lazily, and the rule that picks one for a model.

The daemon names runtimes (``litert``, ``openvino``, ``onnxruntime``, ``edgetpu``, ``tensorrt``) in
its store and on the wire; this module maps those names to the classes that implement them without
importing any vendor package until a runtime is actually used. Whether a runtime is installed is
answered from the package index of this interpreter (``importlib.util.find_spec``) and the shared
library search path, never by importing the vendor package, so ``status`` and ``tenantd devices``
stay cheap and a missing TensorRT never breaks import of the daemon. Extra runtimes (third-party
backends, or test doubles) can be registered with :func:`register` or through the
``TENANTD_RUNTIMES`` environment variable (``name=module:Class,name2=module2:Class2``), which also
reaches the probe subprocess. The package and its adapters are written at the Python 3.6 language
level: a device worker imports them under the device's own Python (README, "Device workers").
"""

import ctypes.util
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple, Type

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime, device_kind

__all__ = [
    "DeviceLost",
    "LoadedModel",
    "Runtime",
    "RuntimeFailure",
    "RuntimeNotAvailable",
    "available_runtimes",
    "device_kind",
    "get_runtime_class",
    "install_hint",
    "register",
    "registered_runtimes",
    "runtime_for_file",
    "runtime_installed",
    "runtime_requires",
    "runtime_target",
]


class _Entry(NamedTuple):
    target: str  # "module:Class"
    package: str  # what to install, in words an operator can act on
    suffixes: Tuple[str, ...]  # file suffixes it loads
    # What must be present for it to work: Python modules, or "lib:NAME" for a shared library
    # (found as ctypes.util.find_library does, e.g. "lib:edgetpu" -> libedgetpu.so.1).
    requires: Tuple[str, ...]


_REGISTRY: Dict[str, _Entry] = {
    "litert": _Entry(
        "tenantd.runtimes.litert:LiteRTRuntime",
        "ai-edge-litert (or tflite-runtime)",
        (".tflite",),
        ("ai_edge_litert|tflite_runtime",),
    ),
    "openvino": _Entry(
        "tenantd.runtimes.openvino:OpenVINORuntime",
        "openvino (pip install 'tenantd[openvino]'; an NCS2 needs OpenVINO <= 2022.3 from Intel's archive "
        "distribution: no PyPI wheel has the MYRIAD plugin)",
        (".ovir", ".xml", ".onnx", ".tflite"),
        ("openvino",),
    ),
    "onnxruntime": _Entry(
        "tenantd.runtimes.ort:ONNXRuntime",
        "onnxruntime (pip install 'tenantd[onnxruntime]'; onnxruntime-gpu for CUDA)",
        (".onnx",),
        ("onnxruntime",),
    ),
    "edgetpu": _Entry(
        "tenantd.runtimes.edgetpu:EdgeTPURuntime",
        "libedgetpu (apt install libedgetpu1-std from the Coral repository) with ai-edge-litert",
        (".tflite",),
        ("ai_edge_litert|tflite_runtime", "lib:edgetpu"),
    ),
    "tensorrt": _Entry(
        "tenantd.runtimes.tensorrt:TensorRTRuntime",
        "tensorrt and pycuda (JetPack ships TensorRT; pip install pycuda)",
        (".engine", ".plan", ".onnx"),
        ("tensorrt", "pycuda"),
    ),
}

# Which runtimes serve a file of a given type on a given kind of device, best first; the first one
# installed is chosen. A pair not listed falls back to the first registered runtime that loads the
# suffix, and a file without a suffix to LiteRT (a wrong guess costs a clear INVALID_MODEL).
_CHOICE: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("cpu", ".tflite"): ("litert", "openvino"),
    ("cpu", ".onnx"): ("onnxruntime", "openvino"),
    ("cpu", ".xml"): ("openvino",),
    ("cpu", ".ovir"): ("openvino",),
    ("edgetpu", ".tflite"): ("edgetpu",),
    ("cuda", ".engine"): ("tensorrt",),
    ("cuda", ".plan"): ("tensorrt",),
    ("cuda", ".onnx"): ("tensorrt", "onnxruntime"),
    **{
        (kind, suffix): ("openvino",)
        for kind in ("ncs2", "npu", "gpu")
        for suffix in (".tflite", ".onnx", ".xml", ".ovir")
    },
}


class RuntimeNotAvailable(Exception):
    """A runtime was named that is unknown, not installed, or not for this device."""


def register(
    name: str, target: str, package: str = "", suffixes: Tuple[str, ...] = (), requires: Tuple[str, ...] = ()
) -> None:
    """Register ``target`` ("module:Class") as runtime ``name``."""
    module = target.split(":")[0]
    _REGISTRY[name] = _Entry(target, package or module, suffixes, requires or (module,))


def _register_from_env() -> None:
    spec = os.environ.get("TENANTD_RUNTIMES", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        if not name or ":" not in target:
            raise ValueError(f"TENANTD_RUNTIMES entry {item!r} is not name=module:Class")
        register(name, target)


_register_from_env()


def _present(requirement: str) -> bool:
    """One requirement: "a|b" is met by either; "lib:NAME" is a shared library."""
    for option in requirement.split("|"):
        if option.startswith("lib:"):
            if ctypes.util.find_library(option[4:]) is not None:
                return True
            continue
        try:
            if importlib.util.find_spec(option) is not None:
                return True
        except (ImportError, ValueError):  # a parent package that fails to import
            continue
    return False


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RuntimeNotAvailable(f"unknown runtime {name!r}; known runtimes: {', '.join(sorted(_REGISTRY))}") from None


def runtime_installed(name: str) -> bool:
    """Whether what runtime ``name`` needs is installed here, without importing it."""
    return all(_present(r) for r in _entry(name).requires)


def install_hint(name: str) -> str:
    """What to install for runtime ``name``."""
    return _entry(name).package


def runtime_requires(name: str) -> Tuple[str, ...]:
    """What runtime ``name`` needs present (as ``_present`` checks it), for a device worker to check."""
    return _entry(name).requires


def registered_runtimes() -> List[str]:
    """Every registered runtime's name, installed here or not."""
    return sorted(_REGISTRY)


def runtime_target(name: str) -> str:
    """Where runtime ``name`` is implemented ("module:Class"), for a device worker to import."""
    return _entry(name).target


def get_runtime_class(name: str) -> Type[Runtime]:
    """Import and return the runtime class registered as ``name``. Raises RuntimeNotAvailable,
    naming the package to install, when it is unknown or not installed."""
    entry = _entry(name)
    missing = [r for r in entry.requires if not _present(r)]
    if missing:
        raise RuntimeNotAvailable(
            f"runtime {name!r} is not installed here (missing {', '.join(missing)}); install {entry.package}"
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeNotAvailable(f"runtime {name!r} is not installed here ({exc}); install {entry.package}") from exc
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise RuntimeNotAvailable(f"{entry.target} is not a tenantd Runtime")
    return cls


def check_device(cls: Type[Runtime], device: str) -> None:
    """Raise RuntimeNotAvailable if runtime ``cls`` cannot run on ``device``."""
    if cls.device_kinds and device_kind(device) not in cls.device_kinds:
        raise RuntimeNotAvailable(
            f"runtime {cls.name!r} does not run on device {device!r} (it runs on: {', '.join(cls.device_kinds)})"
        )


def available_runtimes() -> List[str]:
    """Names of registered runtimes whose packages are installed on this host (not imported)."""
    return [name for name in sorted(_REGISTRY) if runtime_installed(name)]


DEFAULT_RUNTIME = "litert"


def runtime_for_file(filename: Optional[str], device: str = "cpu") -> str:
    """Pick a runtime for a submitted file from its suffix and the device: the first installed of
    the candidates for (device kind, suffix), else the first candidate (so the tenant's error names
    the package to install); LiteRT when the suffix says nothing. A file the chosen runtime cannot
    load is refused by the probe, so a wrong guess costs a clear INVALID_MODEL, never a crash."""
    if not filename:
        return DEFAULT_RUNTIME
    suffix = Path(filename).suffix.lower()
    candidates = _CHOICE.get((device_kind(device), suffix))
    if candidates is None:
        candidates = tuple(name for name, entry in _REGISTRY.items() if suffix in entry.suffixes)
    for name in candidates:
        if runtime_installed(name):
            return name
    return candidates[0] if candidates else DEFAULT_RUNTIME
