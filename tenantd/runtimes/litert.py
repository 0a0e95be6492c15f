"""LiteRT (TensorFlow Lite) runtime on the CPU.

Uses ``ai_edge_litert`` where installed and falls back to the older ``tflite_runtime`` wheel
(about 2x slower here, and pinned to numpy<2) where only that exists. A model may have several
interpreters (instances), one per concurrent call, all built on one in-memory copy of the file.
XNNPACK's packed weights are each interpreter's own: the classic ``Interpreter`` of ai-edge-litert
2.3.0 has no option to share them (its weight cache, ``xnnpack_weight_cache_path``, is reachable
only through the ``CompiledModel`` API). The EdgeTPU delegate builds on this module.

Written at the Python 3.6 language level, for a device worker under an older Python, with only the
numpy APIs of JetPack 4.6's numpy (1.13-1.19) (README, "Device workers").
"""

import queue
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from tenantd.errors import RuntimeFailure
from tenantd.runtimes.base import IdleQueue, LoadedModel, Runtime, batch_capacity, package_version, strict_zip
from tenantwire.tensors import TensorSpec

try:
    from ai_edge_litert.interpreter import Interpreter

    _PACKAGE = "ai-edge-litert"
except ImportError:  # pragma: no cover - exercised only where tflite-runtime alone is installed
    from tflite_runtime.interpreter import Interpreter

    _PACKAGE = "tflite-runtime"


def _spec(detail: Dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) for d in shape),
        quantization=(float(scale), int(zero_point)) if scale else None,
    )


class _Instance:
    """One interpreter of a model and the input shapes it is allocated for."""

    def __init__(self, interpreter: Any, shapes: List[Tuple[int, ...]]) -> None:
        self.interpreter = interpreter
        self.shapes = list(shapes)


class LiteRTModel(LoadedModel):
    """A model and its interpreters: LiteRT runs one call per interpreter at a time, so each
    instance is an interpreter of its own, all built on the same model buffer (``make``)."""

    can_add_instances = True

    def __init__(self, interpreter: Any, make: Optional[Callable[[], Any]] = None) -> None:
        self._make = make
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self._input_index = [d["index"] for d in self._input_details]
        self._output_index = [d["index"] for d in self._output_details]
        self._shapes = [tuple(int(n) for n in d["shape"]) for d in self._input_details]
        self.inputs = tuple(_spec(d) for d in self._input_details)
        self.outputs = tuple(_spec(d) for d in self._output_details)
        # A batch resizes the interpreter's inputs (and back for the next single request).
        self.max_batch = batch_capacity(self.inputs, self.outputs, resizable=True)
        # Idle interpreters; a call takes one and puts it back, so concurrent calls never share one.
        self._idle = IdleQueue()  # type: queue.Queue[_Instance]
        self._idle.put(_Instance(interpreter, self._shapes))
        self.instances = 1

    def add_instance(self) -> None:
        if self._make is None:
            raise RuntimeFailure("this model was loaded without a way to build more interpreters")
        try:
            interpreter = self._make()
            interpreter.allocate_tensors()
            interpreter.invoke()  # XNNPACK packs its weights on the first call: that memory shows now
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(f"LiteRT cannot build another interpreter: {exc}") from exc
        self._idle.put(_Instance(interpreter, self._shapes))
        self.instances += 1  # after the put: the scheduler may send one more call at once from now

    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        try:
            instance = self._idle.get_nowait()
        except queue.Empty:
            raise RuntimeFailure(f"more concurrent calls than the model's {self.instances} instance(s)") from None
        try:
            return self._run(instance, inputs)
        finally:
            self._idle.put(instance)

    def _run(self, instance: _Instance, inputs: List[np.ndarray]) -> List[np.ndarray]:
        interpreter = instance.interpreter
        if interpreter is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            resized = False
            for i, array in enumerate(inputs):
                if array.shape != instance.shapes[i]:
                    interpreter.resize_tensor_input(self._input_index[i], list(array.shape))
                    instance.shapes[i] = array.shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for index, array in strict_zip(self._input_index, inputs):
                interpreter.set_tensor(index, array)
            interpreter.invoke()
            return [interpreter.get_tensor(index) for index in self._output_index]
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(str(exc)) from exc

    def unload(self) -> None:
        idle, self._idle = self._idle, IdleQueue()
        self._make = None
        while True:
            try:
                idle.get_nowait().interpreter = None
            except queue.Empty:
                return


class LiteRTRuntime(Runtime):
    name = "litert"
    suffixes = (".tflite",)
    device_kinds = ("cpu",)

    def _load(self, source: Union[bytes, Path]) -> LiteRTModel:
        # Every interpreter of the model is built on this one buffer (LiteRT keeps a reference and
        # does not copy it), so an instance costs its own arena and packed weights, not the file
        # again: a path would be memory-mapped once per interpreter.
        content = source.read_bytes() if isinstance(source, Path) else bytes(source)
        threads = self.num_threads

        def make() -> Any:
            return Interpreter(model_content=content, num_threads=threads)

        try:
            interpreter = make()
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(f"LiteRT cannot load this model: {exc}") from exc
        return LiteRTModel(interpreter, make)

    @classmethod
    def param_bytes(cls, path: Path) -> Optional[int]:
        try:
            return tflite_param_bytes(path.read_bytes())
        except (ImportError, ValueError):
            return None

    @classmethod
    def version(cls) -> str:
        return f"{_PACKAGE} {package_version(_PACKAGE) or 'unknown'}"


def tflite_param_bytes(data: bytes) -> int:
    """Total bytes of constant data referenced by the tensors of a .tflite flatbuffer.

    Every distinct buffer referenced by a tensor in any subgraph counts once, whether its data is
    inline or stored after the flatbuffer (``offset``/``size``, used for models over 2 GiB).
    Metadata buffers not referenced by tensors are ignored. Needs ai-edge-litert's schema module."""
    from ai_edge_litert import schema_py_generated as schema

    data = bytes(data)
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError("not a TFLite model: missing 'TFL3' file identifier")
    root = schema.Model.GetRootAs(data, 0)
    used = {
        sg.Tensors(t).Buffer()
        for sg in (root.Subgraphs(s) for s in range(root.SubgraphsLength()))
        for t in range(sg.TensorsLength())
    }
    total = 0
    for index in used:
        if 0 < index < root.BuffersLength():
            buf = root.Buffers(index)
            total += buf.Size() if buf.Offset() > 1 else buf.DataLength()
    return int(total)
