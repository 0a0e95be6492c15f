"""Unit tests for tenantd.modelfile: a model file may refer to nothing outside its own bytes.

Every kind of reference each format has is built into a real model file here (ONNX with
``onnx.helper``, TFLite with the flatbuffer object API, OpenVINO IR converted by OpenVINO) and must
be refused with a reason that names the tensor or op and what it points at; the same files without
the reference must pass. ONNX is checked twice: with the onnx package's data model and with the
protobuf wire-format walker the daemon uses where onnx is not installed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantd import modelfile
from tenantd.errors import RuntimeFailure
from tenantd.modelfile import IR_BUNDLE, ONNX, OPAQUE, TFLITE, ModelFileRefused, check_self_contained
from tenantd.runtimes.base import LoadedModel, Runtime
from tenantwire import irbundle

onnx = pytest.importorskip("onnx", reason="building ONNX test files needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from models import tiny_onnx  # noqa: E402

SECRET = "/etc/passwd"


# ---------------------------------------------------------------------------------- ONNX builders


def _graph(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    name: str = "main",
    out: str = "Y",
    sparse: list[onnx.SparseTensorProto] | None = None,
) -> onnx.GraphProto:
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("X", TensorProto.UINT8, [64])],
        [helper.make_tensor_value_info(out, TensorProto.UINT8, [64])],
        inits,
        sparse_initializer=sparse,
    )


def _model(graph: onnx.GraphProto, **fields: object) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **fields)
    model.ir_version = 9
    return bytes(model.SerializeToString())


def _inline(name: str = "W") -> onnx.TensorProto:
    return numpy_helper.from_array(np.arange(64, dtype=np.uint8), name)


def _ext(name: str = "W", location: str = SECRET) -> onnx.TensorProto:
    return tiny_onnx.external_tensor(name, location, 64)


def onnx_initializer(location: str = SECRET) -> bytes:
    return tiny_onnx.add_bytes(weights_location=location)


def onnx_location_only() -> bytes:
    """data_location = EXTERNAL, but no external_data entries at all."""
    tensor = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[64], data_location=TensorProto.EXTERNAL)
    return _model(_graph([helper.make_node("Add", ["X", "W"], ["Y"], name="add")], [tensor]))


def onnx_entries_only() -> bytes:
    """external_data entries while data_location says DEFAULT."""
    tensor = _ext()
    tensor.data_location = TensorProto.DEFAULT
    return _model(_graph([helper.make_node("Add", ["X", "W"], ["Y"], name="add")], [tensor]))


def onnx_constant(location: str = SECRET) -> bytes:
    const = helper.make_node("Constant", [], ["W"], name="const", value=_ext("", location))
    return _model(_graph([const, helper.make_node("Add", ["X", "W"], ["Y"], name="add")], []))


def onnx_tensors_attribute() -> bytes:
    attribute = helper.make_attribute("tables", [_inline("a"), _ext("b")])
    node = helper.make_node("Identity", ["X"], ["Y"], name="ident")
    node.attribute.append(attribute)
    return _model(_graph([node], []))


def onnx_if(location: str = SECRET) -> bytes:
    then = _graph([helper.make_node("Add", ["X", "W2"], ["T"], name="then_add")], [_ext("W2", location)], "then", "T")
    other = _graph([helper.make_node("Identity", ["X"], ["E"], name="else_id")], [], "else", "E")
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["Y"], name="branch", then_branch=then, else_branch=other)
    return _model(_graph([node], [cond]))


def onnx_loop(location: str = SECRET) -> bytes:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
            helper.make_node("Constant", [], ["K"], name="body_const", value=_ext("", location)),
            helper.make_node("Add", ["v_in", "K"], ["v_out"], name="body_add"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.UINT8, [64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.UINT8, [64]),
        ],
    )
    inits = [numpy_helper.from_array(np.array(1, np.int64), "n"), numpy_helper.from_array(np.array(True), "go")]
    node = helper.make_node("Loop", ["n", "go", "X"], ["Y"], name="loop", body=body)
    return _model(_graph([node], inits))


def onnx_scan(location: str = SECRET) -> bytes:
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "K"], ["s_out"], name="scan_add")],
        "scan body",
        [helper.make_tensor_value_info("s_in", TensorProto.UINT8, [64])],
        [helper.make_tensor_value_info("s_out", TensorProto.UINT8, [64])],
        [_ext("K", location)],
    )
    node = helper.make_node("Scan", ["X"], ["Y"], name="scan", body=body, num_scan_inputs=0)
    return _model(_graph([node], []))


def onnx_sparse_initializer(location: str = SECRET) -> bytes:
    values = _ext("S", location)
    indices = numpy_helper.from_array(np.arange(64, dtype=np.int64), "S_indices")
    sparse = helper.make_sparse_tensor(values, indices, [64])
    return _model(_graph([helper.make_node("Add", ["X", "S"], ["Y"], name="add")], [], sparse=[sparse]))


def onnx_sparse_constant() -> bytes:
    indices = numpy_helper.from_array(np.arange(64, dtype=np.int64), "")
    sparse = helper.make_sparse_tensor(_ext("V"), indices, [64])
    const = helper.make_node("Constant", [], ["W"], name="sparse_const", sparse_value=sparse)
    return _model(_graph([const, helper.make_node("Add", ["X", "W"], ["Y"], name="add")], []))


def onnx_function() -> bytes:
    function = helper.make_function(
        "tenantd.test",
        "AddSecret",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["k"], name="fn_const", value=_ext("")),
            helper.make_node("Add", ["a", "k"], ["b"], name="fn_add"),
        ],
        [helper.make_opsetid("", 17)],
    )
    graph = _graph([helper.make_node("AddSecret", ["X"], ["Y"], name="call", domain="tenantd.test")], [])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tenantd.test", 1)],
        functions=[function],
    )
    model.ir_version = 9
    return bytes(model.SerializeToString())


def onnx_training_info() -> bytes:
    model = onnx.ModelProto.FromString(tiny_onnx.add_bytes())
    info = model.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], [_ext("state")]))
    return bytes(model.SerializeToString())


def onnx_epcontext() -> bytes:
    node = helper.make_node(
        "EPContext", ["X"], ["Y"], name="ctx", domain="com.microsoft", ep_cache_context="ctx_cache.bin", embed_mode=0
    )
    graph = _graph([node], [])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 9
    return bytes(model.SerializeToString())


# Each case: (builder, the ``where`` of the refusal, its ``reference``).
ONNX_CASES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "initializer, absolute path": (onnx_initializer, "graph 'tenantd add bytes' > initializer 'W'", SECRET),
    "initializer, relative path with ..": (
        lambda: onnx_initializer("../../state/tenantd.db"),
        "graph 'tenantd add bytes' > initializer 'W'",
        "../../state/tenantd.db",
    ),
    "data_location only": (
        onnx_location_only,
        "graph 'main' > initializer 'W'",
        "(an external file, location not given)",
    ),
    "external_data entries only": (onnx_entries_only, "graph 'main' > initializer 'W'", SECRET),
    "Constant attribute": (
        onnx_constant,
        "graph 'main' > node 'const' (Constant) > attribute 'value' > tensor",
        SECRET,
    ),
    "tensors attribute": (
        onnx_tensors_attribute,
        "graph 'main' > node 'ident' (Identity) > attribute 'tables' > tensor 'b'",
        SECRET,
    ),
    "If branch": (
        onnx_if,
        "graph 'main' > node 'branch' (If) > attribute 'then_branch' > graph 'then' > initializer 'W2'",
        SECRET,
    ),
    "Loop body": (
        onnx_loop,
        "graph 'main' > node 'loop' (Loop) > attribute 'body' > graph 'body' > node 'body_const' (Constant) "
        "> attribute 'value' > tensor",
        SECRET,
    ),
    "Scan body": (
        onnx_scan,
        "graph 'main' > node 'scan' (Scan) > attribute 'body' > graph 'scan body' > initializer 'K'",
        SECRET,
    ),
    "sparse initializer": (onnx_sparse_initializer, "graph 'main' > sparse initializer > values 'S'", SECRET),
    "sparse Constant": (
        onnx_sparse_constant,
        "graph 'main' > node 'sparse_const' (Constant) > attribute 'sparse_value' > sparse tensor > values 'V'",
        SECRET,
    ),
    "local function": (
        onnx_function,
        "function 'AddSecret' > node 'fn_const' (Constant) > attribute 'value' > tensor",
        SECRET,
    ),
    "training info": (onnx_training_info, "training info > initialization graph 'init' > initializer 'state'", SECRET),
}


@pytest.fixture(params=["onnx package", "wire format", "onnx not installed"])
def onnx_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each ONNX test runs with the onnx package's data model, with the wire-format walker forced,
    and with the onnx package made unimportable (the daemon's situation without the test extras)."""
    if request.param == "onnx package":

        def no_wire(data: object) -> None:
            raise AssertionError("the wire-format walker ran although the onnx package is installed")

        monkeypatch.setattr(modelfile, "_outside_on_the_wire", no_wire)
    elif request.param == "wire format":
        monkeypatch.setattr(modelfile, "use_onnx_package", False)
    else:
        monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    yield str(request.param)


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_onnx_references_outside_the_file_are_refused(onnx_reader: str, case: str) -> None:
    build, where, reference = ONNX_CASES[case]
    with pytest.raises(ModelFileRefused) as info:
        check_self_contained(build())
    refused = info.value
    assert isinstance(refused, RuntimeFailure)  # every load path already handles it as a load failure
    assert (refused.where, refused.reference) == (where, reference)
    assert where in str(refused) and repr(reference) in str(refused)
    assert "save_as_external_data=False" in str(refused)  # what the tenant can do about it


def test_onnx_epcontext_node_is_refused(onnx_reader: str) -> None:
    with pytest.raises(ModelFileRefused, match="EPContext") as info:
        check_self_contained(onnx_epcontext())
    assert info.value.where == "graph 'main' > node 'ctx' (EPContext)"
    assert info.value.reference == "ctx_cache.bin"


@pytest.mark.parametrize(
    "build",
    [
        tiny_onnx.add_bytes,
        lambda: tiny_onnx.mlp(8, [16], 4, seed=1),
        lambda: tiny_onnx.cnn(16, (8, 16), 4, seed=2),
        lambda: _model(_graph([helper.make_node("Add", ["X", "W"], ["Y"], name="add")], [_inline()])),
    ],
    ids=["add", "mlp", "cnn", "inline initializer"],
)
def test_self_contained_onnx_passes(onnx_reader: str, build: Callable[[], bytes]) -> None:
    assert check_self_contained(build()) == ONNX


def test_onnx_that_is_cut_short_is_refused(onnx_reader: str) -> None:
    data = tiny_onnx.mlp(8, [16], 4, seed=1)
    with pytest.raises(ModelFileRefused, match="not a well-formed ONNX model"):
        check_self_contained(data[: len(data) - 7])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers below 16 and payloads below 2**21 bytes)."""
    size = len(payload)
    length = bytes([size & 0x7F | 0x80, size >> 7 & 0x7F | 0x80, size >> 14]) if size >= 128 else bytes([size])
    return bytes([number << 3 | 2]) + length + payload


def test_onnx_nested_deeper_than_protobuf_reads_is_refused(onnx_reader: str) -> None:
    """If inside If, 60 levels (180 messages) deep, written on the wire: the onnx package will not
    even build it, and engines' protobuf parsers stop at 100 levels."""
    graph = _field(1, _field(4, b"Identity"))
    for _ in range(60):
        attribute = _field(1, b"then_branch") + _field(6, graph)  # AttributeProto name, g
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # GraphProto node: NodeProto op_type, attribute
    with pytest.raises(ModelFileRefused, match="not a well-formed ONNX model"):
        check_self_contained(b"\x08\x09" + _field(7, graph))  # ModelProto ir_version, graph


def test_other_protobuf_formats_are_not_taken_for_onnx(onnx_reader: str) -> None:
    """A TensorFlow GraphDef (like a PaddlePaddle ProgramDesc) starts with a length-delimited field 1,
    where ONNX has its ir_version: it is refused as a format tenantd cannot check, and passes only
    for a runtime whose own format it is."""
    node_def = b"\x0a\x05const\x12\x05Const"  # NodeDef: name, op
    graph_def = b"\x0a" + bytes([len(node_def)]) + node_def + b"\x22\x02\x08\x01"  # node, versions
    with pytest.raises(ModelFileRefused, match=r"TensorFlow \.pb, PaddlePaddle"):
        check_self_contained(graph_def)
    assert check_self_contained(graph_def, accept_opaque=True) == OPAQUE


def test_wire_walker_skips_unknown_fields_and_groups_as_protobuf_does() -> None:
    """Unknown fields of every wire type, including a deprecated group, and a known field of an
    unexpected wire type (an unknown field to protobuf), do not hide a reference from the walker."""
    model = onnx.ModelProto.FromString(onnx_initializer())
    unknown = b"\xf8\x07\x01" + b"\xf9\x07" + bytes(8) + b"\xfd\x07" + bytes(4) + b"\xfb\x07\x08\x01\xfc\x07"
    wrong_type = b"\x3d\x00\x00\x00\x00"  # ModelProto field 7 (graph) as fixed32: unknown to protobuf
    data = unknown + wrong_type + bytes(model.SerializeToString())
    assert onnx.ModelProto.FromString(data).graph.initializer[0].name == "W"  # protobuf reads it so too
    refused = modelfile._outside_on_the_wire(data)
    assert refused is not None and refused.reference == SECRET


# ------------------------------------------------------------------------------------------ TFLite


def test_tflite_with_buffers_inside_the_file_passes() -> None:
    model = tiny.mlp(8, [16], 4, seed=1)
    assert check_self_contained(model) == TFLITE
    assert check_self_contained(tiny.with_buffers_after(model)) == TFLITE  # large-model layout, in range


def test_tflite_buffer_past_the_end_of_the_file_is_refused() -> None:
    data = tiny.with_buffers_after(tiny.mlp(8, [16], 4, seed=1), past_end=1)
    with pytest.raises(ModelFileRefused, match=r"past the end of the \d+-byte file") as info:
        check_self_contained(data)
    assert info.value.where == "buffer 4 (tensor 'fc1/bias' of main)"
    assert re.fullmatch(r"bytes \d+\.\.\d+", info.value.reference)


def _tflite_root(data: bytes) -> tiny.schema.ModelT:
    return tiny.schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def _tflite_pack(root: tiny.schema.ModelT) -> bytes:
    builder = tiny.flatbuffers.Builder(1024)
    builder.Finish(root.Pack(builder), file_identifier=tiny.FILE_IDENTIFIER)
    return bytes(builder.Output())


def test_tflite_external_weight_files_are_refused() -> None:
    schema = tiny.schema
    root = _tflite_root(tiny.mlp(8, [16], 4, seed=1))
    root.externalBufferGroups = [schema.ExternalBufferGroupT()]
    root.externalBufferGroups[0].name = "../../tenantd.db"
    with pytest.raises(ModelFileRefused, match="external files") as info:
        check_self_contained(_tflite_pack(root))
    assert info.value.reference == "../../tenantd.db"

    root = _tflite_root(tiny.mlp(8, [16], 4, seed=1))
    root.subgraphs[0].tensors[1].externalBuffer = 1
    with pytest.raises(ModelFileRefused, match="uses an external buffer") as info:
        check_self_contained(_tflite_pack(root))
    assert info.value.where == f"tensor {root.subgraphs[0].tensors[1].name.decode()!r} of main"


def test_tflite_custom_options_past_the_end_are_refused() -> None:
    root = _tflite_root(tiny.unsupported_op_model())
    root.subgraphs[0].operators[0].largeCustomOptionsOffset = 1 << 20
    root.subgraphs[0].operators[0].largeCustomOptionsSize = 16
    with pytest.raises(ModelFileRefused, match="custom options of operator 0 of main"):
        check_self_contained(_tflite_pack(root))


@pytest.mark.parametrize("cut", [12, 40, 200])
def test_tflite_cut_short_is_refused_not_read_past_its_end(cut: int) -> None:
    data = tiny.mlp(8, [16], 4, seed=1)
    with pytest.raises(ModelFileRefused, match="not a well-formed TFLite file"):
        check_self_contained(data[:cut])


# ------------------------------------------------------------------------------------- OpenVINO IR


@pytest.fixture(scope="module")
def ir() -> tuple[bytes, bytes]:
    pytest.importorskip("openvino", reason="converting a model to IR needs OpenVINO")
    return irbundle.unpack(tiny_onnx.ir_bundle(tiny_onnx.mlp(8, [16], 4, seed=1)))


def test_ir_bundle_passes(ir: tuple[bytes, bytes]) -> None:
    assert check_self_contained(irbundle.pack(*ir)) == IR_BUNDLE


@pytest.mark.parametrize("attribute", ["offset", "size"])
def test_ir_const_outside_the_bundled_weights_is_refused(ir: tuple[bytes, bytes], attribute: str) -> None:
    xml, weights = ir
    text = xml.decode()
    first = re.search(r'offset="(\d+)" size="(\d+)"', text)
    assert first is not None
    offset, size = int(first.group(1)), int(first.group(2))
    if attribute == "offset":
        changed = f'offset="{len(weights)}" size="{size}"'
    else:
        changed = f'offset="{offset}" size="{len(weights) - offset + 1}"'
    with pytest.raises(ModelFileRefused, match=r"holds \d+ bytes") as info:
        check_self_contained(irbundle.pack(text.replace(first.group(0), changed, 1).encode(), weights))
    assert info.value.where.startswith("Const layer ") and info.value.reference.startswith("model.bin[")


def test_ir_const_range_must_be_plain_digits(ir: tuple[bytes, bytes]) -> None:
    xml, weights = ir
    text = xml.decode()
    first = re.search(r'offset="(\d+)"', text)
    assert first is not None
    odd = text.replace(first.group(0), 'offset="1_0"', 1).encode()
    with pytest.raises(ModelFileRefused, match="which are not byte counts"):
        check_self_contained(irbundle.pack(odd, weights))


def test_ir_with_a_document_type_is_refused(ir: tuple[bytes, bytes]) -> None:
    xml, weights = ir
    declared = xml.replace(b"<net ", b'<!DOCTYPE net [<!ENTITY secret SYSTEM "/etc/passwd">]>\n<net ', 1)
    with pytest.raises(ModelFileRefused, match="document type declaration"):
        check_self_contained(irbundle.pack(declared, weights))


def test_ir_xml_alone_is_refused(ir: tuple[bytes, bytes], tmp_path: Path) -> None:
    """Even from a path with its .bin beside it: that file is not part of what was submitted."""
    xml, weights = ir
    (tmp_path / "model.xml").write_bytes(xml)
    (tmp_path / "model.bin").write_bytes(weights)
    for source in (xml, tmp_path / "model.xml"):
        with pytest.raises(ModelFileRefused, match=r"\.xml on its own reads its weights from a \.bin file") as info:
            check_self_contained(source)
        assert info.value.reference == "model.bin"


def test_broken_ir_bundle_is_refused(ir: tuple[bytes, bytes]) -> None:
    with pytest.raises(ModelFileRefused, match="not a valid IR bundle"):
        check_self_contained(irbundle.pack(*ir)[:-22])


# ---------------------------------------------------------------------------- any format, the entry


def test_unknown_formats_pass_only_as_a_runtimes_own_format() -> None:
    with pytest.raises(ModelFileRefused, match="not an ONNX model, a TFLite model or an OpenVINO IR bundle"):
        check_self_contained(b"FAULTY{}")
    assert check_self_contained(b"FAULTY{}", accept_opaque=True) == OPAQUE


def test_an_opaque_format_is_still_walked_where_it_parses_as_onnx() -> None:
    """A runtime with its own format (TensorRT) may parse a file as ONNX by its own rule (its first
    byte): any file protobuf reads as a model with external data is refused even there."""
    model = onnx.ModelProto.FromString(onnx_initializer())
    data = bytes(model.SerializeToString()) + b"\x22\x03\x01\x02\x03"  # + a domain (field 4) of the wrong shape
    with pytest.raises(ModelFileRefused, match="keeps its data outside"):
        check_self_contained(data, accept_opaque=True)


@pytest.mark.parametrize(
    "build",
    [onnx_initializer, lambda: tiny.with_buffers_after(tiny.mlp(8, [16], 4, seed=1), past_end=1)],
    ids=["onnx", "tflite"],
)
def test_a_path_is_checked_like_its_bytes(tmp_path: Path, build: Callable[[], bytes]) -> None:
    path = tmp_path / "blob"
    path.write_bytes(build())
    with pytest.raises(ModelFileRefused) as from_path:
        check_self_contained(path)
    with pytest.raises(ModelFileRefused) as from_bytes:
        check_self_contained(path.read_bytes())
    assert from_path.value.to_wire() == from_bytes.value.to_wire()
    path.write_bytes(b"")
    with pytest.raises(ModelFileRefused, match="not an ONNX model"):
        check_self_contained(path)


class _Recording(Runtime):
    """The smallest runtime: records what reached its own loader."""

    name = "recording"
    suffixes = (".onnx",)
    loaded: list[bytes | Path] = []  # noqa: RUF012 - one list for the test

    def _load(self, source: bytes | Path) -> LoadedModel:
        self.loaded.append(source)
        raise RuntimeFailure("loaded")


def test_every_runtime_load_checks_before_the_engine_sees_the_file() -> None:
    with pytest.raises(ModelFileRefused):
        _Recording().load(onnx_initializer())
    assert _Recording.loaded == []
    with pytest.raises(RuntimeFailure, match="loaded"):
        _Recording().load(tiny_onnx.add_bytes())
    assert len(_Recording.loaded) == 1


def test_a_runtime_cannot_override_the_checked_load() -> None:
    with pytest.raises(TypeError, match="implement _load instead"):

        class Unchecked(Runtime):
            name = "unchecked"
            suffixes = ()

            def load(self, source: bytes | Path) -> LoadedModel:  # type: ignore[override]
                raise AssertionError("never reached")

            def _load(self, source: bytes | Path) -> LoadedModel:
                raise AssertionError("never reached")
