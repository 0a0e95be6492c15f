"""Tests for models.tiny: the hand-written TFLite models load and run in LiteRT."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from models import tiny


def _run(model: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` in LiteRT on named inputs; return outputs by tensor name."""
    interp = Interpreter(model_content=model)
    details = {d["name"]: d for d in interp.get_input_details()}
    assert set(details) == set(inputs)
    for name, value in inputs.items():
        if tuple(details[name]["shape"]) != value.shape:
            interp.resize_tensor_input(details[name]["index"], list(value.shape))
    interp.allocate_tensors()
    for name, value in inputs.items():
        interp.set_tensor(details[name]["index"], value)
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


def _numpy_mlp(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Independent float64 reference: ReLU hidden layers, linear last layer."""
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_mlp_matches_numpy_reference() -> None:
    layers = tiny.mlp_weights(16, [32, 24], 5, seed=3)
    assert [w.shape for w, _ in layers] == [(32, 16), (24, 32), (5, 24)]  # [out, in]
    x = np.random.default_rng(42).standard_normal((4, 16)).astype(np.float32)

    probs = _run(tiny.mlp(16, [32, 24], 5, seed=3, batch=4), {"input": x})["probs"]
    logits = _run(
        tiny.mlp(16, [32, 24], 5, seed=3, batch=4, softmax=False, output_name="y"),
        {"input": x},
    )["y"]

    ref = _numpy_mlp(layers, x)
    assert probs.shape == logits.shape == (4, 5)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(probs, _softmax(ref), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert probs.max() < 0.999  # not degenerate
    assert probs.min() > 1e-6


def test_mlp_names_and_shapes() -> None:
    interp = Interpreter(model_content=tiny.mlp(8, [4], 3, batch=2, input_name="x", output_name="p"))
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert (inp["name"], tuple(inp["shape"]), inp["dtype"]) == ("x", (2, 8), np.float32)
    assert (out["name"], tuple(out["shape"]), out["dtype"]) == ("p", (2, 3), np.float32)
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["p"]}}


def test_two_input_outputs_and_names() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 2, 3)).astype(np.float32)
    interp = Interpreter(model_content=tiny.two_input((2, 3), seed=7))
    assert [d["name"] for d in interp.get_input_details()] == ["a", "b"]
    assert [d["name"] for d in interp.get_output_details()] == ["sum", "scaled"]

    out = _run(tiny.two_input((2, 3), seed=7), {"a": a, "b": b})
    k = np.float32(tiny.two_input_scale(7))
    np.testing.assert_allclose(out["sum"], a + b, atol=1e-6)
    np.testing.assert_allclose(out["scaled"], a * b * k, atol=1e-6)


def test_int8_mlp_dtypes_and_accuracy() -> None:
    model = tiny.int8_mlp(16, [32], 5, seed=1, batch=64)
    interp = Interpreter(model_content=model)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == out["dtype"] == np.int8
    assert out["name"] == "logits"
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    assert s_in > 0
    assert s_out > 0

    x = np.random.default_rng(5).standard_normal((64, 16))
    xq = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
    yq = _run(model, {"input": xq})["logits"]
    y = (yq.astype(np.float64) - z_out) * s_out

    ref = _numpy_mlp(tiny.mlp_weights(16, [32], 5, seed=1), (xq - z_in) * s_in)
    np.testing.assert_allclose(y, ref, atol=4 * s_out)


@pytest.mark.parametrize("target", [1 << 20, 4 << 20])
def test_sized_mlp_hits_target(target: int) -> None:
    model = tiny.sized_mlp(target, seed=1)
    measured = tiny.param_bytes(model)
    assert abs(measured - target) <= 0.05 * target

    interp = Interpreter(model_content=model)
    assert tuple(interp.get_input_details()[0]["shape"]) == (1, 256)
    assert tuple(interp.get_output_details()[0]["shape"]) == (1, 16)
    shapes = {d["name"]: tuple(d["shape"]) for d in interp.get_tensor_details()}
    hidden = shapes["fc0/out"][1]
    layers = tiny.mlp_weights(256, [hidden], 16, seed=1)
    assert measured == sum(w.nbytes + b.nbytes for w, b in layers)


def test_sized_mlp_rejects_tiny_target() -> None:
    with pytest.raises(ValueError, match="too small"):
        tiny.sized_mlp(100)


def test_param_bytes_counts_constant_buffers_only() -> None:
    layers = tiny.mlp_weights(8, [4], 3)
    assert tiny.param_bytes(tiny.mlp(8, [4], 3)) == sum(w.nbytes + b.nbytes for w, b in layers)
    assert tiny.param_bytes(tiny.two_input()) == 4  # the scalar constant k
    assert tiny.param_bytes(tiny.unsupported_op_model()) == 0
    with pytest.raises(ValueError, match="TFL3"):
        tiny.param_bytes(b"\x00" * 64)


def test_unsupported_op_model_raises_in_litert() -> None:
    model = tiny.unsupported_op_model()
    assert model[4:8] == b"TFL3"
    with pytest.raises(RuntimeError, match=tiny.UNSUPPORTED_OP_NAME):
        Interpreter(model_content=model).allocate_tensors()


def test_builds_are_deterministic() -> None:
    assert tiny.mlp(8, [16], 4, seed=1) == tiny.mlp(8, [16], 4, seed=1)
    assert tiny.mlp(8, [16], 4, seed=1) != tiny.mlp(8, [16], 4, seed=2)
    assert tiny.int8_mlp(8, [16], 4, seed=1) == tiny.int8_mlp(8, [16], 4, seed=1)
    assert tiny.two_input(seed=1) == tiny.two_input(seed=1)
    assert tiny.two_input(seed=1) != tiny.two_input(seed=2)
    assert tiny.sized_mlp(64 << 10) == tiny.sized_mlp(64 << 10)
    assert tiny.unsupported_op_model() == tiny.unsupported_op_model()


def _same_pad(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Zero-pad H and W of ``[H, W, C]`` exactly as TFLite's SAME padding does."""
    pads = []
    for n in x.shape[:2]:
        total = max((-(-n // stride) - 1) * stride + k - n, 0)
        pads.append((total // 2, total - total // 2))  # the odd pixel goes after
    return np.pad(x, [*pads, (0, 0)])


def _numpy_conv_relu6(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, *, depthwise: bool) -> np.ndarray:
    """SAME conv of ``x`` ``[H, W, C]`` then RELU6, in float64.

    ``w`` is ``[out, kh, kw, in]`` (CONV_2D) or ``[1, kh, kw, C]`` (DEPTHWISE_CONV_2D).
    """
    k = w.shape[1]
    xp = _same_pad(x, k, stride)
    oh, ow = -(-x.shape[0] // stride), -(-x.shape[1] // stride)
    w = w.astype(np.float64)
    y = np.zeros((oh, ow, w.shape[3] if depthwise else w.shape[0]))
    for i in range(k):
        for j in range(k):
            patch = xp[
                i : i + (oh - 1) * stride + 1 : stride,
                j : j + (ow - 1) * stride + 1 : stride,
            ]
            if depthwise:
                y += patch * w[0, i, j]
            else:
                y += np.einsum("hwc,oc->hwo", patch, w[:, i, j])
    return np.clip(y + b, 0.0, 6.0)


def _numpy_cnn(layers: list[tuple[np.ndarray, np.ndarray]], pixels: np.ndarray) -> np.ndarray:
    """Float64 reference of tiny.cnn's logits for one ``[H, W, 3]`` image in [0, 1]."""
    h = _numpy_conv_relu6(pixels, *layers[0], 2, depthwise=False)
    for dw, pw in zip(layers[1:-1:2], layers[2:-1:2], strict=True):
        h = _numpy_conv_relu6(h, *dw, 2, depthwise=True)
        h = _numpy_conv_relu6(h, *pw, 1, depthwise=False)
    w, b = layers[-1]
    return h.mean(axis=(0, 1)) @ w.T.astype(np.float64) + b


@pytest.mark.parametrize("image", [32, 29])  # SAME pads (0, 1) at 32 and (1, 1) at 29
def test_cnn_matches_numpy_reference(image: int) -> None:
    layers = tiny.cnn_weights(image, (8, 16), 5, seed=4)
    assert [w.shape for w, _ in layers] == [
        (8, 3, 3, 3),
        (1, 3, 3, 8),
        (16, 1, 1, 8),
        (5, 16),
    ]
    assert [b.shape for _, b in layers] == [(8,), (8,), (16,), (5,)]
    pixels = np.random.default_rng(9).integers(0, 256, (1, image, image, 3), dtype=np.uint8)
    ref = _numpy_cnn(layers, pixels[0] / 255.0)[None]

    u8 = tiny.cnn(image, (8, 16), 5, seed=4)
    f32 = tiny.cnn(
        image,
        (8, 16),
        5,
        seed=4,
        input_dtype="float32",
        input_name="x",
        output_name="p",
    )
    ops = [op["op_name"] for op in Interpreter(model_content=u8)._get_ops_details()]
    assert ops == [
        "CAST",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "CONV_2D",
        "MEAN",
        "FULLY_CONNECTED",
        "SOFTMAX",
    ]
    for probs in (
        _run(u8, {"image": pixels})["probs"],
        _run(f32, {"x": (pixels / np.float32(255.0)).astype(np.float32)})["p"],
    ):
        assert probs.shape == (1, 5)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs, _softmax(ref), atol=1e-5)
        np.testing.assert_allclose(np.log(probs), ref - np.log(np.exp(ref).sum()), atol=1e-4)
        assert 1e-4 < probs.min() < probs.max() < 0.99  # not degenerate


def test_cnn_default_224_model() -> None:
    model = tiny.cnn()
    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert (inp["name"], tuple(inp["shape"]), inp["dtype"]) == (
        "image",
        (1, 224, 224, 3),
        np.uint8,
    )
    assert (out["name"], tuple(out["shape"]), out["dtype"]) == (
        "probs",
        (1, 10),
        np.float32,
    )
    pixels = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    assert pixels.nbytes == 150_528
    interp.set_tensor(inp["index"], pixels)
    interp.invoke()
    probs = interp.get_tensor(out["index"])
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    assert probs.max() < 0.999

    times = []
    for _ in range(15):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    print(f"tiny.cnn() 224x224 uint8: median {1e3 * np.median(times):.2f} ms per inference, num_threads=1")

    layers = tiny.cnn_weights()
    assert [b.size for _, b in layers] == [
        96,
        96,
        352,
        352,
        704,
        704,
        1408,
        10,
    ]  # conv, (dw, pw) x 3, fc
    axes_bytes = 8  # the int32 [1, 2] axes of MEAN, the model's only other constant
    assert tiny.param_bytes(model) == sum(w.nbytes + b.nbytes for w, b in layers) + axes_bytes
    assert tiny.cnn() == model
    assert tiny.cnn(seed=1) != model


def test_cnn_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="input_dtype"):
        tiny.cnn(32, (8,), input_dtype="int8")
    with pytest.raises(ValueError, match="channel"):
        tiny.cnn(32, ())
    with pytest.raises(ValueError, match="classes"):
        tiny.cnn_weights(32, (8,), 0)


def test_param_bytes_on_pymicro_wakeword_model() -> None:
    pkg = pytest.importorskip("pymicro_wakeword")
    paths = sorted((Path(pkg.__file__).parent / "models").glob("*.tflite"))
    if not paths:
        pytest.skip("pymicro_wakeword ships no .tflite models")
    data = paths[0].read_bytes()
    n = tiny.param_bytes(data)
    assert 0 < n < len(data)
