"""What a submitted model file may refer to: nothing but its own bytes.

A tenant's model file is untrusted, and several formats can point outside themselves. ONNX tensors
can keep their data in external files (``data_location = EXTERNAL`` with a ``location``), which
OpenVINO resolves against the daemon's working directory: a tenant could read back, as a model
output, any file the daemon can read (``/etc/passwd``, ``tenantd.db``, another tenant's model). An
OpenVINO IR ``.xml`` takes its weights from a ``.bin`` file beside it, and its Const ops from
``offset``/``size`` ranges of those weights; TFLite buffers (and custom options) of large models lie
at an ``offset``/``size`` of the file, and newer TFLite files name external weight files. This
module owns the rule that every such reference stays inside the submitted bytes.
:func:`check_self_contained` is its one entry point; :meth:`tenantd.runtimes.base.Runtime.load`
calls it before any engine sees a file, so the probe process and the daemon refuse such a file
alike, with a :class:`ModelFileRefused` naming the tensor or op and what it refers to. A format this
module cannot inspect (a TensorFlow ``.pb`` or a PaddlePaddle model, which OpenVINO also reads and
which can name other files) is refused too, unless the runtime's own format is one that keeps
everything in the file (a TensorRT engine). ONNX is read with the ``onnx`` package's own data model
where it is installed (it is not a daemon dependency) and otherwise by walking the protobuf wire
format; both follow protobuf's rules (a field of an unexpected wire type is an unknown field, and a
repeated message may appear in pieces), so they see what an engine's protobuf parser sees.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

from tenantd.runtimes import irbundle
from tenantd.runtimes.base import RuntimeFailure

__all__ = ["IR_BUNDLE", "ONNX", "OPAQUE", "TFLITE", "ModelFileRefused", "check_self_contained"]

ONNX = "onnx"
TFLITE = "tflite"
IR_BUNDLE = "openvino-ir-bundle"
OPAQUE = "opaque"  # a format this module cannot inspect, accepted only where the caller says so

# False forces the wire-format walker even where the onnx package is installed (tests use it to
# check the path the daemon takes without onnx).
use_onnx_package = True

_DIGITS = re.compile(r"[0-9]+")
# Deeper nesting than protobuf's default recursion limit: engines refuse such a file anyway.
_MAX_DEPTH = 100
_SELF_CONTAINED_ONNX = "onnx.save_model(model, path, save_as_external_data=False)"


class ModelFileRefused(RuntimeFailure):
    """A model file refers to something outside its own bytes, or is in a format whose references
    cannot be checked. ``where`` names the tensor, op or part of the file; ``reference`` what it
    points at (a path, a byte range)."""

    def __init__(self, reason: str, where: str = "", reference: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where
        self.reference = reference

    def to_wire(self) -> dict[str, str]:
        return {"reason": self.reason, "where": self.where, "reference": self.reference}


# A file's contents: bytes, or a read-only memory map of the file (indexing gives ints and slicing
# gives bytes in both), so checking a path reads only the parts the check looks at.
_Data = bytes | mmap.mmap


def check_self_contained(source: bytes | Path, *, accept_opaque: bool = False) -> str:
    """Raise :class:`ModelFileRefused` unless the model file ``source`` (its bytes, or its path)
    refers to nothing outside itself. Returns the format found: :data:`ONNX`, :data:`TFLITE`,
    :data:`IR_BUNDLE`, or, only when ``accept_opaque`` is true, :data:`OPAQUE` for a file in a
    format this module cannot inspect (it is then the caller's engine's own format)."""
    with _contents(source) as data:
        if irbundle.is_bundle(data[:4]):
            _check_ir_bundle(data)
            return IR_BUNDLE
        if data[4:8] == b"TFL3":
            _check_tflite(data)
            return TFLITE
        if data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
            raise ModelFileRefused(
                "an OpenVINO IR .xml on its own reads its weights from a .bin file beside it, outside the "
                f"submitted bytes: submit the .xml and .bin together as one {irbundle.SUFFIX} bundle "
                "(tenantctl submit model.xml and the client library build it)",
                where="model.xml",
                reference="model.bin",
            )
        if _check_onnx(data):
            return ONNX
        if accept_opaque:
            return OPAQUE
        raise ModelFileRefused(
            "this file is not an ONNX model, a TFLite model or an OpenVINO IR bundle, the formats whose "
            "references tenantd can check; other formats an engine reads (TensorFlow .pb, PaddlePaddle, "
            "...) may name files beside the model, so they are not accepted: convert the model to one of these"
        )


@contextmanager
def _contents(source: bytes | Path) -> Iterator[_Data]:
    if not isinstance(source, Path):
        yield bytes(source)
        return
    with source.open("rb") as file:
        if file.seek(0, 2) == 0:
            yield b""  # mmap refuses an empty file
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


# ---------------------------------------------------------------------------------- OpenVINO IR


def _check_ir_bundle(data: _Data) -> None:
    """Every Const's ``offset``/``size`` lies inside the bundle's own weights. The bundle's shape
    (exactly model.xml and model.bin, stored) is :mod:`tenantd.runtimes.irbundle`'s to check."""
    try:
        xml, weights = irbundle.unpack(data if isinstance(data, bytes) else data[:])
    except irbundle.BundleError as exc:
        raise ModelFileRefused(str(exc), where="the IR bundle") from None
    for layer, offset, size in _ir_constants(xml):
        where = f"Const layer {layer!r} of model.xml"
        # Plain digits only: Python's int() also takes "1_000" or " +5", which OpenVINO reads otherwise.
        if not (_DIGITS.fullmatch(offset) and _DIGITS.fullmatch(size)):
            raise ModelFileRefused(
                f"{where} has offset {offset!r} and size {size!r}, which are not byte counts", where=where
            )
        start, length = int(offset), int(size)
        if start + length > len(weights):
            raise ModelFileRefused(
                f"{where} reads bytes {start}..{start + length} of the weights, but the bundle's model.bin "
                f"holds {len(weights)} bytes: the IR does not belong to these weights",
                where=where,
                reference=f"model.bin[{start}:{start + length}]",
            )


def _ir_constants(xml: bytes) -> list[tuple[str, str, str]]:
    """(layer name, offset, size) of every weights range the IR reads: a Const layer's ``data``,
    and any element of an older IR's ``blobs``. Document type declarations are refused: an entity
    could name a file, and OpenVINO's IR never has one."""
    found: list[tuple[str, str, str]] = []
    stack: list[tuple[str, dict[str, str]]] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        layer = next((a for t, a in reversed(stack) if t == "layer"), None)
        if layer is not None and ("offset" in attrs or "size" in attrs):
            const = tag == "data" and layer.get("type", "").lower() == "const"
            in_blobs = any(t == "blobs" for t, _ in stack)
            if const or in_blobs:
                found.append(
                    (layer.get("name", layer.get("id", "?")), attrs.get("offset", "0"), attrs.get("size", "0"))
                )
        stack.append((tag, attrs))

    def doctype(*_: Any) -> None:
        raise ModelFileRefused(
            "model.xml has a document type declaration, which OpenVINO IR never has (its entities could "
            "name files outside the bundle)",
            where="model.xml",
        )

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as exc:
        raise ModelFileRefused(f"model.xml is not well-formed XML: {exc}", where="model.xml") from None
    return found


# ----------------------------------------------------------------------------------------- TFLite


class _Flat:
    """Bounds-checked reads of a flatbuffer: a malformed file is refused, never read past its end."""

    def __init__(self, data: _Data) -> None:
        self.data = data

    def _read(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):  # struct counts a negative one from the end
            raise _malformed_tflite(f"a read at byte {pos} lies outside the file")
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def ref(self, pos: int) -> int:
        """Follow the unsigned offset stored at ``pos``."""
        return pos + self._read("<I", pos)

    def field(self, table: int, index: int) -> int | None:
        """Where field ``index`` of the table at ``table`` is stored, or None when absent."""
        vtable = table - self._read("<i", table)
        if 4 + 2 * index >= self._read("<H", vtable):
            return None
        offset = self._read("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str) -> int:
        pos = self.field(table, index)
        return 0 if pos is None else self._read(fmt, pos)

    def tables(self, table: int, index: int) -> list[int]:
        """The tables of a vector-of-tables field."""
        pos = self.field(table, index)
        if pos is None:
            return []
        vector = self.ref(pos)
        return [self.ref(vector + 4 + 4 * i) for i in range(self._read("<I", vector))]

    def string(self, table: int, index: int) -> str:
        pos = self.field(table, index)
        if pos is None:
            return ""
        start = self.ref(pos)
        length = self._read("<I", start)
        if start + 4 + length > len(self.data):
            raise _malformed_tflite(f"a string at byte {start} runs past the end of the file")
        return self.data[start + 4 : start + 4 + length].decode("utf-8", "replace")


def _malformed_tflite(why: str) -> ModelFileRefused:
    return ModelFileRefused(f"not a well-formed TFLite file: {why}", where="the TFLite flatbuffer")


# Field indices in TFLite's schema.fbs (the generated code's vtable slots, (slot - 4) / 2).
_MODEL_SUBGRAPHS, _MODEL_BUFFERS, _MODEL_EXTERNAL_GROUPS, _MODEL_EXTERNAL_BUFFERS = 2, 4, 8, 9
_SUBGRAPH_TENSORS, _SUBGRAPH_OPERATORS, _SUBGRAPH_NAME = 0, 3, 4
_TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_EXTERNAL_BUFFER = 2, 3, 10
_BUFFER_OFFSET, _BUFFER_SIZE = 1, 2
_OPERATOR_LARGE_OPTIONS_OFFSET, _OPERATOR_LARGE_OPTIONS_SIZE = 9, 10


def _check_tflite(data: _Data) -> None:
    """Buffers (and custom options) stored after the flatbuffer, at ``offset``/``size`` (models over
    2 GiB), lie inside the file; no tensor uses an external buffer (a weights file named in
    ``external_buffer_groups``)."""
    flat = _Flat(data)
    model = flat.ref(0)
    if flat.tables(model, _MODEL_EXTERNAL_GROUPS) or flat.tables(model, _MODEL_EXTERNAL_BUFFERS):
        groups = [flat.string(g, 0) for g in flat.tables(model, _MODEL_EXTERNAL_GROUPS)]
        raise ModelFileRefused(
            f"the TFLite model keeps weights in external files {groups}: tenantd takes only models whose "
            "weights are inside the file",
            where="external_buffer_groups",
            reference=", ".join(groups),
        )
    users: dict[int, str] = {}  # buffer index -> a tensor that uses it, to name in a refusal
    for s, subgraph in enumerate(flat.tables(model, _MODEL_SUBGRAPHS)):
        graph = flat.string(subgraph, _SUBGRAPH_NAME) or f"subgraph {s}"
        for tensor in flat.tables(subgraph, _SUBGRAPH_TENSORS):
            name = f"tensor {flat.string(tensor, _TENSOR_NAME)!r} of {graph}"
            if flat.scalar(tensor, _TENSOR_EXTERNAL_BUFFER, "<I"):
                raise ModelFileRefused(
                    f"{name} uses an external buffer (weights in a file outside the model): tenantd takes only "
                    "models whose weights are inside the file",
                    where=name,
                    reference=f"external buffer {flat.scalar(tensor, _TENSOR_EXTERNAL_BUFFER, '<I')}",
                )
            users.setdefault(flat.scalar(tensor, _TENSOR_BUFFER, "<I"), name)
        for o, operator in enumerate(flat.tables(subgraph, _SUBGRAPH_OPERATORS)):
            _check_range(
                data,
                flat.scalar(operator, _OPERATOR_LARGE_OPTIONS_OFFSET, "<Q"),
                flat.scalar(operator, _OPERATOR_LARGE_OPTIONS_SIZE, "<Q"),
                f"the custom options of operator {o} of {graph}",
            )
    for b, buffer in enumerate(flat.tables(model, _MODEL_BUFFERS)):
        _check_range(
            data,
            flat.scalar(buffer, _BUFFER_OFFSET, "<Q"),
            flat.scalar(buffer, _BUFFER_SIZE, "<Q"),
            f"buffer {b}" + (f" ({users[b]})" if b in users else ""),
        )


def _check_range(data: _Data, offset: int, size: int, what: str) -> None:
    # An offset of 0 or 1 means "not stored outside the flatbuffer" in TFLite's schema.
    if offset > 1 and offset + size > len(data):
        raise ModelFileRefused(
            f"{what} lies at bytes {offset}..{offset + size}, past the end of the {len(data)}-byte file",
            where=what,
            reference=f"bytes {offset}..{offset + size}",
        )


# ------------------------------------------------------------------------------------------- ONNX


class _NotProtobuf(Exception):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class _Outside:
    """One reference outside the file: where it is, and what it names."""

    where: str
    reference: str
    epcontext: bool = False  # an EPContext node, not a tensor

    def refusal(self) -> ModelFileRefused:
        if self.epcontext:
            return ModelFileRefused(
                f"{self.where} is an EPContext node: it carries an engine's compiled context, or names a file "
                f"holding one ({self.reference!r}), which tenantd cannot check; submit the portable ONNX graph",
                where=self.where,
                reference=self.reference,
            )
        return ModelFileRefused(
            f"{self.where} keeps its data outside the model file, in {self.reference!r}: tenantd takes only "
            f"self-contained model files (save the model with its tensors inside it: {_SELF_CONTAINED_ONNX})",
            where=self.where,
            reference=self.reference,
        )


def _check_onnx(data: _Data) -> bool:
    """Refuse an ONNX model (anything that parses as one) that refers outside itself. Returns
    whether the file is an ONNX model; False for a file in a format this module cannot read."""
    is_onnx = False
    try:
        is_onnx = _looks_like_onnx(data)
        package = _onnx_package() if use_onnx_package else None
        outside = _outside_on_the_wire(data) if package is None else _outside_with_package(package, data)
    except _NotProtobuf as exc:
        # ONNX writers put ir_version (field 1, a number: byte 0x08) first, and TensorRT takes such a
        # file for ONNX: one that then does not parse is a broken ONNX model, not another format.
        if is_onnx or data[:1] == b"\x08":
            raise ModelFileRefused(f"not a well-formed ONNX model: {exc}", where="the ONNX protobuf") from None
        return False
    if outside is not None:
        raise outside.refusal()
    return is_onnx


# Protobuf wire types.
_VARINT, _I64, _LEN, _GROUP_START, _GROUP_END, _I32 = 0, 1, 2, 3, 4, 5

# ModelProto's fields and their wire types (onnx.proto). A file whose ModelProto fields have other
# wire types is not ONNX: TensorFlow's GraphDef and Paddle's ProgramDesc both start with a length-
# delimited field 1, where ONNX has its ir_version, so a file cannot pass for both.
_MODEL_FIELDS = {1: _VARINT, 2: _LEN, 3: _LEN, 4: _LEN, 5: _VARINT, 6: _LEN, 7: _LEN, 8: _LEN, 14: _LEN, 20: _LEN}
_MODEL_FIELDS |= {25: _LEN, 26: _LEN}

# The messages that can hold tensors, and which of their fields hold which message (onnx.proto).
_CHILDREN: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto"}
    | {22: "SparseTensorProto", 23: "SparseTensorProto"},
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


def _varint(data: _Data, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _NotProtobuf(f"a number runs past its end at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _NotProtobuf(f"a number longer than ten bytes ends at byte {pos}")


def _fields(data: _Data, start: int, end: int, depth: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field of the message in
    ``data[start:end]``; for a length-delimited field, its bytes are ``data[value:end]``."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _NotProtobuf(f"field number 0 at byte {at}")
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
            raise _NotProtobuf(f"wire type {wire} at byte {at}")
        if pos > end:
            raise _NotProtobuf(f"field {number} at byte {at} runs past the end of its message")
        yield number, wire, value, pos


def _skip_group(data: _Data, pos: int, end: int, number: int, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise _NotProtobuf("groups nested too deeply")
    while pos < end:
        key, pos = _varint(data, pos, end)
        if key & 7 == _GROUP_END:
            if key >> 3 != number:
                raise _NotProtobuf(f"group {number} closed as group {key >> 3}")
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
            raise _NotProtobuf(f"wire type {key & 7} in group {number}")
    raise _NotProtobuf(f"group {number} is never closed")


def _looks_like_onnx(data: _Data) -> bool:
    """Whether the file is shaped like an ONNX ModelProto: every ModelProto field with its wire type
    and a graph. Raises _NotProtobuf when it is no protobuf message at all."""
    has_graph = False
    for number, wire, _, _ in _fields(data, 0, len(data)):
        expected = _MODEL_FIELDS.get(number)
        if expected is not None and expected != wire:
            return False
        has_graph |= number == 7
    return has_graph


def _outside_on_the_wire(data: _Data) -> _Outside | None:
    """The first reference outside the file, found by walking the protobuf wire format."""
    return _walk(data, 0, len(data), "ModelProto", "", 0)


def _walk(data: _Data, start: int, end: int, message: str, where: str, depth: int) -> _Outside | None:
    if depth > _MAX_DEPTH:
        raise _NotProtobuf(f"messages nested more than {_MAX_DEPTH} deep")
    children = _CHILDREN[message]
    name = op_type = ""
    nested: list[tuple[int, int, int]] = []
    entries: list[tuple[str, str]] = []  # a TensorProto's external_data (key, value)
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
        return _Outside(where, f"{pairs.get('key', '')}={pairs.get('value', '')}")
    if message == "NodeProto" and op_type == "EPContext":
        return _Outside(here, _epcontext_file(data, nested), epcontext=True)
    locations: list[str] = []
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
        return _Outside(here, _location(locations))
    return None


def _epcontext_file(data: _Data, attributes: list[tuple[int, int, int]]) -> str:
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


def _location(entries: list[str]) -> str:
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


def _onnx_package() -> Any:
    """The onnx package, where installed (it is not a daemon dependency), else None."""
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def _outside_with_package(onnx: Any, data: _Data) -> _Outside | None:
    """As :func:`_outside_on_the_wire`, on the onnx package's data model."""
    from google.protobuf.message import DecodeError  # onnx's own dependency

    try:
        model = onnx.ModelProto.FromString(data if isinstance(data, bytes) else data[:])
    except DecodeError as exc:
        raise _NotProtobuf(str(exc)) from None
    return _package_model(model)


def _package_model(model: Any) -> _Outside | None:
    items: list[tuple[str, str, Any]] = [("graph", "GraphProto", model.graph)] if model.HasField("graph") else []
    for info in model.training_info:
        items += [
            ("training info > initialization graph", "GraphProto", info.initialization),
            ("training info > algorithm graph", "GraphProto", info.algorithm),
        ]
    items += [("function", "FunctionProto", f) for f in model.functions]
    return _package_items(items, 0)


def _package_items(items: list[tuple[str, str, Any]], depth: int) -> _Outside | None:
    if depth > _MAX_DEPTH:
        raise _NotProtobuf(f"messages nested more than {_MAX_DEPTH} deep")
    for where, kind, message in items:
        found = _package_message(where, kind, message, depth)
        if found is not None:
            return found
    return None


def _package_message(where: str, kind: str, message: Any, depth: int) -> _Outside | None:
    if kind == "TensorProto":
        here = _describe(where, kind, message.name)
        if message.data_location == _EXTERNAL or len(message.external_data):
            return _Outside(here, _location([f"{e.key}={e.value}" for e in message.external_data]))
        return None
    if kind == "SparseTensorProto":
        values = [(f"{where} > values", "TensorProto", message.values)] if message.HasField("values") else []
        indices = [(f"{where} > indices", "TensorProto", message.indices)] if message.HasField("indices") else []
        return _package_items(values + indices, depth + 1)
    if kind == "NodeProto":
        here = _describe(where, kind, message.name, message.op_type)
        if message.op_type == "EPContext":
            context = next((a.s for a in message.attribute if a.name == "ep_cache_context"), b"")
            return _Outside(here, context[:200].decode("utf-8", "replace"), epcontext=True)
        return _package_items([(f"{here} > attribute", "AttributeProto", a) for a in message.attribute], depth + 1)
    here = _describe(where, kind, message.name)
    children: list[tuple[str, str, Any]] = []
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
