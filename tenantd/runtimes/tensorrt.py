"""TensorRT with pycuda: serialized TensorRT engines (``.engine``/``.plan``), or ONNX models built
into an engine on the device, on an NVIDIA GPU (a Jetson's integrated one or a discrete one).

Loading deserializes the engine (``trt.Runtime(logger).deserialize_cuda_engine``) or, for ONNX,
parses and builds one with ``trt.Builder`` + ``trt.OnnxParser`` (FP16 where the GPU has fast FP16,
as on every Jetson; the engine is built for this GPU and this TensorRT version only). Each model
gets an execution context, one CUDA stream, device buffers for every I/O tensor
(``cuda.mem_alloc``) and page-locked host buffers; an inference copies inputs host-to-device,
enqueues the engine, copies outputs back, all asynchronously on the stream, then synchronises.
TensorRT 10's named-tensor API (``set_tensor_address`` + ``execute_async_v3``) is used where it
exists, the 8.x bindings API (``execute_async_v2``) otherwise. Building: TensorRT 8.2 (JetPack
4.6, the last for the Nano and TX2, on Python 3.6) has no ``set_memory_pool_limit`` /
``MemoryPoolType`` (they came in 8.4) and sets the workspace with ``config.max_workspace_size``;
TensorRT 10 has only the former.

Memory: a model's ``device_bytes`` are the engine itself (its serialized size: the weights it
copies to the GPU on deserialization), its activations (``device_memory_size_v2`` in 10,
``device_memory_size`` before) and its I/O buffers; on a Jetson that memory is the host's DRAM,
so the probe charges it to the shared ledger. The CUDA context, cuDNN and TensorRT libraries cost each process about
0.8 GB of that DRAM (NVIDIA forum; TensorRT#2217), which resident-set growth does not show, so on
a Jetson the runtime declares that figure as its per-process overhead.

pycuda needs a CUDA context current on the thread that uses it; the runtime makes one context for
the device and pushes it around every call, since slot threads are not the thread that loaded.
Written at the Python 3.6 language level: JetPack 4.6's TensorRT 8.2 runs under its Python 3.6, in
the device worker (README, "Device workers").
"""

from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import pycuda.driver as cuda
import tensorrt as trt

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime, device_kind, package_version, strict_zip
from tenantwire.tensors import TensorSpec

# Per-process CUDA + cuDNN + TensorRT cost in a Jetson's shared DRAM (DESIGN.md's anchors).
JETSON_PROCESS_OVERHEAD_BYTES = 800 * 2**20
ONNX_WORKSPACE_BYTES = 256 * 2**20
# CUDA driver errors meaning the GPU itself is gone or wedged (not this input).
_LOST_MARKS = (
    "cuda_error_no_device",
    "device_unavailable",
    "launch_failed",
    "illegal_address",
    "ecc_uncorrectable",
    "fallen off the bus",
    "cuda_error_device_not_ready",
)
_LOGGER: Any = None


def _logger() -> Any:
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _is_lost(exc: BaseException) -> bool:
    return any(mark in str(exc).lower() for mark in _LOST_MARKS)


def is_jetson(root: Path = Path("/")) -> bool:
    return (root / "etc/nv_tegra_release").is_file()


class _Context:
    """One CUDA context for the runtime's device, made current around each use (any thread)."""

    def __init__(self, index: int) -> None:
        cuda.init()
        if index >= cuda.Device.count():
            raise DeviceLost(f"no CUDA device {index} (found {cuda.Device.count()})")
        self.context = cuda.Device(index).retain_primary_context()

    def __enter__(self) -> None:
        self.context.push()

    def __exit__(self, *exc: object) -> None:
        cuda.Context.pop()


class _Tensor:
    def __init__(self, name: str, shape: Tuple[int, ...], dtype: "np.dtype[Any]", is_input: bool) -> None:
        self.name, self.shape, self.dtype, self.is_input = name, shape, dtype, is_input
        size = int(np.prod(shape)) if shape else 1
        self.host = cuda.pagelocked_empty(size, dtype)
        self.device = cuda.mem_alloc(self.host.nbytes)


def _io(engine: Any) -> List[Tuple[str, Tuple[int, ...], "np.dtype[Any]", bool]]:
    """(name, shape, dtype, is_input) of each I/O tensor, in TensorRT 10 or 8.x terms."""
    tensors = []
    if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5, the only API in 10
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            tensors.append((name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), is_input))
    else:
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            shape = tuple(int(d) for d in engine.get_binding_shape(i))
            tensors.append((name, shape, np.dtype(trt.nptype(engine.get_binding_dtype(i))), engine.binding_is_input(i)))
    if any(d < 0 for _, shape, _, _ in tensors for d in shape):
        raise RuntimeFailure("this engine has dynamic shapes; tenantd serves engines built for fixed shapes")
    return tensors


class TensorRTModel(LoadedModel):
    def __init__(self, engine: Any, ctx: _Context, engine_bytes: int = 0) -> None:
        self._engine = engine
        self._ctx = ctx
        with ctx:
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
            self._tensors = [_Tensor(*t) for t in _io(engine)]
            if hasattr(self._context, "set_tensor_address"):
                for t in self._tensors:
                    self._context.set_tensor_address(t.name, int(t.device))
        self._inputs = [t for t in self._tensors if t.is_input]
        self._outputs = [t for t in self._tensors if not t.is_input]
        self.inputs = tuple(TensorSpec(t.name, t.dtype.name, t.shape) for t in self._inputs)
        self.outputs = tuple(TensorSpec(t.name, t.dtype.name, t.shape) for t in self._outputs)
        memory = int(getattr(engine, "device_memory_size_v2", 0) or getattr(engine, "device_memory_size", 0) or 0)
        self.device_bytes = engine_bytes + memory + sum(t.host.nbytes for t in self._tensors)
        self.facts = {
            "tensorrt_engine_bytes": engine_bytes,
            "tensorrt_activation_bytes": memory,
            "tensorrt_api": "10 (named tensors)" if hasattr(engine, "num_io_tensors") else "8.x (bindings)",
        }

    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        if self._engine is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            with self._ctx:
                for t, array in strict_zip(self._inputs, inputs):
                    np.copyto(t.host, array.ravel())
                    cuda.memcpy_htod_async(t.device, t.host, self._stream)
                if hasattr(self._context, "execute_async_v3"):
                    ok = self._context.execute_async_v3(stream_handle=self._stream.handle)
                else:
                    bindings = [int(t.device) for t in self._tensors]
                    ok = self._context.execute_async_v2(bindings=bindings, stream_handle=self._stream.handle)
                for t in self._outputs:
                    cuda.memcpy_dtoh_async(t.host, t.device, self._stream)
                self._stream.synchronize()
        except cuda.Error as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the GPU is gone: {exc}") from exc
            raise RuntimeFailure(f"CUDA failed: {exc}") from exc
        if not ok:
            raise RuntimeFailure("TensorRT could not enqueue the inference")
        return [t.host.reshape(t.shape).copy() for t in self._outputs]

    def unload(self) -> None:
        if self._engine is None:
            return
        with self._ctx:
            for t in self._tensors:
                t.device.free()
            self._context = None
            self._engine = None


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    suffixes = (".engine", ".plan", ".onnx")
    device_kinds = ("cuda",)
    # A serialized engine holds everything it needs; ONNX is checked like any ONNX file.
    own_format = "a serialized TensorRT engine"

    def __init__(self, device: str = "cuda:0", num_threads: int = 1, slots: int = 1) -> None:
        super().__init__(device, num_threads, slots)
        if device_kind(device) != "cuda":
            raise RuntimeFailure(f"TensorRT runs on cuda:N devices, not {device!r}")
        self._ctx = _Context(int(device.partition(":")[2] or 0))
        self._runtime = trt.Runtime(_logger())

    def _build_from_onnx(self, data: bytes) -> Any:
        builder = trt.Builder(_logger())
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # needed in 8.x, implied (deprecated) in 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, _logger())
        if not parser.parse(data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeFailure(f"TensorRT cannot parse this ONNX model: {errors}")
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):  # TensorRT >= 8.4
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ONNX_WORKSPACE_BYTES)
        else:  # TensorRT 8.2 (JetPack 4.6)
            config.max_workspace_size = ONNX_WORKSPACE_BYTES
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeFailure("TensorRT could not build an engine from this ONNX model (see the daemon's log)")
        return bytes(serialized)

    def _load(self, source: Union[bytes, Path]) -> TensorRTModel:
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        try:
            with self._ctx:
                # An ONNX file is a protobuf whose first field is ir_version (tag 0x08); an engine is not.
                plan = self._build_from_onnx(data) if data[:1] == b"\x08" else data
                engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeFailure(
                    "TensorRT cannot deserialize this engine (built for another GPU or TensorRT version?)"
                )
            return TensorRTModel(engine, self._ctx, engine_bytes=len(plan))
        except cuda.Error as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the GPU is gone: {exc}") from exc
            raise RuntimeFailure(f"CUDA failed loading the engine: {exc}") from exc

    @classmethod
    def process_overhead_bytes(cls, device: str) -> Optional[int]:
        return JETSON_PROCESS_OVERHEAD_BYTES if is_jetson() else None

    @classmethod
    def version(cls) -> str:
        return f"tensorrt {trt.__version__}, pycuda {package_version('pycuda') or 'unknown'}"
