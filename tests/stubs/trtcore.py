"""Shared body of the stub ``tensorrt`` packages (trt82/, trt10/): each exports only its
version's API surface, so code that reaches for the other version's names fails as it would on
that TensorRT (AttributeError: module 'tensorrt' has no attribute 'MemoryPoolType', as on
JetPack 4.6's TensorRT 8.2; TensorRT 10 removed ``max_workspace_size``, ``num_bindings`` and
``execute_async_v2``).

An "engine" here is JSON: its I/O tensors and activation bytes. The OnnxParser reads the ONNX
graph's inputs and outputs (the ``onnx`` package); an inference writes, in every output element,
the sum of the first input's elements. The weights the engine holds: ``weights`` bytes of padding
in the plan, as a real plan carries its weights."""

import enum
import json

import numpy as np
from pycuda import driver as cuda

MAGIC = b"STUBTRT1"
ACTIVATION_BYTES = 3 * 2**20


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}
_FROM_NP = {np.dtype(v).name: k for k, v in _NP.items()}


def nptype(dtype):
    return _NP[DataType(dtype)]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):
    FP16 = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class Logger:
    WARNING = 2

    def __init__(self, severity=2):
        self.severity = severity


class _Network:
    def __init__(self):
        self.tensors = []


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse(self, data):
        import onnx

        model = onnx.load_from_string(bytes(data))
        init = set(i.name for i in model.graph.initializer)
        weights = sum(len(i.raw_data) or 4 * int(np.prod(i.dims)) for i in model.graph.initializer)

        def spec(value, is_input):
            t = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            return [value.name, [int(d.dim_value) for d in t.shape.dim], dtype, is_input]

        self.network.tensors = [spec(v, True) for v in model.graph.input if v.name not in init] + [
            spec(v, False) for v in model.graph.output
        ]
        self.network.weights = weights
        return True

    def get_error(self, i):
        return ""


class _Config:
    def __init__(self):
        self.flags = set()
        self.workspace = None

    def set_flag(self, flag):
        self.flags.add(flag)


class _Config82(_Config):
    max_workspace_size = 0  # TensorRT 8.2's only way to bound the workspace


class _Config10(_Config):
    def set_memory_pool_limit(self, pool, size):
        self.workspace = (pool, size)


class _Builder:
    config_class = _Config
    platform_has_fast_fp16 = True

    def __init__(self, logger):
        pass

    def create_network(self, flags=0):
        return _Network()

    def create_builder_config(self):
        return self.config_class()

    def build_serialized_network(self, network, config):
        header = json.dumps({"tensors": network.tensors, "activations": ACTIVATION_BYTES}).encode()
        return MAGIC + len(header).to_bytes(4, "little") + header + b"\0" * getattr(network, "weights", 0)


def parse_plan(plan):
    plan = bytes(plan)
    if not plan.startswith(MAGIC):
        return None
    n = int.from_bytes(plan[8:12], "little")
    return json.loads(plan[12 : 12 + n].decode())


class _Engine:
    def __init__(self, spec):
        self.tensors = spec["tensors"]
        self.activations = spec["activations"]

    def _dtype(self, i):
        return _FROM_NP[self.tensors[i][2]]


class _Context:
    def __init__(self, engine):
        self.engine = engine
        self.addresses = {}

    def _run(self, addresses):
        tensors = self.engine.tensors
        first = next(i for i, t in enumerate(tensors) if t[3])
        x = np.frombuffer(bytes(cuda.MEMORY[addresses[first]]), np.dtype(tensors[first][2]))
        total = x.astype(np.float64).sum()
        for i, t in enumerate(tensors):
            if not t[3]:
                out = np.full(int(np.prod(t[1])), total, dtype=np.dtype(t[2]))
                cuda.MEMORY[addresses[i]][:] = out.tobytes()
        return True
