"""ONNX Runtime: ONNX models on the CPU, and on an NVIDIA GPU through the CUDA execution provider
where ``onnxruntime-gpu`` is installed.

An ``InferenceSession`` is safe to call from several threads at once, so one loaded model can serve
several slots: an instance more is one caller more of the same session (its weights are shared;
each concurrent run takes its activations from the session's arena as it runs). The session gets
``num_threads`` intra-op threads and one inter-op thread, as the daemon sizes its thread budget per
model.

On ``cuda:N`` the session is created with the CUDA provider on device N, then CPU. ONNX Runtime
assigns shape subgraphs of ordinary exported models to the CPU on purpose, so
``session.disable_cpu_ep_fallback`` would refuse them ("This session contains graph nodes that
are assigned to the default CPU EP, but fallback to CPU EP has been explicitly disabled by the
user."); and when the CUDA provider cannot start (no cuDNN, a driver mismatch) ONNX Runtime falls
back to the CPU for the whole session with only a warning. So the check is on what the session
got: ``session.get_providers()`` must contain ``CUDAExecutionProvider``, else the load fails with
a clear error. GPU memory, which the host's RSS does not show, is measured around the load and
the first runs: this process's figure from NVML (``pynvml``/nvidia-ml-py) where importable, else
the device's ``cudaMemGetInfo`` delta (cuda-python), else an estimate (the file's size), labelled
as such in ``gpu_bytes_source``. Written at the Python 3.6 language level, for a device worker under
an older Python (README, "Device workers").
"""

import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import onnxruntime as ort

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime, batch_capacity, device_kind, package_version, strict_zip
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


def gpu_meter(index: int) -> Optional[Tuple[str, Callable[[], int]]]:
    """How to read the GPU memory this process uses on device ``index``: NVML's per-process
    figure, else cudaMemGetInfo's used bytes on the device; None where neither is importable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def nvml() -> int:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid():
                    return int(proc.usedGpuMemory or 0)
            return 0

        return "nvml", nvml
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no such GPU: try the next meter
        pass
    try:
        from cuda.bindings import runtime as cudart

        def mem_get_info() -> int:
            cudart.cudaSetDevice(index)
            _, free, total = cudart.cudaMemGetInfo()
            return int(total) - int(free)

        mem_get_info()
        return "cudaMemGetInfo", mem_get_info
    except Exception:  # noqa: BLE001 - no cuda-python or no device
        return None


class ONNXRuntimeModel(LoadedModel):
    can_add_instances = True

    def __init__(
        self,
        session: Any,
        meter: Optional[Tuple[str, Callable[[], int]]] = None,
        baseline: int = 0,
        estimate: int = 0,
    ) -> None:
        self._session = session
        self._meter = meter
        self._baseline = baseline
        self._estimate = estimate
        if meter is not None:
            self.facts = {"gpu_bytes_source": meter[0]}
        elif estimate:
            self.facts = {"gpu_bytes_source": "estimate: the model file's size (no NVML or cudaMemGetInfo here)"}
        self.instances = 1
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self.max_batch = batch_capacity(self.inputs, self.outputs, resizable=False)  # symbolic first dims
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]

    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        session = self._session
        if session is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            outputs = session.run(self._output_names, dict(strict_zip(self._input_names, inputs)))
        except Exception as exc:  # ORT raises its own exception types from C++; all become reasons
            if any(mark in str(exc).lower() for mark in _LOST_MARKS):
                raise DeviceLost(f"ONNX Runtime lost the GPU: {exc}") from exc
            raise RuntimeFailure(str(exc)) from exc
        return [np.asarray(o) for o in outputs]

    @property
    def device_bytes(self) -> int:  # type: ignore[override]
        """GPU memory the model holds now (it grows with ONNX Runtime's arena on the first runs)."""
        if self._meter is not None:
            return max(0, self._meter[1]() - self._baseline)
        return self._estimate

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

    def _providers(self) -> List[Any]:
        if device_kind(self.device) == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeFailure(
                    "this onnxruntime has no CUDA execution provider: install onnxruntime-gpu for device "
                    f"{self.device!r}"
                )
            index = int(self.device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": index})]
        return ["CPUExecutionProvider"]

    def _load(self, source: Union[bytes, Path]) -> ONNXRuntimeModel:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are not the tenant's
        cuda = device_kind(self.device) == "cuda"
        meter = gpu_meter(int(self.device.partition(":")[2] or 0)) if cuda else None
        baseline = meter[1]() if meter is not None else 0
        try:
            model = str(source) if isinstance(source, Path) else bytes(source)
            session = ort.InferenceSession(model, sess_options=options, providers=self._providers())
        except RuntimeFailure:
            raise
        except Exception as exc:  # ORT's load errors are C++ exception types of its own
            if any(mark in str(exc).lower() for mark in _LOST_MARKS):
                raise DeviceLost(f"ONNX Runtime lost the GPU: {exc}") from exc
            raise RuntimeFailure(f"ONNX Runtime cannot load this model: {exc}") from exc
        if not cuda:
            return ONNXRuntimeModel(session)
        got = list(session.get_providers())
        if "CUDAExecutionProvider" not in got:
            raise RuntimeFailure(
                f"ONNX Runtime could not use the GPU for {self.device!r}: the session runs on {got} (the CUDA "
                "provider failed to start; its warning is in the daemon's log: check CUDA and cuDNN versions)"
            )
        size = source.stat().st_size if isinstance(source, Path) else len(source)
        return ONNXRuntimeModel(session, meter, baseline, estimate=size)

    @classmethod
    def version(cls) -> str:
        for package in ("onnxruntime", "onnxruntime-gpu"):
            found = package_version(package)
            if found is not None:
                return f"{package} {found}"
        return "onnxruntime unknown"
