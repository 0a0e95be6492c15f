"""Static reading of a ``.tflite`` file (a TFLite flatbuffer) without any TFLite package.

The EdgeTPU's model checks must run where only ``tflite_runtime`` is installed (2.14 ships no
``schema_py_generated`` module, unlike ai-edge-litert) and inside a device worker on an older
Python (JetPack and Coral images ship 3.6-3.9), and must never open the device. So this module
reads the few tables it needs straight from the flatbuffer's wire format (FlatBuffers' "internals"
documentation: a root ``uoffset``, tables found through ``soffset`` vtables, vectors and strings
prefixed by a ``uint32`` length), for the field numbers of TensorFlow's ``schema.fbs``: Model
(1 operator_codes, 2 subgraphs, 4 buffers), OperatorCode (0 deprecated_builtin_code, 1
custom_code, 3 builtin_code), SubGraph (0 tensors, 1 inputs, 2 outputs, 3 operators), Tensor
(0 shape, 1 type, 2 buffer, 3 name), Operator (0 opcode_index, 5 custom_options), Buffer (0 data,
1 offset, 2 size). Written at the Python 3.6 language level (checked with ``vermin``).
"""

import struct
from typing import List, Tuple  # noqa: F401 - type comments at the Python 3.6 level

EDGETPU_OP = "edgetpu-custom-op"
FILE_IDENTIFIER = b"TFL3"
# schema.fbs TensorType -> numpy dtype names (the ones tenantd carries).
TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
    12: "uint64",
    15: "uint32",
    16: "uint16",
}


class NotTFLite(ValueError):
    """The bytes are not a TFLite flatbuffer, or one this reader cannot walk."""


class _Table:
    """One flatbuffer table: its position and its vtable."""

    def __init__(self, data, pos):
        # type: (bytes, int) -> None
        self.data = data
        self.pos = pos
        vtable = pos - _i32(data, pos)
        self.vtable = vtable
        self.vsize = _u16(data, vtable)

    def _field(self, index):
        # type: (int) -> int
        slot = 4 + 2 * index
        if slot >= self.vsize:
            return 0
        return _u16(self.data, self.vtable + slot)

    def scalar(self, index, fmt, default):
        # type: (int, str, int) -> int
        offset = self._field(index)
        if not offset:
            return default
        return int(struct.unpack_from("<" + fmt, self.data, self.pos + offset)[0])

    def _target(self, index):
        # type: (int) -> int
        offset = self._field(index)
        if not offset:
            return -1
        at = self.pos + offset
        return at + _u32(self.data, at)

    def vector_length(self, index):
        # type: (int) -> int
        at = self._target(index)
        return 0 if at < 0 else _u32(self.data, at)

    def scalars(self, index, fmt):
        # type: (int, str) -> List[int]
        at = self._target(index)
        if at < 0:
            return []
        n = _u32(self.data, at)
        size = struct.calcsize("<" + fmt)
        _check(self.data, at + 4 + n * size)
        return [int(v) for v in struct.unpack_from(f"<{n}{fmt}", self.data, at + 4)]

    def string(self, index):
        # type: (int) -> str
        at = self._target(index)
        if at < 0:
            return ""
        n = _u32(self.data, at)
        _check(self.data, at + 4 + n)
        return self.data[at + 4 : at + 4 + n].decode("utf-8", "replace")

    def tables(self, index):
        # type: (int) -> List[_Table]
        at = self._target(index)
        if at < 0:
            return []
        found = []
        for i in range(_u32(self.data, at)):
            element = at + 4 + 4 * i
            found.append(_Table(self.data, element + _u32(self.data, element)))
        return found


def _check(data, end):
    # type: (bytes, int) -> None
    if end > len(data):
        raise NotTFLite(f"the flatbuffer points past its end ({end} > {len(data)} bytes)")


def _u16(data, at):
    # type: (bytes, int) -> int
    _check(data, at + 2)
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data, at):
    # type: (bytes, int) -> int
    _check(data, at + 4)
    return int(struct.unpack_from("<I", data, at)[0])


def _i32(data, at):
    # type: (bytes, int) -> int
    _check(data, at + 4)
    return int(struct.unpack_from("<i", data, at)[0])


class TensorInfo:
    def __init__(self, name, dtype, shape, buffer):
        # type: (str, str, Tuple[int, ...], int) -> None
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.buffer = buffer


class ModelInfo:
    """What a ``.tflite`` file says about itself: operator codes, the first subgraph's inputs and
    outputs, the bytes inside EdgeTPU ops, and the constant bytes its tensors reference."""

    def __init__(self, data):
        # type: (bytes) -> None
        data = bytes(data)
        if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
            raise NotTFLite("not a TFLite model: missing 'TFL3' file identifier")
        try:
            root = _Table(data, _u32(data, 0))
            codes = root.tables(1)
            self.custom_codes = [c.string(1) for c in codes]
            graphs = root.tables(2)
            if not graphs:
                raise NotTFLite("the model has no subgraph")
            edgetpu_codes = set(i for i, code in enumerate(self.custom_codes) if code == EDGETPU_OP)
            self.edgetpu_ops = 0
            self.edgetpu_op_bytes = 0
            for graph in graphs:
                for op in graph.tables(3):
                    if op.scalar(0, "I", 0) in edgetpu_codes:
                        self.edgetpu_ops += 1
                        self.edgetpu_op_bytes += op.vector_length(5)
            main = graphs[0]
            tensors = main.tables(0)
            self.inputs = [self._tensor(tensors, i) for i in main.scalars(1, "i")]
            self.outputs = [self._tensor(tensors, i) for i in main.scalars(2, "i")]
            used = set()
            for graph in graphs:
                for tensor in graph.tables(0):
                    used.add(tensor.scalar(2, "I", 0))
            buffers = root.tables(4)
            self.param_bytes = 0
            for index in used:
                if 0 < index < len(buffers):
                    buf = buffers[index]
                    offset = buf.scalar(1, "Q", 0)
                    self.param_bytes += buf.scalar(2, "Q", 0) if offset > 1 else buf.vector_length(0)
        except (struct.error, IndexError) as exc:
            raise NotTFLite(f"the flatbuffer is malformed: {exc}") from exc

    @staticmethod
    def _tensor(tensors, index):
        # type: (List[_Table], int) -> TensorInfo
        if not 0 <= index < len(tensors):
            raise NotTFLite(f"input/output tensor {index} does not exist")
        t = tensors[index]
        kind = t.scalar(1, "b", 0)
        if kind not in TENSOR_TYPES:
            raise NotTFLite(f"tensor {t.string(3)!r} has TFLite type {kind}, which tenantd does not carry")
        return TensorInfo(t.string(3), TENSOR_TYPES[kind], tuple(t.scalars(0, "i")), t.scalar(2, "I", 0))

    @property
    def edgetpu_compiled(self):
        # type: () -> bool
        return self.edgetpu_ops > 0
