"""Tiny, real TFLite models written directly as flatbuffers.

This module owns the construction of every model file that tenantd's tests and
demos load. It exists because those tests and demos need real ``.tflite``
files that LiteRT will load and run, on machines that have neither TensorFlow
nor access to a model hub. Models are assembled with the object API of
``ai_edge_litert.schema_py_generated`` and serialised with
``flatbuffers.Builder`` under the ``TFL3`` file identifier. Every builder is
deterministic: the same arguments (and seed) always give the same bytes, and
the weights come from ``numpy.random.default_rng(seed)`` so that a test can
recompute the expected outputs with numpy (see :func:`mlp_weights`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tenantd.runtimes.litert import tflite_param_bytes

__all__ = [
    "cnn",
    "cnn_weights",
    "int8_mlp",
    "mlp",
    "mlp_weights",
    "param_bytes",
    "sized_mlp",
    "two_input",
    "two_input_scale",
    "unsupported_op_model",
    "with_buffers_after",
]

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
UNSUPPORTED_OP_NAME = "TenantdNoSuchOp"

_ALIGN = 16  # the TFLite converter aligns constant buffers to 16 bytes
_TENSOR_TYPES = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.uint8): schema.TensorType.UINT8,
}
_OPTION_TYPES = {
    schema.FullyConnectedOptionsT: schema.BuiltinOptions.FullyConnectedOptions,
    schema.SoftmaxOptionsT: schema.BuiltinOptions.SoftmaxOptions,
    schema.AddOptionsT: schema.BuiltinOptions.AddOptions,
    schema.MulOptionsT: schema.BuiltinOptions.MulOptions,
    schema.Conv2DOptionsT: schema.BuiltinOptions.Conv2DOptions,
    schema.DepthwiseConv2DOptionsT: schema.BuiltinOptions.DepthwiseConv2DOptions,
    schema.ReducerOptionsT: schema.BuiltinOptions.ReducerOptions,
    schema.CastOptionsT: schema.BuiltinOptions.CastOptions,
}
_Options = (
    schema.FullyConnectedOptionsT
    | schema.SoftmaxOptionsT
    | schema.AddOptionsT
    | schema.MulOptionsT
    | schema.Conv2DOptionsT
    | schema.DepthwiseConv2DOptionsT
    | schema.ReducerOptionsT
    | schema.CastOptionsT
)
_CNN_INPUT_DTYPES = {"uint8": np.uint8, "float32": np.float32}
Layer = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Quant:
    """Per-tensor affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    @classmethod
    def for_range(cls, lo: float, hi: float) -> _Quant:
        """Asymmetric int8 parameters covering ``[lo, hi]`` (widened to hold 0)."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-8) / 255.0
        zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
        return cls(float(np.float32(scale)), zero_point)

    def quantize(self, x: np.ndarray, dtype: type = np.int8) -> np.ndarray:
        info = np.iinfo(dtype)
        q = np.round(x / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def to_schema(self) -> schema.QuantizationParametersT:
        return schema.QuantizationParametersT(scale=[self.scale], zeroPoint=[self.zero_point])


def _pack_aligned_buffer(self: schema.BufferT, builder: flatbuffers.Builder) -> int:
    """``BufferT.Pack`` replacement that starts the data on a 16-byte boundary."""
    if self.data is None:
        return schema.BufferT.Pack(self, builder)
    raw = bytes(self.data)
    builder.Prep(_ALIGN, len(raw))  # pad so the vector's payload is aligned
    data = builder.CreateByteVector(raw)
    schema.BufferStart(builder)
    schema.BufferAddData(builder, data)
    return schema.BufferEnd(builder)


class _AlignedBufferT(schema.BufferT):
    """A ``BufferT`` whose data starts on a 16-byte boundary in the file."""

    Pack = _pack_aligned_buffer


class _Graph:
    """Accumulates one subgraph's tensors, buffers and operators.

    This is the single graph-assembly helper that all public builders share.
    """

    def __init__(self) -> None:
        self.tensors: list[schema.TensorT] = []
        self.buffers: list[schema.BufferT] = [schema.BufferT()]  # empty sentinel
        self.opcodes: list[schema.OperatorCodeT] = []
        self.operators: list[schema.OperatorT] = []
        self._opcode_index: dict[tuple[int, str | None, int], int] = {}

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: type = np.float32,
        *,
        quant: _Quant | None = None,
    ) -> int:
        """Add a runtime (non-constant) tensor and return its index."""
        return self._add_tensor(name, shape, np.dtype(dtype), 0, quant)

    def const(self, name: str, value: np.ndarray, *, quant: _Quant | None = None) -> int:
        """Add a constant tensor backed by its own buffer and return its index."""
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        self.buffers.append(_AlignedBufferT(data=np.frombuffer(value.tobytes(), np.uint8)))
        return self._add_tensor(name, value.shape, value.dtype, len(self.buffers) - 1, quant)

    def _add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: np.dtype,
        buffer: int,
        quant: _Quant | None,
    ) -> int:
        self.tensors.append(
            schema.TensorT(
                shape=[int(d) for d in shape],
                type=_TENSOR_TYPES[dtype],
                buffer=buffer,
                name=name,
                quantization=quant.to_schema() if quant else None,
            )
        )
        return len(self.tensors) - 1

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        *,
        options: _Options | None = None,
        version: int = 1,
        custom_code: str | None = None,
    ) -> None:
        """Append an operator, registering its operator code on first use."""
        key = (code, custom_code, version)
        if key not in self._opcode_index:
            self._opcode_index[key] = len(self.opcodes)
            self.opcodes.append(
                schema.OperatorCodeT(
                    deprecatedBuiltinCode=min(code, 127),
                    customCode=custom_code,
                    version=version,
                    builtinCode=code,
                )
            )
        self.operators.append(
            schema.OperatorT(
                opcodeIndex=self._opcode_index[key],
                inputs=list(inputs),
                outputs=list(outputs),
                builtinOptionsType=_OPTION_TYPES[type(options)] if options else 0,
                builtinOptions=options,
            )
        )

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        """Serialise the graph as a one-subgraph model with a default signature."""

        def tensor_maps(indices: Sequence[int]) -> list[schema.TensorMapT]:
            return [schema.TensorMapT(name=self.tensors[i].name, tensorIndex=i) for i in indices]

        model = schema.ModelT(
            version=SCHEMA_VERSION,
            operatorCodes=self.opcodes,
            subgraphs=[
                schema.SubGraphT(
                    tensors=self.tensors,
                    inputs=list(inputs),
                    outputs=list(outputs),
                    operators=self.operators,
                    name="main",
                )
            ],
            description=description,
            buffers=self.buffers,
            signatureDefs=[
                schema.SignatureDefT(
                    inputs=tensor_maps(inputs),
                    outputs=tensor_maps(outputs),
                    signatureKey="serving_default",
                    subgraphIndex=0,
                )
            ],
        )
        builder = flatbuffers.Builder(1024 + sum(0 if b.data is None else len(b.data) for b in self.buffers))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def mlp_weights(in_features: int, hidden: Sequence[int], out_features: int, seed: int = 0) -> list[Layer]:
    """Return the ``(W, b)`` float32 pairs that :func:`mlp` bakes into its model.

    ``W`` has TFLite's FULLY_CONNECTED layout ``[out, in]``, so each layer
    computes ``x @ W.T + b``; hidden layers are followed by ReLU. Weights use He
    initialisation (``N(0, 2 / fan_in)``) and biases ``N(0, 0.05)`` so that the
    outputs are neither vanishing nor saturated.
    """
    widths = [in_features, *hidden, out_features]
    if min(widths) < 1:
        raise ValueError(f"all layer widths must be >= 1, got {widths}")
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in)).astype(np.float32)
        b = rng.normal(0.0, 0.05, size=fan_out).astype(np.float32)
        layers.append((w, b))
    return layers


def _forward(layers: Sequence[Layer], x: np.ndarray) -> list[np.ndarray]:
    """Float activations after every layer (ReLU on all but the last)."""
    acts = []
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
        acts.append(x)
    return acts


def _fc(
    g: _Graph,
    x: int,
    layer: Layer,
    out: int,
    prefix: str,
    *,
    relu: bool,
    in_quant: _Quant | None = None,
    w_quant: _Quant | None = None,
) -> None:
    """Add one FULLY_CONNECTED op (float, or int8 when quant params are given)."""
    w, b = layer
    if w_quant is None:
        w_idx = g.const(f"{prefix}/weights", w)
        b_idx = g.const(f"{prefix}/bias", b)
    else:
        assert in_quant is not None
        b_quant = _Quant(in_quant.scale * w_quant.scale, 0)
        w_idx = g.const(f"{prefix}/weights", w_quant.quantize(w), quant=w_quant)
        b_idx = g.const(f"{prefix}/bias", b_quant.quantize(b, np.int32), quant=b_quant)
    act = schema.ActivationFunctionType.RELU if relu else schema.ActivationFunctionType.NONE
    g.op(
        schema.BuiltinOperator.FULLY_CONNECTED,
        [x, w_idx, b_idx],
        [out],
        options=schema.FullyConnectedOptionsT(fusedActivationFunction=act),
        version=1 if w_quant is None else 4,
    )


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    seed: int = 0,
    batch: int = 1,
    input_name: str = "input",
    output_name: str = "probs",
    softmax: bool = True,
) -> bytes:
    """Build a float32 MLP: FC+ReLU per hidden layer, a plain FC, then SOFTMAX.

    The input is ``[batch, in_features]`` and the output ``[batch,
    out_features]``. Weights are exactly those of ``mlp_weights(in_features,
    hidden, out_features, seed)``. Intermediate tensors are named ``fc{i}/out``
    (the last one holds the logits); with ``softmax=False`` the model ends at
    the logits, which then carry ``output_name``.
    """
    layers = mlp_weights(in_features, hidden, out_features, seed)
    g = _Graph()
    x = g.tensor(input_name, [batch, in_features])
    inp = x
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        name = output_name if last and not softmax else f"fc{i}/out"
        y = g.tensor(name, [batch, layer[0].shape[0]])
        _fc(g, x, layer, y, f"fc{i}", relu=not last)
        x = y
    if softmax:
        y = g.tensor(output_name, [batch, out_features])
        g.op(
            schema.BuiltinOperator.SOFTMAX,
            [x],
            [y],
            options=schema.SoftmaxOptionsT(beta=1.0),
        )
        x = y
    widths = "x".join(str(w) for w in [in_features, *hidden, out_features])
    return g.finish([inp], [x], f"tenantd tiny mlp {widths} seed={seed}")


def int8_mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    seed: int = 0,
    batch: int = 1,
    input_name: str = "input",
    output_name: str = "logits",
) -> bytes:
    """Build a fully int8-quantized MLP (no softmax) from ``mlp_weights(...)``.

    Input and output are int8 tensors with per-tensor quantization parameters
    (read them from the interpreter's tensor details). The input covers the
    real range ``[-4, 4]``; weights are symmetric int8, biases int32 with scale
    ``input_scale * weight_scale``; activation ranges are calibrated (with 25%
    headroom) on a seeded standard-normal batch, so the dequantized output
    approximates the float MLP's logits to within a few output quantization
    steps.
    """
    layers = mlp_weights(in_features, hidden, out_features, seed)
    calib = np.clip(np.random.default_rng((seed, 8)).standard_normal((1024, in_features)), -4, 4)
    act_quants = [
        _Quant.for_range(1.25 * float(a.min()), 1.25 * float(a.max()))  # 25% headroom
        for a in _forward(layers, calib)
    ]
    g = _Graph()
    in_quant = _Quant.for_range(-4.0, 4.0)
    x = g.tensor(input_name, [batch, in_features], np.int8, quant=in_quant)
    inp = x
    for i, (layer, out_quant) in enumerate(zip(layers, act_quants, strict=True)):
        last = i == len(layers) - 1
        w_quant = _Quant(float(np.float32(max(np.abs(layer[0]).max(), 1e-8) / 127.0)), 0)
        name = output_name if last else f"fc{i}/out"
        y = g.tensor(name, [batch, layer[0].shape[0]], np.int8, quant=out_quant)
        _fc(g, x, layer, y, f"fc{i}", relu=not last, in_quant=in_quant, w_quant=w_quant)
        x, in_quant = y, out_quant
    widths = "x".join(str(w) for w in [in_features, *hidden, out_features])
    return g.finish([inp], [x], f"tenantd tiny int8 mlp {widths} seed={seed}")


def sized_mlp(
    param_bytes: int,
    *,
    seed: int = 0,
    in_features: int = 256,
    out_features: int = 16,
    batch: int = 1,
) -> bytes:
    """Build a one-hidden-layer float32 MLP with about ``param_bytes`` of weights.

    The hidden width ``h`` is chosen so that the weights and biases
    ``4 * (in*h + h + h*out + out)`` bytes are as close as possible to the
    target; the error is at most half a hidden unit (``2 * (in + out + 1)``
    bytes, about 1 KiB with the defaults), i.e. under 5% from ~22 KB up.
    Input is ``"input"`` ``[batch, in_features]``, output ``"probs"``.
    """
    per_unit = 4 * (in_features + 1 + out_features)
    hidden = round((param_bytes - 4 * out_features) / per_unit)
    if hidden < 1:
        minimum = per_unit + 4 * out_features
        raise ValueError(f"param_bytes={param_bytes} is too small (min {minimum})")
    return mlp(in_features, [hidden], out_features, seed=seed, batch=batch)


def cnn_weights(
    image: int = 224,
    channels: Sequence[int] = (96, 352, 704, 1408),
    classes: int = 10,
    *,
    seed: int = 0,
) -> list[Layer]:
    """Return the ``(W, b)`` float32 pairs that :func:`cnn` bakes into its model.

    In graph order: the first CONV_2D (``W`` ``[channels[0], 3, 3, 3]``); then,
    for each later width ``c`` after ``p``, a DEPTHWISE_CONV_2D (``W`` ``[1, 3,
    3, p]``, ``b`` ``[p]``) and a pointwise CONV_2D (``W`` ``[c, 1, 1, p]``);
    last the FULLY_CONNECTED (``W`` ``[classes, channels[-1]]``). Weights are He
    initialised (``N(0, 2 / fan_in)``, ``fan_in = kh * kw * in`` for a conv,
    ``kh * kw`` for a depthwise conv), biases ``N(0, 0.05)``. These are the
    weights for pixels scaled to ``[0, 1]``: the uint8 model folds the ``1/255``
    into its stored first-conv weights. ``image`` does not affect the weights;
    it is only validated, like in :func:`cnn`.
    """
    widths = [int(c) for c in channels]
    if image < 1 or classes < 1 or not widths or min(widths) < 1:
        raise ValueError(
            "need image >= 1, classes >= 1 and channel widths >= 1, "
            f"got image={image}, channels={widths}, classes={classes}"
        )
    rng = np.random.default_rng(seed)

    def layer(shape: tuple[int, ...], fan_in: int, out: int) -> Layer:
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        return w, rng.normal(0.0, 0.05, size=out).astype(np.float32)

    layers = [layer((widths[0], 3, 3, 3), 3 * 3 * 3, widths[0])]
    for prev, width in itertools.pairwise(widths):
        layers.append(layer((1, 3, 3, prev), 3 * 3, prev))
        layers.append(layer((width, 1, 1, prev), prev, width))
    layers.append(layer((classes, widths[-1]), widths[-1], classes))
    return layers


def _conv(
    g: _Graph,
    x: int,
    layer: Layer,
    out: int,
    prefix: str,
    *,
    stride: int,
    depthwise: bool = False,
) -> None:
    """Add one float CONV_2D (or DEPTHWISE_CONV_2D) with SAME padding and RELU6."""
    w, b = layer
    w_idx, b_idx = g.const(f"{prefix}/weights", w), g.const(f"{prefix}/bias", b)
    options: schema.Conv2DOptionsT | schema.DepthwiseConv2DOptionsT
    if depthwise:
        code = schema.BuiltinOperator.DEPTHWISE_CONV_2D
        options = schema.DepthwiseConv2DOptionsT()
        options.depthMultiplier = 1
    else:
        code = schema.BuiltinOperator.CONV_2D
        options = schema.Conv2DOptionsT()
    options.padding = schema.Padding.SAME
    options.strideW = options.strideH = stride
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    g.op(code, [x, w_idx, b_idx], [out], options=options)


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
    """Build a small, compute-bound MobileNet-style image classifier.

    Input ``[1, image, image, 3]``: raw uint8 pixels (CAST to float32; the
    ``1/255`` scaling is folded into the first conv's weights), or, with
    ``input_dtype="float32"``, float32 pixels already scaled to ``[0, 1]`` (so
    ``cnn(input_dtype="float32")`` on ``x / 255`` equals ``cnn()`` on ``x``).
    Body: CONV_2D 3x3 stride 2 to ``channels[0]``; then per later width a
    DEPTHWISE_CONV_2D 3x3 stride 2 and a CONV_2D 1x1 to that width (all SAME
    padding, fused RELU6); MEAN over axes ``[1, 2]``; FULLY_CONNECTED to
    ``classes`` (``"fc/out"``, the logits); SOFTMAX to ``output_name`` ``[1,
    classes]`` float32. Weights are those of ``cnn_weights(image, channels,
    classes, seed=seed)``; besides them the only constant is the 8-byte int32
    MEAN axes tensor. With the defaults the input is 150,528 bytes, the weights
    about 5.2 MB, and one inference takes about 4.6 ms in LiteRT (XNNPACK) at
    ``num_threads=1`` on a 2-core AVX-512 AMD EPYC VM.
    """
    if input_dtype not in _CNN_INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {sorted(_CNN_INPUT_DTYPES)}")
    layers = cnn_weights(image, channels, classes, seed=seed)
    g = _Graph()
    x = inp = g.tensor(input_name, [1, image, image, 3], _CNN_INPUT_DTYPES[input_dtype])
    first = layers[0]
    if input_dtype == "uint8":
        pixels = g.tensor(f"{input_name}/float", [1, image, image, 3])
        g.op(
            schema.BuiltinOperator.CAST,
            [x],
            [pixels],
            options=schema.CastOptionsT(
                inDataType=schema.TensorType.UINT8,
                outDataType=schema.TensorType.FLOAT32,
            ),
        )
        x, first = pixels, (first[0] / np.float32(255.0), first[1])
    size = -(-image // 2)  # SAME padding, stride 2: ceil(in / 2)
    y = g.tensor("conv0/out", [1, size, size, first[0].shape[0]])
    _conv(g, x, first, y, "conv0", stride=2)
    x = y
    blocks = zip(layers[1:-1:2], layers[2:-1:2], strict=True)
    for i, (dw, pw) in enumerate(blocks, start=1):
        size = -(-size // 2)
        y = g.tensor(f"block{i}/dw/out", [1, size, size, dw[0].shape[-1]])
        _conv(g, x, dw, y, f"block{i}/dw", stride=2, depthwise=True)
        z = g.tensor(f"block{i}/pw/out", [1, size, size, pw[0].shape[0]])
        _conv(g, y, pw, z, f"block{i}/pw", stride=1)
        x = z
    pooled = g.tensor("pool/out", [1, layers[-1][0].shape[1]])
    axes = g.const("pool/axes", np.array([1, 2], np.int32))
    g.op(
        schema.BuiltinOperator.MEAN,
        [x, axes],
        [pooled],
        options=schema.ReducerOptionsT(keepDims=False),
    )
    logits = g.tensor("fc/out", [1, classes])
    _fc(g, pooled, layers[-1], logits, "fc", relu=False)
    probs = g.tensor(output_name, [1, classes])
    g.op(
        schema.BuiltinOperator.SOFTMAX,
        [logits],
        [probs],
        options=schema.SoftmaxOptionsT(beta=1.0),
    )
    widths = "x".join(str(int(c)) for c in channels)
    return g.finish(
        [inp],
        [probs],
        f"tenantd tiny cnn {image}px {input_dtype} {widths}->{classes} seed={seed}",
    )


def two_input_scale(seed: int = 0) -> float:
    """The constant ``k`` that ``two_input(seed=seed)`` multiplies into ``"scaled"``."""
    return float(np.float32(np.random.default_rng(seed).uniform(0.5, 2.0)))


def two_input(shape: Sequence[int] = (1, 8), *, seed: int = 0) -> bytes:
    """Build a model with two inputs and two outputs, all float32 of ``shape``.

    Inputs are ``"a"`` and ``"b"``; outputs, in this order, are
    ``"sum" = a + b`` (ADD) and ``"scaled" = (a * b) * k`` (two MULs), where the
    scalar constant ``k = two_input_scale(seed)``.
    """
    g = _Graph()
    a, b = g.tensor("a", shape), g.tensor("b", shape)
    total, prod, scaled = (
        g.tensor("sum", shape),
        g.tensor("a_times_b", shape),
        g.tensor("scaled", shape),
    )
    k = g.const("k", np.array([two_input_scale(seed)], np.float32))
    g.op(schema.BuiltinOperator.ADD, [a, b], [total], options=schema.AddOptionsT())
    g.op(schema.BuiltinOperator.MUL, [a, b], [prod], options=schema.MulOptionsT())
    g.op(schema.BuiltinOperator.MUL, [prod, k], [scaled], options=schema.MulOptionsT())
    return g.finish([a, b], [total, scaled], f"tenantd tiny two_input {list(shape)} seed={seed}")


def unsupported_op_model() -> bytes:
    """Build a valid model whose only op is the unknown custom op ``TenantdNoSuchOp``.

    LiteRT parses it and ``Interpreter(model_content=...)`` succeeds, but
    ``allocate_tensors()`` raises ``RuntimeError("Encountered unresolved custom
    op: TenantdNoSuchOp. ...")``; tenantd must refuse such a model cleanly.
    """
    g = _Graph()
    x, y = g.tensor("input", [1, 4]), g.tensor("output", [1, 4])
    g.op(schema.BuiltinOperator.CUSTOM, [x], [y], custom_code=UNSUPPORTED_OP_NAME)
    return g.finish([x], [y], "tenantd tiny model with an unsupported custom op")


def edgetpu_stand_in(op_bytes: int = 1000, shape: Sequence[int] = (1, 4), name: str = "stand-in") -> bytes:
    """A stand-in for an EdgeTPU-compiled model: uint8 in and out, one ``edgetpu-custom-op`` whose
    custom options (where the compiler puts the EdgeTPU's instructions and parameters) are
    ``op_bytes`` long. It exercises tenantd's file checks and the stub vendor modules, never an
    EdgeTPU: real compiled models come from ``edgetpu_compiler``."""
    g = _Graph()
    x, y = g.tensor("input", list(shape), np.uint8), g.tensor("output", list(shape), np.uint8)
    g.op(schema.BuiltinOperator.CUSTOM, [x], [y], custom_code="edgetpu-custom-op")
    g.operators[-1].customOptions = list(b"\x01" * op_bytes)
    return g.finish([x], [y], f"tenantd EdgeTPU stand-in {name}")


def param_bytes(model: bytes) -> int:
    """Total bytes of constant data referenced by the tensors of a .tflite model (see
    :func:`tenantd.runtimes.litert.tflite_param_bytes`, which the daemon uses too)."""
    return tflite_param_bytes(model)


def with_buffers_after(model: bytes, *, past_end: int = 0) -> bytes:
    """``model`` with its constant buffers moved after the flatbuffer, as TFLite stores models over
    2 GiB: each buffer is empty and gives the ``offset``/``size`` of its bytes, counted from the start
    of the file. ``past_end`` > 0 moves the last buffer's offset that many bytes further, so it points
    past the end of the file (a file that asks a runtime to read beyond itself)."""
    root = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    moved = [b for b in root.buffers if b.data is not None and len(b.data)]
    if not moved:
        raise ValueError("the model has no constant buffers to move")
    payloads = [bytes(np.asarray(b.data, np.uint8)) for b in moved]
    for b in moved:
        b.data, b.offset, b.size = None, 2, 1  # placeholders as wide as the real values (not defaults)

    def pack() -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(root.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    head = len(pack())
    starts = []
    position = head
    for payload in payloads:
        position += -position % _ALIGN
        starts.append(position)
        position += len(payload)
    for b, start, payload in zip(moved, starts, payloads, strict=True):
        b.offset, b.size = start, len(payload)
    moved[-1].offset += past_end
    out = bytearray(pack())
    assert len(out) == head, "the offsets changed the flatbuffer's size"
    for start, payload in zip(starts, payloads, strict=True):
        out += bytes(start - len(out)) + payload
    return bytes(out)
