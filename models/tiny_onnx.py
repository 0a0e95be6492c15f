"""The tiny models of :mod:`models.tiny` as ONNX (and, through OpenVINO, as IR): the same networks
with the same weights, so that one network can be served by LiteRT, ONNX Runtime and OpenVINO and
their outputs compared on the same input.

Graphs are written with ``onnx.helper`` (no exporter, no torch): opset 17, IR version 9, which every
runtime tenantd supports reads. Layouts are converted from TFLite's (NHWC activations, ``[out, kh,
kw, in]`` conv weights, ``[1, kh, kw, c]`` depthwise weights) to ONNX's (NCHW; ``[out, in, kh,
kw]``; grouped conv ``[c, 1, kh, kw]``); the input stays NHWC, as in the ``.tflite``, and is
transposed inside the graph, so the same array feeds all three. TFLite's SAME padding puts the odd
pixel after, which is ONNX's ``SAME_UPPER``. :func:`ir_bundle` converts the ONNX with
``openvino.convert_model`` and needs OpenVINO; the rest needs only the ``onnx`` package.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import tiny

__all__ = ["add_bytes", "add_bytes_weights", "cnn", "external_tensor", "ir_bundle", "mlp", "save_ir"]

OPSET = 17
IR_VERSION = 9
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    inp: onnx.ValueInfoProto,
    out: onnx.ValueInfoProto,
    name: str,
) -> bytes:
    graph = helper.make_graph(nodes, name, [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tenantd-tiny")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "probs",
) -> bytes:
    """The network of ``tiny.mlp(in_features, hidden, out_features, seed=seed)`` (batch 1, softmax)."""
    layers = tiny.mlp_weights(in_features, hidden, out_features, seed)
    nodes, inits = [], []
    x = input_name
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"fc{i}/weights"), numpy_helper.from_array(b, f"fc{i}/bias")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}/weights", f"fc{i}/bias"], [f"fc{i}/out"], transB=1))
        x = f"fc{i}/out"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"fc{i}/relu"]))
            x = f"fc{i}/relu"
    nodes.append(helper.make_node("Softmax", [x], [output_name], axis=-1))
    return _model(
        nodes,
        inits,
        helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, in_features]),
        helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, out_features]),
        "tenantd tiny mlp",
    )


def cnn(
    image: int = 224,
    channels: Sequence[int] = (96, 352, 704, 1408),
    classes: int = 10,
    *,
    seed: int = 0,
    input_dtype: str = "uint8",
    input_name: str = "image",
    output_name: str = "probs",
) -> bytes:
    """The network of ``tiny.cnn(...)`` with the same arguments: NHWC input, CAST (uint8), conv
    stem, depthwise + pointwise blocks with RELU6, mean pool, fully connected, softmax."""
    if input_dtype not in _ONNX_TYPES:
        raise ValueError(f"input_dtype must be one of {sorted(_ONNX_TYPES)}")
    layers = tiny.cnn_weights(image, channels, classes, seed=seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = input_name
    first = layers[0]
    if input_dtype == "uint8":
        nodes.append(helper.make_node("Cast", [x], [f"{input_name}/float"], to=TensorProto.FLOAT))
        x = f"{input_name}/float"
        # Folded exactly as the .tflite folds it, so the stored float32 weights are identical.
        first = (first[0] / np.float32(255.0), first[1])
    nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
    x = "nchw"
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]

    def conv(x: str, w: np.ndarray, b: np.ndarray, prefix: str, stride: int, group: int) -> str:
        inits.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(w), f"{prefix}/weights"),
                numpy_helper.from_array(b, f"{prefix}/bias"),
            ]
        )
        kernel = list(w.shape[2:])
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{prefix}/weights", f"{prefix}/bias"],
                [f"{prefix}/conv"],
                auto_pad="SAME_UPPER",
                strides=[stride, stride],
                group=group,
                kernel_shape=kernel,
            )
        )
        nodes.append(helper.make_node("Clip", [f"{prefix}/conv", "zero", "six"], [f"{prefix}/out"]))
        return f"{prefix}/out"

    # [out, kh, kw, in] -> [out, in, kh, kw]
    x = conv(x, first[0].transpose(0, 3, 1, 2), first[1], "conv0", 2, 1)
    for i, (dw, pw) in enumerate(zip(layers[1:-1:2], layers[2:-1:2], strict=True), start=1):
        width = dw[0].shape[-1]
        # depthwise [1, kh, kw, c] -> [c, 1, kh, kw], one group per channel
        x = conv(x, dw[0].transpose(3, 0, 1, 2), dw[1], f"block{i}/dw", 2, width)
        x = conv(x, pw[0].transpose(0, 3, 1, 2), pw[1], f"block{i}/pw", 1, 1)
    nodes.append(helper.make_node("ReduceMean", [x], ["pool/out"], axes=[2, 3], keepdims=0))  # opset 17: an attribute
    w, b = layers[-1]
    inits += [numpy_helper.from_array(w, "fc/weights"), numpy_helper.from_array(b, "fc/bias")]
    nodes.append(helper.make_node("Gemm", ["pool/out", "fc/weights", "fc/bias"], ["fc/out"], transB=1))
    nodes.append(helper.make_node("Softmax", ["fc/out"], [output_name], axis=-1))
    return _model(
        nodes,
        inits,
        helper.make_tensor_value_info(input_name, _ONNX_TYPES[input_dtype], [1, image, image, 3]),
        helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, classes]),
        "tenantd tiny cnn",
    )


def add_bytes_weights(length: int = 64, seed: int = 0) -> np.ndarray:
    """The uint8 ``W`` that ``add_bytes(length, seed=seed)`` holds inside itself."""
    return np.random.default_rng(seed).integers(0, 256, size=length, dtype=np.uint8)


def external_tensor(name: str, location: str, length: int, data_type: int = TensorProto.UINT8) -> onnx.TensorProto:
    """A 1-d tensor of ``length`` elements whose data ONNX keeps outside the model, in the file at
    ``location`` (``data_location = EXTERNAL``), as ``onnx.save_model(..., save_as_external_data=True)``
    writes it."""
    tensor = TensorProto(name=name, data_type=data_type, dims=[length], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def add_bytes(length: int = 64, *, seed: int = 0, weights_location: str | None = None) -> bytes:
    """``Y = X + W`` over ``length`` uint8 values: run on zeros it returns ``W``. ``W`` is inside the
    model (:func:`add_bytes_weights`), or, given ``weights_location``, ONNX external data: the first
    ``length`` bytes of the file there (a relative path resolves against the loader's directory).
    That second form is a model asking its loader to read a file outside it; tenantd refuses it."""
    if weights_location is None:
        weights = numpy_helper.from_array(add_bytes_weights(length, seed), "W")
    else:
        weights = external_tensor("W", weights_location, length)
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"], name="add")],
        "tenantd add bytes",
        [helper.make_tensor_value_info("X", TensorProto.UINT8, [length])],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, [length])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tenantd-tiny")
    model.ir_version = IR_VERSION
    if weights_location is None:  # the checker would look for the external file
        onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def save_ir(onnx_model: bytes, xml_path: Path) -> Path:
    """Convert an ONNX model to OpenVINO IR at ``xml_path`` (and its ``.bin`` beside it), in full
    f32 (``compress_to_fp16=False``: the default would halve the weights and their precision)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="tenantd-onnx-") as tmp:
        source = Path(tmp) / "model.onnx"
        source.write_bytes(onnx_model)
        model = ov.convert_model(str(source))
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def ir_bundle(onnx_model: bytes) -> bytes:
    """The ``.ovir`` bundle (see ``tenantwire.irbundle``) of an ONNX model converted to IR."""
    from tenantwire import irbundle

    with tempfile.TemporaryDirectory(prefix="tenantd-ir-") as tmp:
        return irbundle.pack_files(save_ir(onnx_model, Path(tmp) / "model.xml"))
