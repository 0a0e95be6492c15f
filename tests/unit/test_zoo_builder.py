"""The zoo's builder, exercised end to end on its smallest paper workload, cnn-trad-fpool3.

Builds all four formats into a temporary folder, runs each in every runtime its format targets
and compares with PyTorch, checks the metadata against the files, composes split heads and tails,
and checks the catalogue's errors. The whole zoo is checked in ``tests/zoo`` (``-m zoo``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the zoo builder needs torch (pip install -e '.[test]' or '.[zoo]')")
pytest.importorskip("onnx", reason="the zoo builder needs onnx")
pytest.importorskip("openvino", reason="the zoo builder needs openvino")
pytest.importorskip("onnxruntime", reason="the zoo builder needs onnxruntime")
pytest.importorskip("tqdm", reason="the zoo builder needs tqdm")

import torch

from models import zoo
from models.zoo import builder, runners
from tenantd.runtimes.litert import tflite_param_bytes

NAME = "cnn_trad_fpool3"
INT8_MIN_TOP1 = 0.75  # stated agreement of int8 with PyTorch float on unseen inputs
INT8_MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[builder.BuildResult]]:
    root = tmp_path_factory.mktemp("zoo")
    return root, zoo.build([NAME], root=root, progress=False)


def _fresh_inputs(count: int = 6) -> list[np.ndarray]:
    # seed 99: neither the calibration (0) nor the build-time check inputs (2)
    return builder.representative(zoo.resolve(NAME), count, 99)


def _torch_outputs(inputs: list[np.ndarray]) -> list[np.ndarray]:
    model = zoo.load_model(NAME)
    with torch.no_grad():
        return [model(torch.from_numpy(x)).numpy() for x in inputs]


def test_builds_all_four_formats_into_the_cache_folder(built: tuple[Path, list[builder.BuildResult]]) -> None:
    root, results = built
    assert sorted(r.fmt for r in results) == sorted(zoo.FORMATS)
    for result in results:
        assert not result.cached
        assert result.path == zoo.path(NAME, result.fmt, root)
        assert result.path.parent == root / NAME
    assert (root / NAME / f"{NAME}.bin").exists()  # OpenVINO's weights beside the .xml
    assert {(b.name, b.fmt, b.path) for b in zoo.built(root)} == {(NAME, r.fmt, r.path) for r in results}


def test_metadata_matches_the_files(built: tuple[Path, list[builder.BuildResult]]) -> None:
    root, _ = built
    # cnn-trad-fpool3 from the paper's table: conv 64@20x8, conv 64@10x4 (on 79x11 after the 1x3 pool),
    # linear 32, dense 128, softmax 12
    expected_params = (
        (20 * 8 * 64 + 64) + (10 * 4 * 64 * 64 + 64) + (64 * 70 * 8 * 32 + 32) + (32 * 128 + 128) + (128 * 12 + 12)
    )
    for fmt in zoo.FORMATS:
        meta = zoo.metadata(NAME, fmt, root)
        files = [root / NAME / f for f in meta["files"]]
        assert meta["name"] == NAME and meta["format"] == fmt and meta["task"] == "keyword-spotting"
        assert meta["file_bytes"] == sum(f.stat().st_size for f in files)
        assert meta["sha256"] == builder._sha256(files[0])
        assert meta["params"] == expected_params
        assert meta["trained"] is False and "untrained" in meta["weights"]
        assert meta["macs"] > 0 and meta["flops"] == 2 * meta["macs"]
        assert {"torch", "numpy", "python"} <= set(meta["tools"])
        (inp,) = meta["inputs"]
        (out,) = meta["outputs"]
        assert out["shape"] == [1, 12]
        if fmt.startswith("tflite"):
            assert inp["shape"] == [1, 98, 40, 1] and inp["layout"] == "NHWC"
            assert meta["param_bytes"] == tflite_param_bytes(files[0].read_bytes())
        else:
            assert inp["shape"] == [1, 1, 98, 40]
        int8 = fmt == "tflite_int8"
        assert inp["dtype"] == ("int8" if int8 else "float32")
        assert ("scale" in inp) == int8
        # every weight is in the file once: 4 bytes each in float, 1 (+ int32 biases) in int8
        if int8:
            assert expected_params <= meta["param_bytes"] < 1.01 * expected_params
        else:
            assert 4 * expected_params <= meta["param_bytes"] < 1.01 * 4 * expected_params
    float_peak = zoo.metadata(NAME, "tflite", root)["peak_activation_bytes"]
    assert zoo.metadata(NAME, "tflite_int8", root)["peak_activation_bytes"] * 4 == float_peak
    # the two conv outputs are the largest activations: 64x79x33 then 64x79x11 (both live at the pool)
    assert float_peak >= 4 * 64 * 79 * 33


@pytest.mark.parametrize("fmt", zoo.FORMATS)
def test_each_format_runs_in_its_runtimes_and_agrees_with_pytorch(
    built: tuple[Path, list[builder.BuildResult]], fmt: str
) -> None:
    root, _ = built
    inputs = _fresh_inputs()
    want = _torch_outputs(inputs)
    scale = max(float(np.abs(w).max()) for w in want)
    for runtime in runners.RUNTIMES[fmt]:
        runner = runners.load(zoo.path(NAME, fmt, root), runtime, threads=1)
        got = [runners.run_float(runner, [x], tflite=fmt.startswith("tflite"))[0] for x in inputs]
        if fmt == "tflite_int8":
            top1 = np.mean([g.argmax() == w.argmax() for g, w in zip(got, want, strict=True)])
            cosine = min(
                float(g.ravel() @ w.ravel() / np.linalg.norm(g) / np.linalg.norm(w))
                for g, w in zip(got, want, strict=True)
            )
            assert top1 >= INT8_MIN_TOP1, (runtime, top1)
            assert cosine >= INT8_MIN_COSINE, (runtime, cosine)
        else:
            err = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
            assert err <= builder.FLOAT_RTOL * scale, (runtime, err, scale)
        recorded = zoo.metadata(NAME, fmt, root)["agreement"][runtime]
        assert recorded.get("within_tolerance", True)


def test_a_second_build_is_cached_and_a_forced_one_is_byte_identical(
    built: tuple[Path, list[builder.BuildResult]],
) -> None:
    root, _ = built
    before = {fmt: zoo.metadata(NAME, fmt, root)["sha256"] for fmt in ("tflite", "tflite_int8")}
    again = zoo.build([NAME], ["tflite", "tflite_int8"], root=root, progress=False)
    assert all(r.cached for r in again)
    forced = zoo.build([NAME], ["tflite", "tflite_int8"], root=root, progress=False, force=True)
    assert not any(r.cached for r in forced)
    assert {r.fmt: r.metadata["sha256"] for r in forced} == before


def test_split_points_describe_each_stage_boundary(built: tuple[Path, list[builder.BuildResult]]) -> None:
    root, _ = built
    points = zoo.split_points(NAME, root)
    assert [p["after"] for p in points] == ["conv1", "conv2"]
    assert points[0]["shape"] == [1, 64, 79, 11] and points[0]["tflite_shape"] == [1, 79, 11, 64]
    assert points[1]["shape"] == [1, 64, 70, 8]
    for p in points:
        assert p["bytes_float32"] == 4 * p["bytes_int8"] == 4 * int(np.prod(p["shape"]))


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
@pytest.mark.parametrize("index", [1, 2])
def test_float_head_then_tail_equals_the_whole(
    built: tuple[Path, list[builder.BuildResult]], fmt: str, index: int
) -> None:
    root, _ = built
    split = zoo.build_split(NAME, index, fmt, root=root)
    runtime = runners.RUNTIMES[fmt][0]
    tflite = fmt.startswith("tflite")
    head, tail = runners.load(split.head, runtime, threads=1), runners.load(split.tail, runtime, threads=1)
    whole = runners.load(zoo.path(NAME, fmt, root), runtime, threads=1)
    for x in _fresh_inputs(3):
        middle = runners.run_float(head, [x], tflite=tflite)[0]
        assert list(middle.shape) == split.intermediate["shape"]
        composed = runners.run_float(tail, [middle], tflite=tflite)[0]
        expected = runners.run_float(whole, [x], tflite=tflite)[0]
        np.testing.assert_allclose(composed, expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max()))


def test_int8_tail_takes_the_int8_head_output_unchanged(built: tuple[Path, list[builder.BuildResult]]) -> None:
    root, _ = built
    split = zoo.build_split(NAME, 1, "tflite_int8", root=root)
    head, tail = runners.load(split.head, "litert", threads=1), runners.load(split.tail, "litert", threads=1)
    out_q = head.output_details[0]["quantization"]  # type: ignore[attr-defined]
    in_q = tail.input_details[0]["quantization"]
    assert out_q == in_q and head.output_details[0]["dtype"] == tail.input_details[0]["dtype"] == np.int8  # type: ignore[attr-defined]
    inputs = _fresh_inputs()
    want = _torch_outputs(inputs)
    agree = 0
    for x, w in zip(inputs, want, strict=True):
        q_scale, q_zero = head.input_details[0]["quantization"]
        xq = np.clip(np.round(x.transpose(0, 2, 3, 1) / q_scale) + q_zero, -128, 127).astype(np.int8)
        (middle,) = head.run([xq])
        (yq,) = tail.run([middle])  # int8 straight through, no requantization by the caller
        o_scale, o_zero = tail.output_details[0]["quantization"]  # type: ignore[attr-defined]
        y = (yq.astype(np.float32) - o_zero) * o_scale
        agree += int(y.argmax() == w.argmax())
    assert agree / len(inputs) >= INT8_MIN_TOP1


def test_the_wakeword_model_is_copied_from_its_wheel_with_metadata(tmp_path: Path) -> None:
    wheel = pytest.importorskip("pymicro_wakeword")
    (result,) = zoo.build(["wakeword_okay_nabu"], root=tmp_path, progress=False)
    source = Path(wheel.__file__).parent / "models" / "okay_nabu.tflite"
    assert result.path.read_bytes() == source.read_bytes()
    meta = zoo.metadata("wakeword-okay-nabu", "tflite_int8", tmp_path)
    assert meta["trained"] is True and "pymicro-wakeword==" in meta["source"]
    assert meta["param_bytes"] == tflite_param_bytes(source.read_bytes())
    assert meta["inputs"][0]["dtype"] == "int8"
    with pytest.raises(zoo.UnknownFormat, match="only as tflite_int8"):
        zoo.path("wakeword_okay_nabu", "onnx", tmp_path)


def test_catalogue_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(zoo.UnknownModel, match="known models: mobilenet_v2, inception_v4"):
        zoo.resolve("resnet50")
    with pytest.raises(zoo.UnknownFormat, match="known formats: onnx, openvino, tflite, tflite_int8"):
        zoo.path("mobilenet_v2", "coreml", tmp_path)
    with pytest.raises(zoo.ModelNotBuilt, match="python -m models build mobilenet_v2 --formats onnx"):
        zoo.path("mobilenet-v2", "onnx", tmp_path)
    with pytest.raises(ValueError, match=r"split points 1\.\.2"):
        zoo.build_split(NAME, 3, "tflite", root=tmp_path)


def test_a_missing_build_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(zoo.BuildDependencyMissing, match=r"openvino.*pip install -e '\.\[zoo\]'"):
        zoo.build([NAME], root=tmp_path, progress=False)


def test_cli_builds_with_progress_and_refuses_unknown_names(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "models", "build", "cnn-trad-fpool3", "--formats", "tflite", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "cnn_trad_fpool3 tflite:" in ok.stdout and "1 files (1 built, 0 cached)" in ok.stdout
    assert "1/1" in ok.stderr  # tqdm's progress bar
    assert json.loads((tmp_path / NAME / "tflite.json").read_text())["format"] == "tflite"
    bad = subprocess.run(
        [sys.executable, "-m", "models", "build", "resnet50", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "known models:" in bad.stderr
