"""The runtime interface: the one small contract every inference engine implements.

A :class:`Runtime` loads model files (from bytes or a path) into :class:`LoadedModel` objects that
report their input/output specs, run ``instances`` inferences at a time (one unless the model was
given more with ``add_instance``), and can be unloaded. ``release`` frees
what the runtime holds for the whole process (a delegate, a device handle). :meth:`Runtime.load`
first checks that the file refers to nothing outside its own bytes (:mod:`tenantd.modelfile`), then
hands it to the engine's own loader, ``_load``: every load (the probe's and the daemon's) is
checked, and a runtime cannot skip the check by overriding ``load``. Runtimes are looked up by name
in :mod:`tenantd.runtimes` and imported only when used, so a missing vendor package never breaks
import of the daemon. Written at the Python 3.6 language level, as every module a device worker
imports (README, "Device workers").
"""

import abc
import importlib
import queue
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from tenantd.errors import RuntimeFailure
from tenantd.modelfile import check_self_contained
from tenantwire.tensors import TensorSpec


def device_kind(device: str) -> str:
    """The kind of a device name: ``cpu``, ``edgetpu`` (``edgetpu:usb:0``), ``ncs2`` (``ncs2:0``),
    ``cuda`` (``cuda:0``), ``npu``, ``gpu``."""
    return device.split(":", 1)[0].lower()


_A = TypeVar("_A")
_B = TypeVar("_B")

# A model's idle instances (interpreters, infer requests), one get and one put per inference:
# queue.SimpleQueue (in C) where it exists (3.7+), else queue.Queue, with the same put, get_nowait
# and queue.Empty.
IdleQueue: Any = getattr(queue, "SimpleQueue", queue.Queue)


def strict_zip(first: Sequence[_A], second: Sequence[_B]) -> Iterator[Tuple[_A, _B]]:
    """``zip(first, second, strict=True)`` before Python 3.10: the same ValueError when the
    lengths differ (checked before any pair is made)."""
    if len(first) != len(second):
        side = "shorter" if len(second) < len(first) else "longer"
        raise ValueError(f"zip() argument 2 is {side} than argument 1")
    return zip(first, second)


def package_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution`` (its name on PyPI), for a runtime's ``version``;
    None where it is not installed or this Python cannot tell (before 3.8 there is no
    ``importlib.metadata``: then setuptools' ``pkg_resources`` answers, where it is installed)."""
    try:
        from importlib import metadata  # novermin - 3.8+, guarded: the fallback below is for 3.6/3.7
    except ImportError:
        return _version_from_pkg_resources(distribution)
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _version_from_pkg_resources(distribution: str) -> Optional[str]:
    try:
        pkg_resources: Any = importlib.import_module("pkg_resources")
        return str(pkg_resources.get_distribution(distribution).version)
    except Exception:  # noqa: BLE001 - no setuptools, or no such distribution: a version is never worth a failure
        return None


class LoadedModel(abc.ABC):
    """A model resident in a runtime. Callers run at most ``instances`` calls of ``infer`` at once
    (one, unless ``add_instance`` made more: the daemon's scheduler keeps to the count)."""

    # Whether ``add_instance`` can give this model more concurrent calls (a LiteRT interpreter
    # more, another OpenVINO infer request, one more caller of a thread-safe ORT session). False
    # where the device runs one thing at a time (EdgeTPU) or the engine is not re-entrant.
    can_add_instances: ClassVar[bool] = False
    instances: int = 1

    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    # Device memory the model holds that the host's resident-set size does not show (a TensorRT
    # engine's activations on a GPU); the probe adds it to the footprint.
    device_bytes: int = 0
    # Runtime facts worth recording with the model (on-chip vs streamed parameters, the engine's
    # precision); they travel in the probe's details.
    facts: Dict[str, Any] = {}  # noqa: RUF012 - read-only default, replaced per instance
    # How many requests one ``infer`` may carry stacked along the first dimension of every input
    # (dynamic batching): 1 where the engine cannot take a larger first dimension (a static ONNX
    # or IR shape, an EdgeTPU's compiled shapes). Outputs then carry one row per request too.
    max_batch: int = 1

    @abc.abstractmethod
    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        """Run once on ``inputs`` (ordered as ``self.inputs``); outputs ordered as ``self.outputs``."""

    def add_instance(self) -> None:
        """Make one more concurrent ``infer`` possible, allocating (and warming) what it needs now,
        so that the memory it costs shows at once. Called while calls may be running; ``instances``
        goes up only once the new instance is ready. Raises :class:`RuntimeFailure`."""
        raise RuntimeFailure(f"{type(self).__name__} runs one inference at a time")

    @abc.abstractmethod
    def unload(self) -> None:
        """Free the model's memory. The object must not be used afterwards."""


MAX_BATCH = 64  # the most requests a batched call may carry, whatever the engine allows


def batch_capacity(inputs: Tuple[TensorSpec, ...], outputs: Tuple[TensorSpec, ...], resizable: bool) -> int:
    """``max_batch`` for a model of these specs: MAX_BATCH when every input and output has a first
    dimension that is dynamic (-1) or, where the engine resizes inputs (``resizable``: LiteRT's
    ``resize_tensor_input``), 1; else 1. A model whose outputs turn out not to keep the batch
    dimension is found at its first batched run and runs unbatched from then on (executor.py)."""
    batchable = (-1, 1) if resizable else (-1,)
    specs = (*inputs, *outputs)
    if specs and all(len(s.shape) >= 1 and s.shape[0] in batchable for s in specs):
        return MAX_BATCH
    return 1


class Runtime(abc.ABC):
    """An inference engine on one device."""

    name: ClassVar[str]
    # File suffixes this runtime can load, used to pick a runtime for a submitted file.
    suffixes: ClassVar[Tuple[str, ...]]
    # Device kinds (the part of a device name before any ':', e.g. "cpu", "edgetpu", "ncs2",
    # "cuda") this runtime can run on. Empty: any (test doubles).
    device_kinds: ClassVar[Tuple[str, ...]] = ()
    # tenantd checks ONNX, TFLite and OpenVINO IR bundles for references outside the file and
    # refuses files in any other format, unless the engine's own format is one that keeps
    # everything in the file: then it is named here (TensorRT: a serialized engine).
    own_format: ClassVar[Optional[str]] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "load" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides Runtime.load; implement _load instead, so that every model file "
                "is checked before the engine reads it"
            )

    def __init__(self, device: str = "cpu", num_threads: int = 1, slots: int = 1) -> None:
        self.device = device
        self.num_threads = num_threads
        # How many inferences the daemon may run at once on this device: a runtime with its own
        # parallelism (OpenVINO streams) sizes it to this; the others ignore it.
        self.slots = slots

    def load(self, source: Union[bytes, Path]) -> LoadedModel:
        """Load a model from its bytes or a file path. Raises :class:`RuntimeFailure`, and
        :class:`tenantd.modelfile.ModelFileRefused` for a file that refers to anything outside its
        own bytes (external tensor data, a weights file, a range past its end), or whose format
        tenantd cannot check."""
        # A path is checked and then opened again by the engine; the daemon's paths are store
        # blobs, which are named by their hash and never rewritten, so both see the same bytes.
        check_self_contained(source, accept_opaque=self.own_format is not None)
        return self._load(source)

    @abc.abstractmethod
    def _load(self, source: Union[bytes, Path]) -> LoadedModel:
        """The engine's own loader, given a file that passed the check. Raises :class:`RuntimeFailure`."""

    def release(self) -> None:  # noqa: B027 - most runtimes hold nothing process-wide
        """Free whatever the runtime holds for the process (delegates, device handles)."""

    @classmethod
    def param_bytes(cls, path: Path) -> Optional[int]:
        """Bytes of the model's constant parameters (what an on-chip parameter cache would hold),
        where the format tells; None where it does not."""
        return None

    @classmethod
    def probe_device(cls, device: str) -> str:
        """The device the probe process should load a model on for ``device``. The device itself,
        except where only one process may hold it (an NCS2 stick): then a stand-in that reads the
        same specs."""
        return device

    @classmethod
    def process_overhead_bytes(cls, device: str) -> Optional[int]:
        """Memory the runtime costs the process on ``device`` that resident-set growth does not
        show (a CUDA context in a Jetson's shared DRAM); None where the measurement is enough."""
        return None

    @classmethod
    def version(cls) -> str:
        """The version of the engine's package, for probe records and status."""
        return "unknown"
