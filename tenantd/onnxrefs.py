"""What an ONNX model file refers to outside its own bytes: external tensor data and EPContext nodes.

Read with the ``onnx`` package's own data model where it is installed, and otherwise by walking
the protobuf wire format for the few fields that matter (the daemon does not depend on ``onnx``).
:mod:`tenantd.modelfile` turns what is found here into a refusal. Written at the Python 3.6
language level: a device worker imports it with the runtime adapters (README, "Device workers").
"""

import mmap
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

# A file's contents: bytes, or a read-only memory map of the file.
Data = Union[bytes, mmap.mmap]

# Deeper nesting than protobuf's default recursion limit: engines refuse such a file anyway.
_MAX_DEPTH = 100


class NotProtobuf(Exception):
    """The bytes are not a well-formed protobuf message."""


class Outside(NamedTuple):
    """One reference outside the file: where it is, and what it names."""

    where: str
    reference: str
    epcontext: bool = False  # an EPContext node, not a tensor


# Protobuf wire types.
_VARINT, _I64, _LEN, _GROUP_START, _GROUP_END, _I32 = 0, 1, 2, 3, 4, 5

# ModelProto's fields and their wire types (onnx.proto). A file whose ModelProto fields have other
# wire types is not ONNX: TensorFlow's GraphDef and Paddle's ProgramDesc both start with a length-
# delimited field 1, where ONNX has its ir_version, so a file cannot pass for both.
_MODEL_FIELDS = {1: _VARINT, 2: _LEN, 3: _LEN, 4: _LEN, 5: _VARINT, 6: _LEN, 7: _LEN, 8: _LEN, 14: _LEN, 20: _LEN}
_MODEL_FIELDS.update({25: _LEN, 26: _LEN})

# The messages that can hold tensors, and which of their fields hold which message (onnx.proto).
_CHILDREN: Dict[str, Dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {
        5: "TensorProto",
        6: "GraphProto",
        10: "TensorProto",
        11: "GraphProto",
        22: "SparseTensorProto",
        23: "SparseTensorProto",
    },
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "TensorProto": {13: "StringStringEntryProto"},
    "StringStringEntryProto": {},
}
# How each message is named in a refusal: field numbers of its name (and a NodeProto's op type).
_NAME_FIELD = {"GraphProto": 2, "NodeProto": 3, "AttributeProto": 1, "TensorProto": 8, "FunctionProto": 1}
_OP_TYPE, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 4, 13, 14, 1
# What a child message is, as seen from its parent (for the ``where`` of a refusal).
_ROLE = {
    ("ModelProto", 7): "graph",
    ("ModelProto", 20): "training info",
    ("ModelProto", 25): "function",
    ("GraphProto", 1): "node",
    ("GraphProto", 5): "initializer",
    ("GraphProto", 15): "sparse initializer",
    ("NodeProto", 5): "attribute",
    ("AttributeProto", 5): "tensor",
    ("AttributeProto", 6): "graph",
    ("AttributeProto", 10): "tensor",
    ("AttributeProto", 11): "graph",
    ("AttributeProto", 22): "sparse tensor",
    ("AttributeProto", 23): "sparse tensor",
    ("SparseTensorProto", 1): "values",
    ("SparseTensorProto", 2): "indices",
    ("TrainingInfoProto", 1): "initialization graph",
    ("TrainingInfoProto", 2): "algorithm graph",
    ("FunctionProto", 7): "node",
    ("FunctionProto", 11): "attribute",
}


def _varint(data: Data, pos: int, end: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise NotProtobuf(f"a number runs past its end at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise NotProtobuf(f"a number longer than ten bytes ends at byte {pos}")


def _fields(data: Data, start: int, end: int, depth: int = 0) -> Iterator[Tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field of the message in
    ``data[start:end]``; for a length-delimited field, its bytes are ``data[value:end]``."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotProtobuf(f"field number 0 at byte {at}")
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, pos
            continue
        if wire == _LEN:
            length, pos = _varint(data, pos, end)
            value, pos = pos, pos + length
        elif wire in (_I64, _I32):
            value, pos = pos, pos + (8 if wire == _I64 else 4)
        elif wire == _GROUP_START:  # a deprecated group: skipped as an unknown field
            value, pos = pos, _skip_group(data, pos, end, number, depth + 1)
        else:
            raise NotProtobuf(f"wire type {wire} at byte {at}")
        if pos > end:
            raise NotProtobuf(f"field {number} at byte {at} runs past the end of its message")
        yield number, wire, value, pos


def _skip_group(data: Data, pos: int, end: int, number: int, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise NotProtobuf("groups nested too deeply")
    while pos < end:
        key, pos = _varint(data, pos, end)
        if key & 7 == _GROUP_END:
            if key >> 3 != number:
                raise NotProtobuf(f"group {number} closed as group {key >> 3}")
            return pos
        if key & 7 == _GROUP_START:
            pos = _skip_group(data, pos, end, key >> 3, depth + 1)
        elif key & 7 == _VARINT:
            pos = _varint(data, pos, end)[1]
        elif key & 7 == _LEN:
            length, pos = _varint(data, pos, end)
            pos += length
        elif key & 7 in (_I64, _I32):
            pos += 8 if key & 7 == _I64 else 4
        else:
            raise NotProtobuf(f"wire type {key & 7} in group {number}")
    raise NotProtobuf(f"group {number} is never closed")


def looks_like_onnx(data: Data) -> bool:
    """Whether the file is shaped like an ONNX ModelProto: every ModelProto field with its wire type
    and a graph. Raises NotProtobuf when it is no protobuf message at all."""
    has_graph = False
    for number, wire, _, _ in _fields(data, 0, len(data)):
        expected = _MODEL_FIELDS.get(number)
        if expected is not None and expected != wire:
            return False
        has_graph |= number == 7
    return has_graph


def outside_on_the_wire(data: Data) -> Optional[Outside]:
    """The first reference outside the file, found by walking the protobuf wire format."""
    return _walk(data, 0, len(data), "ModelProto", "", 0)


def _walk(data: Data, start: int, end: int, message: str, where: str, depth: int) -> Optional[Outside]:
    if depth > _MAX_DEPTH:
        raise NotProtobuf(f"messages nested more than {_MAX_DEPTH} deep")
    children = _CHILDREN[message]
    name = op_type = ""
    nested: List[Tuple[int, int, int]] = []
    entries: List[Tuple[str, str]] = []  # a TensorProto's external_data (key, value)
    external = False
    for number, wire, value, stop in _fields(data, start, end, depth):
        if number in children and wire == _LEN:  # another wire type: an unknown field, as protobuf has it
            nested.append((number, value, stop))
        elif wire == _LEN and number == _NAME_FIELD.get(message):
            name = data[value:stop].decode("utf-8", "replace")
        elif message == "NodeProto" and number == _OP_TYPE and wire == _LEN:
            op_type = data[value:stop].decode("utf-8", "replace")
        elif message == "TensorProto" and number == _TENSOR_DATA_LOCATION and wire == _VARINT:
            external |= value == _EXTERNAL  # any EXTERNAL counts, whichever occurrence protobuf keeps
        elif message == "StringStringEntryProto" and number in (1, 2) and wire == _LEN:
            entries.append(("key" if number == 1 else "value", data[value:stop].decode("utf-8", "replace")))
    here = _describe(where, message, name, op_type)
    if message == "StringStringEntryProto":
        pairs = dict(entries)
        return Outside(where, f"{pairs.get('key', '')}={pairs.get('value', '')}")
    if message == "NodeProto" and op_type == "EPContext":
        return Outside(here, _epcontext_file(data, nested), epcontext=True)
    locations: List[str] = []
    for number, child_start, child_end in nested:
        if message == "TensorProto":  # its external_data entries
            entry = _walk(data, child_start, child_end, "StringStringEntryProto", here, depth + 1)
            if entry is not None:
                locations.append(entry.reference)
            continue
        found = _walk(data, child_start, child_end, children[number], _child(here, message, number), depth + 1)
        if found is not None:
            return found
    if message == "TensorProto" and (external or locations):
        return Outside(here, _location(locations))
    return None


def _epcontext_file(data: Data, attributes: List[Tuple[int, int, int]]) -> str:
    """The ``ep_cache_context`` attribute's string of an EPContext node (its file, when not embedded)."""
    for _, start, end in attributes:
        name = text = ""
        for number, wire, value, stop in _fields(data, start, end):
            if number == 1 and wire == _LEN:
                name = data[value:stop].decode("utf-8", "replace")
            elif number == 4 and wire == _LEN:  # AttributeProto.s
                text = data[value:stop][:200].decode("utf-8", "replace")
        if name == "ep_cache_context":
            return text
    return ""


def _location(entries: List[str]) -> str:
    """The file an external tensor names (its "location" entry), else all its entries."""
    for entry in entries:
        key, _, value = entry.partition("=")
        if key == "location":
            return value
    return "; ".join(entries) or "(an external file, location not given)"


def _describe(where: str, message: str, name: str, op_type: str = "") -> str:
    named = f"{where} {name!r}" if name else where
    return f"{named} ({op_type or '?'})" if message == "NodeProto" else named


def _child(here: str, message: str, number: int) -> str:
    role = _ROLE[(message, number)]
    return f"{here} > {role}" if here else role


def onnx_package() -> Any:
    """The onnx package, where installed (it is not a daemon dependency), else None."""
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def outside_with_package(onnx: Any, data: Data) -> Optional[Outside]:
    """As :func:`_outside_on_the_wire`, on the onnx package's data model."""
    from google.protobuf.message import DecodeError  # onnx's own dependency

    try:
        model = onnx.ModelProto.FromString(data if isinstance(data, bytes) else data[:])
    except DecodeError as exc:
        raise NotProtobuf(str(exc)) from None
    return _package_model(model)


def _package_model(model: Any) -> Optional[Outside]:
    items: List[Tuple[str, str, Any]] = [("graph", "GraphProto", model.graph)] if model.HasField("graph") else []
    for info in model.training_info:
        items += [
            ("training info > initialization graph", "GraphProto", info.initialization),
            ("training info > algorithm graph", "GraphProto", info.algorithm),
        ]
    items += [("function", "FunctionProto", f) for f in model.functions]
    return _package_items(items, 0)


def _package_items(items: List[Tuple[str, str, Any]], depth: int) -> Optional[Outside]:
    if depth > _MAX_DEPTH:
        raise NotProtobuf(f"messages nested more than {_MAX_DEPTH} deep")
    for where, kind, message in items:
        found = _package_message(where, kind, message, depth)
        if found is not None:
            return found
    return None


def _package_message(where: str, kind: str, message: Any, depth: int) -> Optional[Outside]:
    if kind == "TensorProto":
        here = _describe(where, kind, message.name)
        if message.data_location == _EXTERNAL or len(message.external_data):
            return Outside(here, _location([f"{e.key}={e.value}" for e in message.external_data]))
        return None
    if kind == "SparseTensorProto":
        values = [(f"{where} > values", "TensorProto", message.values)] if message.HasField("values") else []
        indices = [(f"{where} > indices", "TensorProto", message.indices)] if message.HasField("indices") else []
        return _package_items(values + indices, depth + 1)
    if kind == "NodeProto":
        here = _describe(where, kind, message.name, message.op_type)
        if message.op_type == "EPContext":
            context = next((a.s for a in message.attribute if a.name == "ep_cache_context"), b"")
            return Outside(here, context[:200].decode("utf-8", "replace"), epcontext=True)
        return _package_items([(f"{here} > attribute", "AttributeProto", a) for a in message.attribute], depth + 1)
    here = _describe(where, kind, message.name)
    children: List[Tuple[str, str, Any]] = []
    if kind == "GraphProto":
        children += [(f"{here} > node", "NodeProto", n) for n in message.node]
        children += [(f"{here} > initializer", "TensorProto", t) for t in message.initializer]
        children += [(f"{here} > sparse initializer", "SparseTensorProto", s) for s in message.sparse_initializer]
    elif kind == "FunctionProto":
        children += [(f"{here} > node", "NodeProto", n) for n in message.node]
        children += [(f"{here} > attribute", "AttributeProto", a) for a in message.attribute_proto]
    elif kind == "AttributeProto":
        if message.HasField("t"):
            children.append((f"{here} > tensor", "TensorProto", message.t))
        if message.HasField("g"):
            children.append((f"{here} > graph", "GraphProto", message.g))
        if message.HasField("sparse_tensor"):
            children.append((f"{here} > sparse tensor", "SparseTensorProto", message.sparse_tensor))
        children += [(f"{here} > tensor", "TensorProto", t) for t in message.tensors]
        children += [(f"{here} > graph", "GraphProto", g) for g in message.graphs]
        children += [(f"{here} > sparse tensor", "SparseTensorProto", s) for s in message.sparse_tensors]
    return _package_items(children, depth + 1)
