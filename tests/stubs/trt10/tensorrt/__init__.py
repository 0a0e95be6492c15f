"""Stub TensorRT 10: the named-tensor API only (no bindings, no execute_async_v2, no
max_workspace_size). See tests/stubs/trtcore.py."""

from trtcore import (  # noqa: F401
    BuilderFlag,
    DataType,
    Logger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    OnnxParser,
    TensorIOMode,
    _Builder,
    _Config10,
    _Context,
    _Engine,
    nptype,
    parse_plan,
)

__version__ = "10.3.0"


class Builder(_Builder):
    config_class = _Config10


class _Engine10(_Engine):
    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def _index(self, name):
        return next(i for i, t in enumerate(self.tensors) if t[0] == name)

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if self.tensors[self._index(name)][3] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return tuple(self.tensors[self._index(name)][1])

    def get_tensor_dtype(self, name):
        return self._dtype(self._index(name))

    @property
    def device_memory_size_v2(self):
        return self.activations

    def create_execution_context(self):
        return _Context10(self)


class _Context10(_Context):
    def set_tensor_address(self, name, address):
        self.addresses[self.engine._index(name)] = address
        return True

    def execute_async_v3(self, stream_handle):
        return self._run(self.addresses)


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, plan):
        spec = parse_plan(plan)
        return None if spec is None else _Engine10(spec)
