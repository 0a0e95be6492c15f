"""Integration: one network as .tflite, .onnx and OpenVINO IR, run by LiteRT, ONNX Runtime and
OpenVINO on this CPU, directly and through a real daemon.

The networks are models/tiny.py's (a MobileNet-style CNN with a uint8 NHWC input, and an MLP) and
their ONNX twins from models/tiny_onnx.py (same weights); the IR is converted from that ONNX by
OpenVINO in set-up. LiteRT on the .tflite is the reference. Different engines sum in different
orders, so outputs are compared with a tolerance, not bit for bit: softmax probabilities within
TOLERANCE absolute (measured here: about 1e-8 to 3e-8).
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the OpenVINO runtime tests need openvino (pip install 'tenantd[openvino]')")
pytest.importorskip(
    "onnxruntime", reason="the ONNX Runtime tests need onnxruntime (pip install 'tenantd[onnxruntime]')"
)

from models import tiny, tiny_onnx
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd import runtimes
from tenantd.daemon import Daemon
from tenantd.modelfile import ModelFileRefused
from tenantd.runtimes import get_runtime_class
from tenantwire import irbundle
from tests.conftest import direct_litert

TOLERANCE = 1e-5
CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}


@dataclass(frozen=True)
class Formats:
    tflite: Path
    onnx: Path
    xml: Path  # with its .bin beside it, as OpenVINO saves it (the client bundles the two)
    ovir: Path
    mlp_tflite: Path
    mlp_onnx: Path


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> Formats:
    root = tmp_path_factory.mktemp("formats")
    onnx_cnn = tiny_onnx.cnn(**CNN)  # type: ignore[arg-type]
    paths = Formats(
        tflite=root / "cnn.tflite",
        onnx=root / "cnn.onnx",
        xml=root / "ir" / "cnn.xml",
        ovir=root / "cnn.ovir",
        mlp_tflite=root / "mlp.tflite",
        mlp_onnx=root / "mlp.onnx",
    )
    paths.tflite.write_bytes(tiny.cnn(**CNN))  # type: ignore[arg-type]
    paths.onnx.write_bytes(onnx_cnn)
    tiny_onnx.save_ir(onnx_cnn, paths.xml)
    paths.ovir.write_bytes(irbundle.pack_files(paths.xml))
    paths.mlp_tflite.write_bytes(tiny.mlp(32, [64], 10, seed=1))
    paths.mlp_onnx.write_bytes(tiny_onnx.mlp(32, [64], 10, seed=1))
    return paths


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("runtime", "fmt"),
    [("onnxruntime", "onnx"), ("openvino", "onnx"), ("openvino", "ovir"), ("openvino", "tflite")],
)
def test_runtime_agrees_with_litert(formats: Formats, runtime: str, fmt: str) -> None:
    model = get_runtime_class(runtime)(device="cpu", num_threads=1).load(getattr(formats, fmt))
    try:
        assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("image", "uint8", (1, 32, 32, 3))]
        assert [(s.name, s.dtype, s.shape) for s in model.outputs] == [("probs", "float32", (1, 10))]
        worst = 0.0
        for seed in range(5):
            x = image(seed)
            (out,) = model.infer([x])
            expected = direct_litert(formats.tflite, x)["probs"]
            assert out.shape == expected.shape and out.dtype == expected.dtype
            worst = max(worst, float(np.abs(out - expected).max()))
            # Not a trivially uniform output: the comparison means something.
            assert expected.max() - expected.min() > 100 * TOLERANCE
        assert worst < TOLERANCE, f"{runtime} on .{fmt}: max abs diff {worst:.3g} vs LiteRT"
    finally:
        model.unload()


def test_runtimes_load_from_bytes_and_from_store_blobs_without_suffix(formats: Formats, tmp_path: Path) -> None:
    """The store keeps blobs without a suffix; the runtimes tell the format from the bytes."""
    x = image(11)
    expected = direct_litert(formats.tflite, x)["probs"]
    for runtime, source in [("openvino", formats.tflite), ("openvino", formats.ovir), ("onnxruntime", formats.onnx)]:
        blob = tmp_path / f"blob-{runtime}-{source.suffix[1:]}"
        blob.write_bytes(source.read_bytes())
        for given in (blob, source.read_bytes()):
            model = get_runtime_class(runtime)().load(given)
            assert np.abs(model.infer([x])[0] - expected).max() < TOLERANCE
            model.unload()


def test_openvino_model_serves_concurrent_callers(formats: Formats) -> None:
    """One compiled model, several threads at once: each gets its own infer request."""
    model = get_runtime_class("openvino")(device="cpu", num_threads=1, slots=2).load(formats.ovir)
    inputs = [image(seed) for seed in range(4)]
    expected = [direct_litert(formats.tflite, x)["probs"] for x in inputs]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                assert np.abs(model.infer([inputs[i]])[0] - expected[i]).max() < TOLERANCE
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_broken_ir_bundles_are_refused_clearly(formats: Formats, tmp_path: Path) -> None:
    xml, weights = irbundle.unpack(formats.ovir.read_bytes())
    rt = get_runtime_class("openvino")()
    with pytest.raises(runtimes.RuntimeFailure, match="not a valid IR bundle"):
        rt.load(irbundle.pack(xml, weights)[:-22])  # truncated: no central directory

    extra = io.BytesIO()
    with zipfile.ZipFile(extra, "w") as archive:
        archive.writestr("model.xml", xml)
        archive.writestr("model.bin", weights)
        archive.writestr("evil.txt", b"x")
    with pytest.raises(runtimes.RuntimeFailure, match=r"exactly model\.xml and model\.bin"):
        rt.load(extra.getvalue())
    with pytest.raises(runtimes.RuntimeFailure, match=r"model\.bin holds \d+ bytes"):
        rt.load(irbundle.pack(xml, weights[: len(weights) // 2]))  # weights cut short
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(xml)
    with pytest.raises(irbundle.BundleError, match="weights file"):
        irbundle.pack_files(lonely)


def test_openvino_never_reads_a_bin_beside_an_ir_xml(formats: Formats) -> None:
    """The .bin beside a path is not part of what was submitted: an IR travels as one bundle."""
    assert formats.xml.with_suffix(".bin").is_file()
    with pytest.raises(ModelFileRefused, match=r"submit the \.xml and \.bin together"):
        get_runtime_class("openvino")().load(formats.xml)


def test_daemon_serves_one_network_in_three_formats(daemon: Daemon, endpoint: str, formats: Formats) -> None:
    """A tenant submits the same network as .tflite, .onnx and IR (the client bundles the .xml and
    its .bin); each is served by the matching runtime, and their outputs agree."""
    with TenantClient(endpoint, tenant="alice") as alice:
        served = {
            "as-tflite": alice.submit_model(formats.tflite, "as-tflite"),
            "as-onnx": alice.submit_model(formats.onnx, "as-onnx"),
            "as-ir": alice.submit_model(formats.xml, "as-ir"),
            "ov-onnx": alice.submit_model(formats.onnx, "ov-onnx", runtime="openvino"),
            "ov-tflite": alice.submit_model(formats.tflite, "ov-tflite", runtime="openvino"),
        }
        assert {name: info.runtime for name, info in served.items()} == {
            "as-tflite": "litert",
            "as-onnx": "onnxruntime",
            "as-ir": "openvino",
            "ov-onnx": "openvino",
            "ov-tflite": "openvino",
        }
        for info in served.values():
            assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [("image", "uint8", (1, 32, 32, 3))]
            assert info.footprint_bytes > 0 and info.resident
        assert {m.name: m.runtime for m in alice.list_models()} == {n: i.runtime for n, i in served.items()}
        for seed in range(3):
            x = image(100 + seed)
            expected = direct_litert(formats.tflite, x)["probs"]
            for name in served:
                out = alice.infer(name, {"image": x})["probs"]
                assert np.abs(out - expected).max() < TOLERANCE, name
            # LiteRT through the daemon is the same engine as the reference: bit for bit.
            assert np.array_equal(alice.infer("as-tflite", x)["probs"], expected)
    with TenantClient(endpoint) as operator:
        status = operator.status()
        assert {"litert", "openvino", "onnxruntime"} <= set(status["runtimes"])
        probed = {e["model"]: e for e in operator.events(event="model.probed")}
        assert probed["as-ir"]["runtime_version"].startswith("openvino ")
        assert probed["as-ir"]["param_bytes"] == formats.xml.with_suffix(".bin").stat().st_size
        assert probed["as-onnx"]["runtime_version"].startswith("onnxruntime ")


def test_mlp_through_onnxruntime_matches_litert(daemon: Daemon, endpoint: str, formats: Formats) -> None:
    with TenantClient(endpoint, tenant="bob") as bob:
        assert bob.submit_model(formats.mlp_onnx, "mlp").runtime == "onnxruntime"
        x = np.random.default_rng(5).standard_normal((1, 32)).astype(np.float32)
        expected = direct_litert(formats.mlp_tflite, x)["probs"]
        assert np.abs(bob.infer("mlp", x)["probs"] - expected).max() < TOLERANCE


def test_runtime_not_installed_or_not_for_this_device(daemon: Daemon, endpoint: str, formats: Formats) -> None:
    runtimes.register("nosuch", "tenantd_no_such_engine:Runtime", package="tenantd-no-such-engine (a test stand-in)")
    with TenantClient(endpoint, tenant="alice") as alice:
        with pytest.raises(E.RuntimeNotAvailable, match="install tenantd-no-such-engine"):
            alice.submit_model(formats.onnx, "x", runtime="nosuch")
        if not runtimes.runtime_installed("tensorrt"):
            with pytest.raises(E.RuntimeNotAvailable, match="install tensorrt and pycuda"):
                alice.submit_model(formats.onnx, "y", runtime="tensorrt")
        # Installed or not, the EdgeTPU runtime never runs on a CPU daemon: the message says so.
        with pytest.raises(E.RuntimeNotAvailable, match="edgetpu"):
            alice.submit_model(formats.tflite, "z", runtime="edgetpu")
        assert alice.list_models() == []
