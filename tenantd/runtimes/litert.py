"""LiteRT (TensorFlow Lite) runtime on the CPU.

Uses ``ai_edge_litert`` where installed and falls back to the older ``tflite_runtime`` wheel
(about 2x slower here, and pinned to numpy<2) where only that exists. The interpreter is built
from a file path where one is given, so the model is memory-mapped rather than copied. The EdgeTPU
delegate builds on this module in a later runtime.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from tenantd.errors import RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime
from tenantwire.tensors import TensorSpec

try:
    from ai_edge_litert.interpreter import Interpreter

    _PACKAGE = "ai-edge-litert"
except ImportError:  # pragma: no cover - exercised only where tflite-runtime alone is installed
    from tflite_runtime.interpreter import Interpreter

    _PACKAGE = "tflite-runtime"


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) for d in shape),
        quantization=(float(scale), int(zero_point)) if scale else None,
    )


class LiteRTModel(LoadedModel):
    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self._input_index = [d["index"] for d in self._input_details]
        self._output_index = [d["index"] for d in self._output_details]
        self._shapes = [tuple(d["shape"]) for d in self._input_details]
        self.inputs = tuple(_spec(d) for d in self._input_details)
        self.outputs = tuple(_spec(d) for d in self._output_details)

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter
        try:
            resized = False
            for i, array in enumerate(inputs):
                if array.shape != self._shapes[i]:
                    interpreter.resize_tensor_input(self._input_index[i], list(array.shape))
                    self._shapes[i] = array.shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for index, array in zip(self._input_index, inputs, strict=True):
                interpreter.set_tensor(index, array)
            interpreter.invoke()
            return [interpreter.get_tensor(index) for index in self._output_index]
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(str(exc)) from exc

    def unload(self) -> None:
        self._interpreter = None


class LiteRTRuntime(Runtime):
    name = "litert"
    suffixes = (".tflite",)
    device_kinds = ("cpu",)

    def _load(self, source: bytes | Path) -> LiteRTModel:
        try:
            if isinstance(source, Path):
                interpreter = Interpreter(model_path=str(source), num_threads=self.num_threads)
            else:
                interpreter = Interpreter(model_content=bytes(source), num_threads=self.num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(f"LiteRT cannot load this model: {exc}") from exc
        return LiteRTModel(interpreter)

    @classmethod
    def param_bytes(cls, path: Path) -> int | None:
        try:
            return tflite_param_bytes(path.read_bytes())
        except (ImportError, ValueError):
            return None

    @classmethod
    def version(cls) -> str:
        return f"{_PACKAGE} {importlib.metadata.version(_PACKAGE)}"


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
