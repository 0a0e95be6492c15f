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
repeated message may appear in pieces), so they see what an engine's protobuf parser sees. Written
at the Python 3.6 language level: a device worker imports it with the runtime adapters (README,
"Device workers").
"""

import mmap
import re
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from xml.parsers import expat

from tenantd import onnxrefs
from tenantd.errors import RuntimeFailure
from tenantwire import irbundle

__all__ = [
    "IR_BUNDLE",
    "ONNX",
    "OPAQUE",
    "TFLITE",
    "ModelFileRefused",
    "check_self_contained",
    "largest_declared_tensor",
]

ONNX = "onnx"
TFLITE = "tflite"
IR_BUNDLE = "openvino-ir-bundle"
OPAQUE = "opaque"  # a format this module cannot inspect, accepted only where the caller says so

# False forces the wire-format walker even where the onnx package is installed (tests use it to
# check the path the daemon takes without onnx).
use_onnx_package = True

_DIGITS = re.compile(r"[0-9]+")
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

    def to_wire(self) -> Dict[str, str]:
        return {"reason": self.reason, "where": self.where, "reference": self.reference}


# A file's contents: bytes, or a read-only memory map of the file (indexing gives ints and slicing
# gives bytes in both), so checking a path reads only the parts the check looks at.
_Data = onnxrefs.Data


def check_self_contained(source: Union[bytes, Path], *, accept_opaque: bool = False) -> str:
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
def _contents(source: Union[bytes, Path]) -> Iterator[_Data]:
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
    (exactly model.xml and model.bin, stored) is :mod:`tenantwire.irbundle`'s to check."""
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


def _ir_constants(xml: bytes) -> List[Tuple[str, str, str]]:
    """(layer name, offset, size) of every weights range the IR reads: a Const layer's ``data``,
    and any element of an older IR's ``blobs``. Document type declarations are refused: an entity
    could name a file, and OpenVINO's IR never has one."""
    found: List[Tuple[str, str, str]] = []
    stack: List[Tuple[str, Dict[str, str]]] = []

    def start(tag: str, attrs: Dict[str, str]) -> None:
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

    def field(self, table: int, index: int) -> Optional[int]:
        """Where field ``index`` of the table at ``table`` is stored, or None when absent."""
        vtable = table - self._read("<i", table)
        if 4 + 2 * index >= self._read("<H", vtable):
            return None
        offset = self._read("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str) -> int:
        pos = self.field(table, index)
        return 0 if pos is None else self._read(fmt, pos)

    def tables(self, table: int, index: int) -> List[int]:
        """The tables of a vector-of-tables field."""
        pos = self.field(table, index)
        if pos is None:
            return []
        vector = self.ref(pos)
        return [self.ref(vector + 4 + 4 * i) for i in range(self._read("<I", vector))]

    def ints(self, table: int, index: int) -> List[int]:
        """The int32s of a vector-of-int32 field."""
        pos = self.field(table, index)
        if pos is None:
            return []
        vector = self.ref(pos)
        return [self._read("<i", vector + 4 + 4 * i) for i in range(self._read("<I", vector))]

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
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_EXTERNAL_BUFFER = 0, 1, 2, 3, 10
# Bytes per element of TFLite's TensorType values (schema.fbs); strings, resources and variants,
# whose size the shape does not say, count as one byte.
_TENSOR_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2}
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
    users: Dict[int, str] = {}  # buffer index -> a tensor that uses it, to name in a refusal
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


def largest_declared_tensor(source: Union[bytes, Path]) -> Optional[Tuple[str, int]]:
    """The largest tensor a TFLite model declares, as (name, bytes), from its shapes alone (a
    dimension left open counts as 1); None for other formats. Whatever else a runtime needs, it
    needs at least this much memory to run the model, so the probe can refuse before loading it."""
    with _contents(source) as data:
        if data[4:8] != b"TFL3":
            return None
        flat = _Flat(data)
        largest: Optional[Tuple[str, int]] = None
        for subgraph in flat.tables(flat.ref(0), _MODEL_SUBGRAPHS):
            for tensor in flat.tables(subgraph, _SUBGRAPH_TENSORS):
                size = _TENSOR_TYPE_BYTES.get(flat.scalar(tensor, _TENSOR_TYPE, "<b"), 1)
                for dim in flat.ints(tensor, _TENSOR_SHAPE):
                    size *= max(dim, 1)
                if largest is None or size > largest[1]:
                    largest = (flat.string(tensor, _TENSOR_NAME), size)
        return largest


def _check_range(data: _Data, offset: int, size: int, what: str) -> None:
    # An offset of 0 or 1 means "not stored outside the flatbuffer" in TFLite's schema.
    if offset > 1 and offset + size > len(data):
        raise ModelFileRefused(
            f"{what} lies at bytes {offset}..{offset + size}, past the end of the {len(data)}-byte file",
            where=what,
            reference=f"bytes {offset}..{offset + size}",
        )


# ------------------------------------------------------------------------------------------- ONNX


def _outside_on_the_wire(data: _Data) -> Optional[onnxrefs.Outside]:
    return onnxrefs.outside_on_the_wire(data)  # a seam: tests check which reader ran


def _check_onnx(data: _Data) -> bool:
    """Refuse an ONNX model (anything that parses as one) that refers outside itself. Returns
    whether the file is an ONNX model; False for a file in a format this module cannot read."""
    is_onnx = False
    try:
        is_onnx = onnxrefs.looks_like_onnx(data)
        package = onnxrefs.onnx_package() if use_onnx_package else None
        outside = _outside_on_the_wire(data) if package is None else onnxrefs.outside_with_package(package, data)
    except onnxrefs.NotProtobuf as exc:
        # ONNX writers put ir_version (field 1, a number: byte 0x08) first, and TensorRT takes such a
        # file for ONNX: one that then does not parse is a broken ONNX model, not another format.
        if is_onnx or data[:1] == b"\x08":
            raise ModelFileRefused(f"not a well-formed ONNX model: {exc}", where="the ONNX protobuf") from None
        return False
    if outside is not None:
        raise _refusal(outside)
    return is_onnx


def _refusal(outside: onnxrefs.Outside) -> ModelFileRefused:
    if outside.epcontext:
        return ModelFileRefused(
            f"{outside.where} is an EPContext node: it carries an engine's compiled context, or names a file "
            f"holding one ({outside.reference!r}), which tenantd cannot check; submit the portable ONNX graph",
            where=outside.where,
            reference=outside.reference,
        )
    return ModelFileRefused(
        f"{outside.where} keeps its data outside the model file, in {outside.reference!r}: tenantd takes only "
        f"self-contained model files (save the model with its tensors inside it: {_SELF_CONTAINED_ONNX})",
        where=outside.where,
        reference=outside.reference,
    )
