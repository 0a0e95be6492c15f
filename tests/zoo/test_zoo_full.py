"""The whole model zoo: every model in every format, its metadata, its split points, the trained pair,
and the daemon accepting each file through ``tenantctl submit``.

Slow (the first run builds the zoo, about four minutes on two cores; later runs reuse the cache in
``$TENANTD_MODELS_DIR`` or ``.cache/models``, which ``make models`` fills): ``pytest -m zoo``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the zoo needs its build extra: pip install -e '.[zoo]'")
pytest.importorskip("sklearn", reason="the digits pair needs scikit-learn: pip install -e '.[zoo]'")

import torch

from models import zoo
from models.zoo import builder, runners
from tests.support.daemon import REPO, daemon_env, start_daemon_process

pytestmark = [pytest.mark.zoo, pytest.mark.slow, pytest.mark.timeout(1800)]

BUILT = [name for name, spec in zoo.MODELS.items() if spec.kind != "copied"]
PAIRS = [(name, fmt) for name in BUILT for fmt in zoo.MODELS[name].formats]
# Published parameter counts (torchvision mobilenet_v2, timm inception_v4), BatchNorm included
PUBLISHED_PARAMS = {"mobilenet_v2": 3_504_872, "inception_v4": 42_679_816}
# int8 against the PyTorch float model, on inputs the calibration did not see. The networks are
# untrained, so their logits are close together and top-1 means little; cosine similarity of the
# outputs is the stated agreement (errors grow with depth: SSD's deepest maps are the worst).
INT8_MIN_COSINE = {"mobilenet_v2": 0.93, "inception_v4": 0.85, "ssd_mobilenet_v1": 0.55, "ssd_mobilenet_v2": 0.65}
INT8_MIN_COSINE_DEFAULT = 0.98
# int8 against PyTorch doing the same int8 rounding: this is what catches conversion mistakes
INT8_SIM_MIN_COSINE = {"mobilenet_v2": 0.95, "inception_v4": 0.9, "ssd_mobilenet_v1": 0.85, "ssd_mobilenet_v2": 0.85}


@pytest.fixture(scope="module")
def built() -> list[builder.BuildResult]:
    return zoo.build(progress=False)


def _check_inputs(name: str, count: int = 3) -> list[np.ndarray]:
    return builder.representative(zoo.resolve(name), count, 99)


def _torch(name: str, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    model = zoo.load_model(name)
    with torch.no_grad():
        outs = [model(torch.from_numpy(x)) for x in inputs]
    return [[t.numpy() for t in (y if isinstance(y, tuple) else (y,))] for y in outs]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_model_and_format_is_built(built: list[builder.BuildResult]) -> None:
    expected = {(name, fmt) for name, spec in zoo.MODELS.items() for fmt in spec.formats}
    assert {(r.name, r.fmt) for r in built} == expected
    for r in built:
        assert r.path.is_file()


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
def test_metadata_matches_the_file_and_the_network(built: list[builder.BuildResult], name: str, fmt: str) -> None:
    meta = zoo.metadata(name, fmt)
    files = [zoo.path(name, fmt).parent / f for f in meta["files"]]
    assert meta["file_bytes"] == sum(f.stat().st_size for f in files)
    assert meta["sha256"] == builder._sha256(files[0])
    assert meta["params"] == sum(p.numel() for p in zoo.load_model(name).parameters())
    if name in PUBLISHED_PARAMS:
        assert meta["params"] == PUBLISHED_PARAMS[name]
    spec = zoo.resolve(name)
    (inp,) = meta["inputs"]
    n, c, h, w = spec.input_shape
    assert inp["shape"] == ([n, h, w, c] if fmt.startswith("tflite") else [n, c, h, w])
    assert [o["name"] for o in meta["outputs"]] == list(spec.output_names)
    if spec.task == "object-detection":
        assert [o["shape"] for o in meta["outputs"]] == [[1, 1917, 4], [1, 1917, 91]]
    assert meta["trained"] == (spec.kind != "untrained")
    assert meta["macs"] > 0 and meta["peak_activation_bytes"] > 0
    assert meta["param_bytes"] >= meta["params"] * (1 if fmt == "tflite_int8" else 4) * 0.97  # BN folded away


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
def test_each_file_runs_in_its_runtimes_and_agrees_across_formats(
    built: list[builder.BuildResult], name: str, fmt: str
) -> None:
    inputs = _check_inputs(name)
    want = _torch(name, inputs)
    for runtime in runners.RUNTIMES[fmt]:
        runner = runners.load(zoo.path(name, fmt), runtime)
        got = [runners.run_float(runner, [x], tflite=fmt.startswith("tflite")) for x in inputs]
        for gs, ws in zip(got, want, strict=True):
            for g, w in zip(gs, ws, strict=True):
                assert g.shape == w.shape
                if fmt == "tflite_int8":
                    assert _cosine(g, w) >= INT8_MIN_COSINE.get(name, INT8_MIN_COSINE_DEFAULT), runtime
                else:
                    assert float(np.abs(g - w).max()) <= builder.FLOAT_RTOL * float(np.abs(w).max()), runtime


@pytest.mark.parametrize("name", BUILT)
def test_int8_file_computes_what_its_quantization_says(built: list[builder.BuildResult], name: str) -> None:
    spec = zoo.resolve(name)
    model = zoo.load_model(name)
    example = builder.representative(spec, 1, 1)[0]
    inputs = _check_inputs(name, 2)
    # the whole network: LSB-level differences (rounding ties, requantization) compound with depth
    simulated = builder.simulated_int8(builder.calibrated(model, spec, example), inputs)
    runner = runners.load(zoo.path(name, "tflite_int8"), "litert")
    for x, sims in zip(inputs, simulated, strict=True):
        for g, s in zip(runners.run_float(runner, [x], tflite=True), sims, strict=True):
            assert _cosine(g, s) >= INT8_SIM_MIN_COSINE.get(name, 0.999)
    # the first stages alone, where nothing has compounded yet, must match tightly
    k = min(2, len(zoo.split_points(name)))
    split = zoo.build_split(name, k, "tflite_int8")
    head = torch.nn.Sequential(*list(model.children())[:k])
    head_sim = builder.simulated_int8(builder.calibrated(head, spec, example), inputs)
    head_runner = runners.load(split.head, "litert")
    for x, (s,) in zip(inputs, head_sim, strict=True):
        (g,) = runners.run_float(head_runner, [x], tflite=True)
        scale = head_runner.output_details[0]["quantization"][0]  # type: ignore[attr-defined]
        assert _cosine(g, s) >= 0.999
        assert float(np.mean(np.abs(g - s) > 1.01 * scale)) < 0.01  # under 1% of values off by more than one step


SPLIT_CASES = [
    (name, fmt)
    for name in ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2")
    for fmt in ("onnx", "tflite")
]


@pytest.mark.parametrize(("name", "fmt"), SPLIT_CASES)
def test_head_then_tail_equals_the_whole_at_a_middle_split_point(
    built: list[builder.BuildResult], name: str, fmt: str
) -> None:
    points = zoo.split_points(name)
    assert len(points) >= 5
    point = points[len(points) // 2]
    split = zoo.build_split(name, point["index"], fmt)
    runtime = runners.RUNTIMES[fmt][0]
    tflite = fmt.startswith("tflite")
    head, tail = runners.load(split.head, runtime), runners.load(split.tail, runtime)
    whole = runners.load(zoo.path(name, fmt), runtime)
    x = _check_inputs(name, 1)[0]
    middle = runners.run_float(head, [x], tflite=tflite)
    assert list(middle[0].shape) == point["shape"] and middle[0].size * 4 == point["bytes_float32"]
    for got, want in zip(
        runners.run_float(tail, middle, tflite=tflite), runners.run_float(whole, [x], tflite=tflite), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_the_digits_pair_is_trained_deterministically_and_the_full_model_is_better(
    built: list[builder.BuildResult],
) -> None:
    from models.zoo import digits

    data = digits.load()
    for name in ("digits_compact", "digits_full"):
        a, b = digits.train(name, data), digits.train(name, data)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
        for fmt in zoo.FORMATS:
            acc = zoo.metadata(name, fmt)["accuracy"]
            assert acc["top1_pytorch"] == digits.accuracy(a, data.x_test, data.y_test)
            assert abs(acc["top1"] - acc["top1_pytorch"]) <= 0.02  # int8 costs at most 2 points
            assert acc["test_samples"] == len(data.y_test)
    compact = zoo.metadata("digits_compact", "tflite")
    full = zoo.metadata("digits_full", "tflite")
    assert 0.9 <= compact["accuracy"]["top1"] < full["accuracy"]["top1"]
    assert compact["params"] * 10 < full["params"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("zoo-daemon")
    proc = start_daemon_process(root / "state", f"ipc://{root}/d.sock")
    try:
        yield proc.endpoint
    finally:
        proc.stop()


@pytest.mark.parametrize(("name", "fmt"), PAIRS + [(f"wakeword_{w}", "tflite_int8") for w in ("okay_nabu", "alexa")])
def test_tenantctl_submit_accepts_each_built_file(
    built: list[builder.BuildResult], daemon: str, name: str, fmt: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tenantclient.cli", "--endpoint", daemon, "submit", str(zoo.path(name, fmt)),
         "--name", f"{name}-{fmt}", "--tenant", "zoo"],
        capture_output=True, text=True, timeout=600, env=daemon_env(), cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"submitted {name}-{fmt} for tenant zoo" in done.stdout


def test_zoo_bench_measures_each_format_in_each_runtime(built: list[builder.BuildResult], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.zoo_bench", "cnn_trad_fpool3", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=daemon_env(), cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "zoo_bench.csv").read_text().splitlines()
    cells = {tuple(r.split(",")[1:3]) for r in rows[1:]}
    assert cells == {(fmt, rt) for fmt, rts in runners.RUNTIMES.items() for rt in rts}
    assert "| cnn_trad_fpool3 | tflite_int8 | litert |" in done.stdout
