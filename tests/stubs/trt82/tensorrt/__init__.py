"""Stub TensorRT 8.2 (JetPack 4.6): the bindings API only; no MemoryPoolType/set_memory_pool_limit
(added in 8.4), no named-tensor API (8.5). See tests/stubs/trtcore.py."""

from trtcore import (  # noqa: F401
    BuilderFlag,
    DataType,
    Logger,
    NetworkDefinitionCreationFlag,
    OnnxParser,
    _Builder,
    _Config82,
    _Context,
    _Engine,
    nptype,
    parse_plan,
)

__version__ = "8.2.1.8"


class Builder(_Builder):
    config_class = _Config82


class _Engine82(_Engine):
    @property
    def num_bindings(self):
        return len(self.tensors)

    def get_binding_name(self, i):
        return self.tensors[i][0]

    def get_binding_shape(self, i):
        return tuple(self.tensors[i][1])

    def get_binding_dtype(self, i):
        return self._dtype(i)

    def binding_is_input(self, i):
        return self.tensors[i][3]

    @property
    def device_memory_size(self):
        return self.activations

    def create_execution_context(self):
        return _Context82(self)


class _Context82(_Context):
    def execute_async_v2(self, bindings, stream_handle):
        return self._run(list(bindings))


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, plan):
        spec = parse_plan(plan)
        return None if spec is None else _Engine82(spec)
