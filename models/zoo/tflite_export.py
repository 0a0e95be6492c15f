"""PyTorch -> TFLite conversion, float32 and full-integer int8, written as flatbuffers by hand.

This module owns turning one of the zoo's PyTorch models into a ``.tflite`` file. It exists because
the usual path, ``litert-torch``, cannot be installed beside tenantd: its converter pins
``xdsl==0.28.0``, which needs ``typing-extensions<4.13``, while the daemon's ``pydantic==2.14.4``
needs ``>=4.16`` (and it pulls JAX, transformers and torchao, several GB). The zoo's networks use a
small set of layers, so the model is traced with ``torch.fx``, BatchNorm is folded into the
convolutions, and every node is mapped to a TFLite builtin through the same flatbuffer writer as
``models/tiny.py``. 4D tensors are NHWC in the file (TFLite's and the EdgeTPU's layout): each value
carries the permutation from its PyTorch (NCHW) dimensions to the file's, so a ``permute`` costs
nothing and a TRANSPOSE is emitted only where a flatten needs PyTorch's element order.

Full-integer int8 follows the TFLite quantization spec: int8 input and outputs; activations
per-tensor asymmetric, their ranges the min/max seen on a representative set; conv weights
per-channel symmetric, fully connected weights per-tensor symmetric, biases int32 at
``input_scale * weight_scale``; the ops the spec requires to keep their input's scale
(concatenation, pooling, reshape, pad, transpose) share one range with their inputs; softmax
outputs use the fixed scale 1/256, zero point -128.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp

from models.tiny import _Graph, _Quant

__all__ = ["Ranges", "UnsupportedLayer", "calibrate", "export_tflite", "prepare", "simulate_int8"]

OPS = schema.BuiltinOperator
ACT = schema.ActivationFunctionType
_NHWC = (0, 2, 3, 1)  # physical dim i of a 4D value holds torch dim _NHWC[i]
_SOFTMAX_QUANT = _Quant(1.0 / 256.0, -128)  # the only output quantization TFLite's int8 softmax takes
# Op versions for int8 kernels (the float kernels are all version 1); LiteRT and the EdgeTPU compiler
# read them to pick a kernel that understands per-channel scales and int8 tensors.
_INT8_VERSIONS = {
    OPS.CONV_2D: 3,
    OPS.DEPTHWISE_CONV_2D: 3,
    OPS.FULLY_CONNECTED: 4,
    OPS.ADD: 2,
    OPS.CONCATENATION: 2,
    OPS.MAX_POOL_2D: 2,
    OPS.AVERAGE_POOL_2D: 2,
    OPS.MEAN: 2,
    OPS.SOFTMAX: 2,
    OPS.PAD: 2,
    OPS.TRANSPOSE: 2,
    OPS.RELU: 2,
    OPS.RELU6: 2,
    OPS.QUANTIZE: 2,
}
_OPTION_TYPES: dict[type, int] = {
    schema.Conv2DOptionsT: schema.BuiltinOptions.Conv2DOptions,
    schema.DepthwiseConv2DOptionsT: schema.BuiltinOptions.DepthwiseConv2DOptions,
    schema.FullyConnectedOptionsT: schema.BuiltinOptions.FullyConnectedOptions,
    schema.Pool2DOptionsT: schema.BuiltinOptions.Pool2DOptions,
    schema.ConcatenationOptionsT: schema.BuiltinOptions.ConcatenationOptions,
    schema.ReshapeOptionsT: schema.BuiltinOptions.ReshapeOptions,
    schema.TransposeOptionsT: schema.BuiltinOptions.TransposeOptions,
    schema.PadOptionsT: schema.BuiltinOptions.PadOptions,
    schema.ReducerOptionsT: schema.BuiltinOptions.ReducerOptions,
    schema.SoftmaxOptionsT: schema.BuiltinOptions.SoftmaxOptions,
    schema.AddOptionsT: schema.BuiltinOptions.AddOptions,
}
_VIEW_METHODS = {"reshape", "view", "flatten"}
_ALIAS_MODULES = (nn.Dropout, nn.Identity)
_ACT_MODULES: dict[type, int] = {nn.ReLU: ACT.RELU, nn.ReLU6: ACT.RELU6}


class UnsupportedLayer(ValueError):
    """A layer or layer setting this converter does not map to TFLite (the message names it)."""


@dataclass(frozen=True)
class _PerChannel(_Quant):
    """Per-channel symmetric quantization along ``dim`` (conv weights and their biases)."""

    scales: tuple[float, ...] = ()
    dim: int = 0

    def to_schema(self) -> schema.QuantizationParametersT:
        return schema.QuantizationParametersT(
            scale=list(self.scales), zeroPoint=[0] * len(self.scales), quantizedDimension=self.dim
        )


class _TFLGraph(_Graph):
    """``models.tiny``'s graph writer, taught the option tables of the layers the zoo needs."""

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        *,
        options: Any = None,
        version: int = 1,
        custom_code: str | None = None,
    ) -> None:
        super().op(code, inputs, outputs, version=version, custom_code=custom_code)
        if options is not None:
            self.operators[-1].builtinOptionsType = _OPTION_TYPES[type(options)]
            self.operators[-1].builtinOptions = options


@dataclass
class _Val:
    """A traced value in the file: its tensor, PyTorch shape and the torch->file dimension map."""

    index: int
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    quant: _Quant | None = None

    @property
    def physical(self) -> list[int]:
        return [self.shape[p] for p in self.perm]

    def in_torch_order(self) -> bool:
        """Whether the file's element order equals PyTorch's (size-1 dimensions may move freely)."""
        dims = [p for p in self.perm if self.shape[p] > 1]
        return dims == sorted(dims)


@dataclass
class _UnionFind:
    parent: dict[fx.Node, fx.Node] = field(default_factory=dict)

    def find(self, n: fx.Node) -> fx.Node:
        while self.parent.get(n, n) is not n:
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb


def prepare(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``model`` in eval mode, fold BatchNorm into convolutions and record every node's shape."""
    gm = fuse(model.eval())
    assert isinstance(gm, fx.GraphModule)
    ShapeProp(gm).propagate(example)
    return gm


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["tensor_meta"].shape)


Ranges = dict[fx.Node, tuple[float, float]]


def calibrate(gm: fx.GraphModule, samples: Iterable[torch.Tensor]) -> Ranges:
    """Min/max of every node's output over the representative samples (one at a time: some graphs
    reshape with a batch of 1 written in)."""
    ranges: Ranges = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                lo, hi = float(out.min()), float(out.max())
                old = ranges.get(n, (lo, hi))
                ranges[n] = (min(old[0], lo), max(old[1], hi))
            return out

    with torch.no_grad():
        for x in samples:
            _Recorder(gm).run(x)
    return ranges


def _same_matches(n: int, k: int, s: int, p: int) -> bool:
    """Whether TFLite's SAME padding places windows exactly where PyTorch's symmetric padding ``p`` does."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return (n + 2 * p - k) // s + 1 == out and total // 2 == p


class _Converter:
    """One conversion: walks the traced graph once and writes the TFLite graph."""

    def __init__(self, gm: fx.GraphModule, ranges: dict[fx.Node, tuple[float, float]] | None) -> None:
        self.gm = gm
        self.int8 = ranges is not None
        self.g = _TFLGraph()
        self.vals: dict[fx.Node, _Val] = {}
        self.fused_act: dict[fx.Node, tuple[fx.Node, int]] = {}  # producer -> (activation node, kind)
        self.skip: set[fx.Node] = set()
        self._find_fusions()
        self.quants = self._plan_quant(ranges) if ranges is not None else {}

    # -- planning --

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None

    def _act_kind(self, node: fx.Node) -> int | None:
        mod = self._module(node)
        if mod is not None and type(mod) in _ACT_MODULES:
            return _ACT_MODULES[type(mod)]
        if node.op == "call_function" and node.target in (torch.relu, nn.functional.relu):
            return int(ACT.RELU)
        return None

    def _find_fusions(self) -> None:
        """Fold an activation into the conv, linear or add that feeds only it, as TFLite fuses them."""
        for node in self.gm.graph.nodes:
            kind = self._act_kind(node)
            if kind is None:
                continue
            src = node.args[0]
            assert isinstance(src, fx.Node)
            mod = self._module(src)
            fusable = isinstance(mod, nn.Conv2d | nn.Linear) or src.target in (operator.add, torch.add)
            if fusable and len(src.users) == 1 and src not in self.fused_act:
                self.fused_act[src] = (node, kind)
                self.skip.add(node)

    def _plan_quant(self, ranges: dict[fx.Node, tuple[float, float]]) -> dict[fx.Node, _Quant]:
        ranges = dict(ranges)
        uf = _UnionFind()
        for src, (act, _) in self.fused_act.items():
            ranges[src] = ranges[act]  # the stored tensor is the activation's output
            uf.union(act, src)
        for node in self.gm.graph.nodes:
            mod = self._module(node)
            shares = (
                isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, *_ALIAS_MODULES))
                or node.target in (torch.flatten, torch.cat)
                or (node.op == "call_method" and node.target in (*_VIEW_METHODS, "permute", "contiguous"))
            )
            if shares:
                for arg in node.all_input_nodes:
                    uf.union(arg, node)
        group_range: dict[fx.Node, tuple[float, float]] = {}
        for node, (lo, hi) in ranges.items():
            root = uf.find(node)
            old = group_range.get(root, (lo, hi))
            group_range[root] = (min(old[0], lo), max(old[1], hi))
        return {node: _Quant.for_range(*group_range[uf.find(node)]) for node in ranges}

    # -- tensors --

    def _new(self, name: str, shape: tuple[int, ...], perm: tuple[int, ...], quant: _Quant | None) -> _Val:
        physical = [shape[p] for p in perm]
        dtype = np.int8 if self.int8 else np.float32
        index = self.g.tensor(name, physical, dtype, quant=quant if self.int8 else None)
        return _Val(index, shape, perm, quant)

    def _out(self, node: fx.Node, perm: tuple[int, ...] | None = None) -> _Val:
        """The value ``node`` writes: its shape, the layout asked for, its planned quantization."""
        shape = _shape(node)
        if perm is None:
            perm = _NHWC if len(shape) == 4 else tuple(range(len(shape)))
        act = self.fused_act.get(node)
        quant = self.quants.get(node) if self.int8 else None
        val = self._new(node.name if act is None else act[0].name, shape, perm, quant)
        if act is not None:
            self.vals[act[0]] = val
        return val

    def _op(self, code: int, inputs: Sequence[int], outputs: Sequence[int], options: Any = None) -> None:
        version = _INT8_VERSIONS.get(code, 1) if self.int8 else 1
        self.g.op(code, inputs, outputs, options=options, version=version)

    def _i32(self, name: str, values: Sequence[int]) -> int:
        return self.g.const(name, np.asarray(values, np.int32))

    def _transpose(self, val: _Val, perm: tuple[int, ...], name: str) -> _Val:
        """Re-lay ``val`` so that its file dimension i holds torch dimension ``perm[i]``."""
        if val.perm == perm:
            return val
        order = [val.perm.index(p) for p in perm]
        out = self._new(f"{name}/transpose", val.shape, perm, val.quant)
        self._op(
            OPS.TRANSPOSE,
            [val.index, self._i32(f"{name}/transpose/perm", order)],
            [out.index],
            schema.TransposeOptionsT(),
        )
        return out

    def _weights(
        self, name: str, w: np.ndarray, b: np.ndarray, x: _Val, per_channel_dim: int | None
    ) -> tuple[int, int]:
        """Constant weight and bias tensors: float, or int8/int32 scaled to the input ``x``."""
        if not self.int8:
            return self.g.const(f"{name}/weights", w.astype(np.float32)), self.g.const(
                f"{name}/bias", b.astype(np.float32)
            )
        assert x.quant is not None
        if per_channel_dim is None:
            scale = float(np.float32(max(float(np.abs(w).max()), 1e-8) / 127.0))
            wq: _Quant = _Quant(scale, 0)
            bq: _Quant = _Quant(float(np.float32(x.quant.scale * scale)), 0)
            w_int = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            b_int = np.round(b / bq.scale).astype(np.int32)
        else:
            axes = tuple(i for i in range(w.ndim) if i != per_channel_dim)
            scales = (np.maximum(np.abs(w).max(axis=axes), 1e-8) / 127.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[per_channel_dim] = -1
            w_int = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
            b_scales = (scales * np.float32(x.quant.scale)).astype(np.float32)
            b_int = np.round(b / b_scales).astype(np.int32)
            wq = _PerChannel(1.0, 0, tuple(float(s) for s in scales), per_channel_dim)
            bq = _PerChannel(1.0, 0, tuple(float(s) for s in b_scales), 0)
        return self.g.const(f"{name}/weights", w_int, quant=wq), self.g.const(f"{name}/bias", b_int, quant=bq)

    # -- layers --

    def _arg(self, node: fx.Node, i: int = 0) -> _Val:
        arg = node.args[i]
        assert isinstance(arg, fx.Node)
        return self.vals[arg]

    def _padding(
        self, node: fx.Node, x: _Val, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
    ) -> tuple[_Val, int]:
        """TFLite padding for PyTorch's symmetric padding: VALID, SAME where it places windows alike,
        else an explicit PAD then VALID."""
        n = (x.shape[2], x.shape[3])
        if padding == (0, 0):
            return x, schema.Padding.VALID
        if all(_same_matches(n[i], kernel[i], stride[i], padding[i]) for i in range(2)):
            return x, schema.Padding.SAME
        ph, pw = padding
        shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
        out = self._new(f"{node.name}/pad", shape, _NHWC, x.quant)
        paddings = self.g.const(f"{node.name}/paddings", np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32))
        self._op(OPS.PAD, [x.index, paddings], [out.index], schema.PadOptionsT())
        return out, schema.Padding.VALID

    def _conv(self, node: fx.Node, mod: nn.Conv2d) -> _Val:
        x = self._transpose(self._arg(node), _NHWC, node.name)
        if mod.dilation != (1, 1) or not isinstance(mod.padding, tuple):
            raise UnsupportedLayer(f"{node.target}: dilated or string-padded convolutions are not supported")
        cin, cout, groups = mod.in_channels, mod.out_channels, mod.groups
        w = mod.weight.detach().numpy()
        b = mod.bias.detach().numpy() if mod.bias is not None else np.zeros(cout, np.float32)
        kernel = (int(w.shape[2]), int(w.shape[3]))
        x, padding = self._padding(node, x, kernel, mod.stride, mod.padding)  # type: ignore[arg-type]
        act = self.fused_act.get(node, (node, ACT.NONE))[1]
        out = self._out(node)
        if groups == 1:
            wi, bi = self._weights(node.name, w.transpose(0, 2, 3, 1), b, x, 0)
            options: Any = schema.Conv2DOptionsT(
                padding=padding, strideH=mod.stride[0], strideW=mod.stride[1], fusedActivationFunction=act,
                dilationHFactor=1, dilationWFactor=1,
            )  # fmt: skip
            self._op(OPS.CONV_2D, [x.index, wi, bi], [out.index], options)
        elif groups == cin and cout % cin == 0:
            wi, bi = self._weights(node.name, w.transpose(1, 2, 3, 0), b, x, 3)
            options = schema.DepthwiseConv2DOptionsT(
                padding=padding, strideH=mod.stride[0], strideW=mod.stride[1], depthMultiplier=cout // cin,
                fusedActivationFunction=act, dilationHFactor=1, dilationWFactor=1,
            )  # fmt: skip
            self._op(OPS.DEPTHWISE_CONV_2D, [x.index, wi, bi], [out.index], options)
        else:
            raise UnsupportedLayer(f"{node.target}: grouped convolution with groups={groups} is not supported")
        return out

    def _pool(self, node: fx.Node, mod: nn.MaxPool2d | nn.AvgPool2d) -> _Val:
        x = self._transpose(self._arg(node), _NHWC, node.name)
        pair = nn.modules.utils._pair
        kernel, stride, padding = pair(mod.kernel_size), pair(mod.stride or mod.kernel_size), pair(mod.padding)
        if mod.ceil_mode or (isinstance(mod, nn.MaxPool2d) and pair(mod.dilation) != (1, 1)):
            raise UnsupportedLayer(f"{node.target}: ceil_mode or dilated pooling is not supported")
        if isinstance(mod, nn.AvgPool2d) and padding != (0, 0) and mod.count_include_pad:
            raise UnsupportedLayer(f"{node.target}: TFLite averages over real inputs only; use count_include_pad=False")
        n = (x.shape[2], x.shape[3])
        if padding == (0, 0):
            pad = schema.Padding.VALID
        elif all(_same_matches(n[i], kernel[i], stride[i], padding[i]) for i in range(2)):
            pad = schema.Padding.SAME
        else:
            raise UnsupportedLayer(f"{node.target}: pooling padding {padding} differs from TFLite's SAME")
        out = self._out(node)
        code = OPS.MAX_POOL_2D if isinstance(mod, nn.MaxPool2d) else OPS.AVERAGE_POOL_2D
        options = schema.Pool2DOptionsT(
            padding=pad, strideH=stride[0], strideW=stride[1], filterHeight=kernel[0], filterWidth=kernel[1],
            fusedActivationFunction=ACT.NONE,
        )  # fmt: skip
        self._op(code, [x.index], [out.index], options)
        return out

    def _mean(self, node: fx.Node, mod: nn.AdaptiveAvgPool2d) -> _Val:
        if nn.modules.utils._pair(mod.output_size) != (1, 1):
            raise UnsupportedLayer(f"{node.target}: only global average pooling (output size 1) is supported")
        x = self._transpose(self._arg(node), _NHWC, node.name)
        out = self._out(node)
        self._op(
            OPS.MEAN,
            [x.index, self._i32(f"{node.name}/axes", [1, 2])],
            [out.index],
            schema.ReducerOptionsT(keepDims=True),
        )
        return out

    def _linear(self, node: fx.Node, mod: nn.Linear) -> _Val:
        x = self._arg(node)
        if len(x.shape) != 2:
            raise UnsupportedLayer(f"{node.target}: a linear layer must take a [batch, features] input")
        x = self._transpose(x, (0, 1), node.name)
        w = mod.weight.detach().numpy()
        b = mod.bias.detach().numpy() if mod.bias is not None else np.zeros(mod.out_features, np.float32)
        wi, bi = self._weights(node.name, w, b, x, None)
        act = self.fused_act.get(node, (node, ACT.NONE))[1]
        out = self._out(node)
        self._op(
            OPS.FULLY_CONNECTED,
            [x.index, wi, bi],
            [out.index],
            schema.FullyConnectedOptionsT(fusedActivationFunction=act),
        )
        return out

    def _reshape(self, node: fx.Node) -> _Val:
        x = self._arg(node)
        if not x.in_torch_order():
            x = self._transpose(x, tuple(range(len(x.shape))), node.name)
        shape = _shape(node)
        out = self._new(node.name, shape, tuple(range(len(shape))), x.quant)
        new_shape = self._i32(f"{node.name}/shape", shape)
        self._op(OPS.RESHAPE, [x.index, new_shape], [out.index], schema.ReshapeOptionsT(newShape=list(shape)))
        return out

    def _permute(self, node: fx.Node) -> _Val:
        x = self._arg(node)
        dims: Any = node.args[1:] if len(node.args) > 2 else node.args[1]
        p = [int(d) % len(x.shape) for d in dims]
        return _Val(x.index, _shape(node), tuple(p.index(d) for d in x.perm), x.quant)

    def _concat(self, node: fx.Node) -> _Val:
        args: Any = node.args
        inputs = [self.vals[a] for a in args[0]]
        kwargs: Any = node.kwargs
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % len(inputs[0].shape)
        perm = inputs[0].perm
        inputs = [self._transpose(v, perm, f"{node.name}/in{i}") for i, v in enumerate(inputs)]
        out = self._out(node, perm)
        options = schema.ConcatenationOptionsT(axis=perm.index(dim), fusedActivationFunction=ACT.NONE)
        self._op(OPS.CONCATENATION, [v.index for v in inputs], [out.index], options)
        return out

    def _add(self, node: fx.Node) -> _Val:
        if not all(isinstance(a, fx.Node) for a in node.args[:2]):
            raise UnsupportedLayer(f"{node.name}: only tensor + tensor additions are supported")
        a, b = self._arg(node, 0), self._arg(node, 1)
        b = self._transpose(b, a.perm, node.name)
        act = self.fused_act.get(node, (node, ACT.NONE))[1]
        out = self._out(node, a.perm)
        self._op(OPS.ADD, [a.index, b.index], [out.index], schema.AddOptionsT(fusedActivationFunction=act))
        return out

    def _activation(self, node: fx.Node, kind: int) -> _Val:
        x = self._arg(node)
        out = self._out(node, x.perm)
        self._op(OPS.RELU if kind == ACT.RELU else OPS.RELU6, [x.index], [out.index])
        return out

    def _softmax(self, node: fx.Node, dim: int) -> _Val:
        x = self._arg(node)
        dim %= len(x.shape)
        if x.perm[-1] != dim:
            raise UnsupportedLayer(f"{node.name}: softmax must run over the last dimension")
        shape = _shape(node)
        out = self._new(node.name, shape, x.perm, _SOFTMAX_QUANT)
        self._op(OPS.SOFTMAX, [x.index], [out.index], schema.SoftmaxOptionsT(beta=1.0))
        return out

    def _node(self, node: fx.Node) -> _Val:
        mod = self._module(node)
        kind = self._act_kind(node)
        if kind is not None:
            return self._activation(node, kind)
        if isinstance(mod, nn.Conv2d):
            return self._conv(node, mod)
        if isinstance(mod, nn.MaxPool2d | nn.AvgPool2d):
            return self._pool(node, mod)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._mean(node, mod)
        if isinstance(mod, nn.Linear):
            return self._linear(node, mod)
        if isinstance(mod, nn.Softmax):
            return self._softmax(node, mod.dim if mod.dim is not None else -1)
        if isinstance(mod, _ALIAS_MODULES) or (node.op == "call_method" and node.target == "contiguous"):
            return self._arg(node)
        if isinstance(mod, nn.Flatten) or node.target is torch.flatten:
            return self._reshape(node)
        if node.op == "call_method" and node.target in _VIEW_METHODS:
            return self._reshape(node)
        if node.op == "call_method" and node.target == "permute":
            return self._permute(node)
        if node.target is torch.cat:
            return self._concat(node)
        if node.target in (operator.add, torch.add):
            return self._add(node)
        raise UnsupportedLayer(f"{node.format_node()}: no TFLite mapping for this layer")

    def convert(
        self, input_name: str, output_names: Sequence[str], description: str, input_quant: _Quant | None = None
    ) -> bytes:
        inputs: list[int] = []
        outputs: list[int] = []
        for node in self.gm.graph.nodes:
            if node in self.skip:
                continue
            if node.op == "placeholder":
                shape = _shape(node)
                perm = _NHWC if len(shape) == 4 else tuple(range(len(shape)))
                planned = self.quants.get(node)
                val = self._new(input_name, shape, perm, input_quant or planned)
                inputs.append(val.index)
                if self.int8 and input_quant is not None and input_quant != planned:
                    # a split tail takes its head's int8 output as it is, then requantizes it
                    requantized = self._new(f"{input_name}/requantized", shape, perm, planned)
                    self._op(OPS.QUANTIZE, [val.index], [requantized.index])
                    val = requantized
                self.vals[node] = val
            elif node.op == "output":
                result = node.args[0]
                nodes = list(result) if isinstance(result, tuple | list) else [result]
                if len(nodes) != len(output_names):
                    raise ValueError(f"the model has {len(nodes)} outputs, {len(output_names)} names were given")
                for out_node, name in zip(nodes, output_names, strict=True):
                    index = self.vals[out_node].index
                    if index in outputs or index in inputs:
                        raise UnsupportedLayer(f"output {name} is another input or output")
                    self.g.tensors[index].name = name
                    outputs.append(index)
            else:
                self.vals[node] = self._node(node)
        return self.g.finish(inputs, outputs, description)


def export_tflite(
    gm: fx.GraphModule,
    *,
    input_name: str,
    output_names: Sequence[str],
    description: str,
    calibration: Iterable[torch.Tensor] | None = None,
    ranges: Ranges | None = None,
    input_quant: tuple[float, int] | None = None,
) -> bytes:
    """Serialise a :func:`prepare`-d model as TFLite: float32, or full-integer int8 when a
    representative set (``calibration``, one ``[1, ...]`` sample at a time) is given.

    ``input_quant`` fixes the int8 input's ``(scale, zero_point)``: a split tail takes its head's
    output quantization, so that the head's int8 output feeds the tail unchanged. ``ranges`` (from
    :func:`calibrate`) may stand in for ``calibration`` when they are already known."""
    if ranges is None and calibration is not None:
        ranges = calibrate(gm, calibration)
    fixed = _Quant(float(np.float32(input_quant[0])), int(input_quant[1])) if input_quant is not None else None
    return _Converter(gm, ranges).convert(input_name, output_names, description, fixed)


def tensor_quant(details: dict[str, Any]) -> tuple[float, int]:
    """``(scale, zero_point)`` of a LiteRT tensor-details entry (per-tensor)."""
    scale, zero = details["quantization"]
    return float(scale), int(zero)


def simulate_int8(gm: fx.GraphModule, ranges: Ranges) -> Callable[[torch.Tensor], Any]:
    """A PyTorch model that computes what :func:`export_tflite`'s int8 file should: the same weight
    quantization, and every activation rounded to the same int8 grid, in float arithmetic.

    It separates the two ways an int8 file can differ from the float model: quantization error
    (which this reproduces) and conversion mistakes (which it does not), so tests can hold the
    int8 file to it tightly."""
    plan = _Converter(gm, ranges)
    sim = copy.deepcopy(gm)  # its nodes are new objects: the plan is looked up by node name
    for mod in sim.modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            w = mod.weight.data
            dims = tuple(range(1, w.dim())) if isinstance(mod, nn.Conv2d) else tuple(range(w.dim()))
            scale = (w.abs().amax(dim=dims, keepdim=True).clamp(min=1e-8) / 127.0).float()
            mod.weight.data = torch.clamp(torch.round(w / scale), -127, 127) * scale
    grid = {node.name: quant for node, quant in plan.quants.items()}
    for node in gm.graph.nodes:
        if isinstance(plan._module(node), nn.Softmax):
            grid[node.name] = _SOFTMAX_QUANT
    skip = {node.name for node in plan.fused_act}  # a fused producer is rounded after its activation, as in the file

    class _Rounding(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            quant = grid.get(n.name)
            if quant is not None and n.name not in skip and isinstance(out, torch.Tensor):
                q = torch.clamp(torch.round(out / quant.scale) + quant.zero_point, -128, 127)
                out = (q - quant.zero_point) * quant.scale
            return out

    def run(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return _Rounding(sim).run(x)

    return run
