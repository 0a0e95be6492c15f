"""ONNX Runtime: ONNX models on the CPU, and on an NVIDIA GPU through the CUDA execution provider
where ``onnxruntime-gpu`` is installed.

An ``InferenceSession`` is safe to call from several threads at once, so one loaded model can serve
several slots: an instance more is one caller more of the same session (its weights are shared;
each concurrent run takes its activations from the session's arena as it runs). The session gets
``num_threads`` intra-op threads and one inter-op thread, as the daemon sizes its thread budget per
model. On ``cuda:N`` the session is created with the CUDA
provider on device N and refuses to fall back silently to the CPU: a tenant who asked for the GPU
gets the GPU or a clear error.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime, batch_capacity, device_kind
from tenantwire.tensors import TensorSpec

# ONNX tensor type strings as ONNX Runtime reports them -> numpy dtype names.
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
# CUDA errors that mean the GPU itself is gone or unusable, not that this input failed.
_LOST_MARKS = (
    "cudaerrordevicesunavailable",
    "cuda_error_no_device",
    "device-side assert",
    "unspecified launch failure",
    "gpu is lost",
    "fallen off the bus",
    "cudaerrornodevice",
)


def _spec(arg: Any) -> TensorSpec:
    dtype = _DTYPES.get(str(arg.type))
    if dtype is None:
        raise RuntimeFailure(f"tensor {arg.name!r} has type {arg.type}, which tenantd does not carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=str(arg.name), dtype=dtype, shape=shape)


class ONNXRuntimeModel(LoadedModel):
    can_add_instances = True

    def __init__(self, session: Any) -> None:
        self._session = session
        self.instances = 1
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self.max_batch = batch_capacity(self.inputs, self.outputs, resizable=False)  # symbolic first dims
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        session = self._session
        if session is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            outputs = session.run(self._output_names, dict(zip(self._input_names, inputs, strict=True)))
        except Exception as exc:  # ORT raises its own exception types from C++; all become reasons
            if any(mark in str(exc).lower() for mark in _LOST_MARKS):
                raise DeviceLost(f"ONNX Runtime lost the GPU: {exc}") from exc
            raise RuntimeFailure(str(exc)) from exc
        return [np.asarray(o) for o in outputs]

    def add_instance(self) -> None:
        if self._session is None:
            raise RuntimeFailure("the model was unloaded")
        self.instances += 1

    def unload(self) -> None:
        self._session = None


class ONNXRuntime(Runtime):
    name = "onnxruntime"
    suffixes = (".onnx",)
    device_kinds = ("cpu", "cuda")

    def _providers(self) -> list[Any]:
        if device_kind(self.device) == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeFailure(
                    "this onnxruntime has no CUDA execution provider: install onnxruntime-gpu for device "
                    f"{self.device!r}"
                )
            index = int(self.device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": index})]
        return ["CPUExecutionProvider"]

    def _load(self, source: bytes | Path) -> ONNXRuntimeModel:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are not the tenant's
        if device_kind(self.device) == "cuda":
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        try:
            model = str(source) if isinstance(source, Path) else bytes(source)
            session = ort.InferenceSession(model, sess_options=options, providers=self._providers())
        except RuntimeFailure:
            raise
        except Exception as exc:  # ORT's load errors are C++ exception types of its own
            if any(mark in str(exc).lower() for mark in _LOST_MARKS):
                raise DeviceLost(f"ONNX Runtime lost the GPU: {exc}") from exc
            raise RuntimeFailure(f"ONNX Runtime cannot load this model: {exc}") from exc
        return ONNXRuntimeModel(session)

    @classmethod
    def version(cls) -> str:
        for package in ("onnxruntime", "onnxruntime-gpu"):
            try:
                return f"{package} {importlib.metadata.version(package)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return "onnxruntime unknown"
