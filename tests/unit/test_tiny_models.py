"""Tests for models.tiny: the hand-written TFLite models load and run in LiteRT."""

from __future__ import annotations

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
    return {
        d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()
    }


def _numpy_mlp(
    layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray
) -> np.ndarray:
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
    interp = Interpreter(
        model_content=tiny.mlp(8, [4], 3, batch=2, input_name="x", output_name="p")
    )
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert (inp["name"], tuple(inp["shape"]), inp["dtype"]) == ("x", (2, 8), np.float32)
    assert (out["name"], tuple(out["shape"]), out["dtype"]) == ("p", (2, 3), np.float32)
    assert interp.get_signature_list() == {
        "serving_default": {"inputs": ["x"], "outputs": ["p"]}
    }


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
    assert tiny.param_bytes(tiny.mlp(8, [4], 3)) == sum(
        w.nbytes + b.nbytes for w, b in layers
    )
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


def test_param_bytes_on_pymicro_wakeword_model() -> None:
    pkg = pytest.importorskip("pymicro_wakeword")
    paths = sorted((Path(pkg.__file__).parent / "models").glob("*.tflite"))
    if not paths:
        pytest.skip("pymicro_wakeword ships no .tflite models")
    data = paths[0].read_bytes()
    n = tiny.param_bytes(data)
    assert 0 < n < len(data)
