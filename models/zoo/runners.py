"""Running a zoo file in the runtime its format targets, directly in this process.

This module owns the one way the zoo's builder, its tests and ``experiments/zoo_bench.py`` load and
run a built file: LiteRT for ``.tflite`` (float32 and int8), ONNX Runtime for ONNX, OpenVINO for IR
(and for ONNX, as a second runtime). Each runtime is imported only when used, so reading metadata
never needs them. :func:`run_float` also hides the formats' differences, so outputs can be
compared across formats: it takes and returns PyTorch-layout (NCHW) float32 arrays, and converts
to NHWC and to int8 (with the file's own scale and zero point) and back where the file wants it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["RUNTIMES", "Runner", "load", "run_float"]

# Which runtimes each format is checked and benchmarked in.
RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "tflite": ("litert",),
    "tflite_int8": ("litert",),
}


class Runner(Protocol):
    """A loaded model: ``run`` takes and returns arrays in the file's own layout and dtypes."""

    input_details: list[dict[str, Any]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class _LiteRT:
    interpreter: Any
    input_details: list[dict[str, Any]]
    output_details: list[dict[str, Any]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for detail, x in zip(self.input_details, inputs, strict=True):
            self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self.output_details]


@dataclass
class _OnnxRuntime:
    session: Any
    input_details: list[dict[str, Any]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {d["name"]: x for d, x in zip(self.input_details, inputs, strict=True)}
        return [np.asarray(y) for y in self.session.run(None, feed)]


@dataclass
class _OpenVINO:
    compiled: Any
    request: Any
    input_details: list[dict[str, Any]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(list(inputs))
        return [np.asarray(result[out]) for out in self.compiled.outputs]


def load(path: str | Path, runtime: str, *, threads: int | None = None) -> Runner:
    """Load ``path`` into ``runtime`` (``litert``, ``onnxruntime`` or ``openvino``) with ``threads``
    intra-op threads (default: all cores)."""
    threads = threads or os.cpu_count() or 1
    path = str(path)
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        return _LiteRT(interp, interp.get_input_details(), interp.get_output_details())
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        details = [{"name": i.name, "shape": i.shape, "dtype": np.float32} for i in session.get_inputs()]
        return _OnnxRuntime(session, details)
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        )
        details = [{"name": i.get_any_name(), "shape": list(i.get_shape())} for i in compiled.inputs]
        return _OpenVINO(compiled, compiled.create_infer_request(), details)
    raise ValueError(f"unknown runtime {runtime!r}; known: litert, onnxruntime, openvino")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def run_float(runner: Runner, inputs: Sequence[np.ndarray], *, tflite: bool) -> list[np.ndarray]:
    """Run float32 NCHW ``inputs`` and return float32 NCHW outputs, whatever the file's layout and dtype."""
    if not tflite:
        return [np.asarray(y, np.float32) for y in runner.run([np.asarray(x, np.float32) for x in inputs])]
    fed = []
    for detail, x in zip(runner.input_details, inputs, strict=True):
        x = _nhwc(np.asarray(x, np.float32))
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])
        fed.append(x)
    assert isinstance(runner, _LiteRT)
    outs = []
    for detail, y in zip(runner.output_details, runner.run(fed), strict=True):
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        outs.append(_nchw(y))
    return outs
