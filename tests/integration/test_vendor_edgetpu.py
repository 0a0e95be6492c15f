"""EdgeTPU conformance against stub vendor modules (tests/stubs/edgetpu: ``tflite_runtime`` and
Coral's ``pycoral``) that reproduce libedgetpu's documented device behaviour, and the compiler's
figures read from its real stdout format. No EdgeTPU is attached here: what the device itself does
is checked by tests/hardware (``-m edgetpu``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from models import tiny
from tenantclient import TenantClient
from tenantclient.errors import BadRequest
from tenantd.daemon import Daemon
from tenantd.errors import RuntimeFailure
from tenantd.runtimes.edgetpu import EdgeTPURuntime, model_facts
from tenantd.runtimes.edgetpu_compiler import CompilerLogError, figures_for, parse_compiler_log
from tenantd.runtimes.tflitefile import ModelInfo, NotTFLite

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "tests" / "stubs"

# edgetpu_compiler 16.0's stdout for one model (the format printed in Coral's compile_for_edgetpu
# Colab, google-coral/tutorials; this sample is a public run's output, figures unchanged), then a
# co-compiled pair written in the same format with each model's own figures.
ONE_MODEL = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 141 ms.

Input model: 1.tflite
Input size: 5.11MiB
Output model: 1_edgetpu.tflite
Output size: 5.09MiB
On-chip memory used for caching model parameters: 18.00KiB
On-chip memory remaining for caching model parameters: 6.86MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 368
Operation log: 1_edgetpu.log
"""
CO_COMPILED = """Edge TPU Compiler version 16.0.384591198

Model compiled successfully in 1512 ms.

Input model: mobilenet_v2_quant.tflite
Input size: 3.38MiB
Output model: mobilenet_v2_quant_edgetpu.tflite
Output size: 3.86MiB
On-chip memory used for caching model parameters: 3.42MiB
On-chip memory remaining for caching model parameters: 4.29MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 72
Operation log: mobilenet_v2_quant_edgetpu.log

Input model: inception_v3_quant.tflite
Input size: 22.86MiB
Output model: inception_v3_quant_edgetpu.tflite
Output size: 23.11MiB
On-chip memory used for caching model parameters: 4.21MiB
On-chip memory remaining for caching model parameters: 0.00B
Off-chip memory used for streaming uncached model parameters: 18.35MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 134
Operation log: inception_v3_quant_edgetpu.log
"""


def test_compiler_figures_are_each_models_own() -> None:
    assert parse_compiler_log(ONE_MODEL)[0]["on_chip_bytes"] == 18 * 1024
    assert figures_for(ONE_MODEL)["edgetpu_streamed_param_bytes"] == 0
    assert figures_for(ONE_MODEL)["edgetpu_param_source"] == "compiler"
    second = figures_for(CO_COMPILED, "inception_v3_quant_edgetpu.tflite")
    assert second["edgetpu_on_chip_param_bytes"] == round(4.21 * 2**20)  # not the first block's 3.42
    assert second["edgetpu_streamed_param_bytes"] == round(18.35 * 2**20)
    assert second["edgetpu_cocompiled_group"] == ["mobilenet_v2_quant.tflite", "inception_v3_quant.tflite"]
    first = figures_for(CO_COMPILED, "mobilenet_v2_quant.tflite")
    assert first["edgetpu_on_chip_param_bytes"] == round(3.42 * 2**20)
    with pytest.raises(CompilerLogError, match=r"2 co-compiled models"):
        figures_for(CO_COMPILED)
    with pytest.raises(CompilerLogError, match=r"names no model 'other\.tflite'"):
        figures_for(CO_COMPILED, "other.tflite")
    with pytest.raises(CompilerLogError, match=r"not its \*_edgetpu\.log"):
        parse_compiler_log("Operator                       Count      Status\nCONV_2D 60 Mapped to Edge TPU\n")


def test_static_validation_reads_the_file_without_any_tflite_package() -> None:
    info = ModelInfo(tiny.edgetpu_stand_in(1000))
    assert info.edgetpu_compiled and info.edgetpu_op_bytes == 1000
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("input", "uint8", (1, 4))]
    plain = ModelInfo(tiny.mlp(4, [8], 2))
    assert not plain.edgetpu_compiled and plain.param_bytes == tiny.param_bytes(tiny.mlp(4, [8], 2))
    facts = model_facts(info)
    assert facts["edgetpu_on_chip_param_bytes"] == 1000 and "estimate" in facts["edgetpu_param_source"]
    with pytest.raises(NotTFLite, match="TFL3"):
        ModelInfo(b"\x08\x07not a tflite file")
    with pytest.raises(NotTFLite):
        ModelInfo(tiny.edgetpu_stand_in(1000)[:60])


def test_the_probe_never_opens_the_device(tmp_path: Path) -> None:
    """On the probe's stand-in device the runtime validates statically and defers the trial load;
    no delegate is created (the stub's loader is not even on the path here)."""
    assert EdgeTPURuntime.probe_device("edgetpu:usb:0") == "cpu"
    runtime = EdgeTPURuntime(device="cpu")
    model = runtime.load(tiny.edgetpu_stand_in(1000))
    assert model.facts["trial_load"] == "deferred"
    assert [s.dtype for s in model.inputs] == ["uint8"]
    with pytest.raises(RuntimeFailure, match="runs only on the EdgeTPU"):
        model.infer([])
    plain = runtime.load(tiny.mlp(4, [8], 2))  # not compiled: it runs on the CPU for real
    assert plain.facts["edgetpu_compiled"] is False


def _env(tmp_path: Path, *stub_dirs: str, **extra: str) -> dict[str, str]:
    path = [str(STUBS / d) for d in stub_dirs] + [str(ROOT), str(ROOT / "clients")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), STUB_EDGETPU_STATE=str(tmp_path))
    env.update(extra)
    return env


def _session(env: dict[str, str], *args: str, wait: bool = False) -> subprocess.Popen[str]:
    device, *paths = args
    cmd = [sys.executable, "-m", "tests.stubs.edgetpu_session", device, "wait" if wait else "go", *paths]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def models(tmp_path: Path) -> list[str]:
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}_edgetpu.tflite"
        path.write_bytes(tiny.edgetpu_stand_in(1000, name=name))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("stubs", [("edgetpu",), ("edgetpu", "no_litert")], ids=["pycoral", "tflite_runtime"])
def test_interpreters_stay_loaded_and_switches_are_first_invokes(
    tmp_path: Path, models: list[str], stubs: tuple[str, ...]
) -> None:
    env = _env(tmp_path, *stubs)
    if stubs == ("edgetpu", "no_litert"):
        # Without pycoral and without ai-edge-litert: tflite_runtime's load_delegate.
        (tmp_path / "nopycoral").mkdir()
        (tmp_path / "nopycoral" / "pycoral").mkdir()
        (tmp_path / "nopycoral" / "pycoral" / "__init__.py").write_text("raise ImportError('no pycoral here')\n")
        env["PYTHONPATH"] = str(tmp_path / "nopycoral") + os.pathsep + env["PYTHONPATH"]
    proc = _session(env, "edgetpu:usb:0", *models)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    steps = _lines(out)
    assert steps[0]["loader"] == ("pycoral" if stubs == ("edgetpu",) else "tflite_runtime")
    # Static reading works without ai-edge-litert's schema module (tflite-runtime 2.14 has none).
    assert steps[0]["param_bytes"] == 1000 and steps[0]["static"] == "deferred"
    runs = steps[1:]
    assert [r["out"] for r in runs] == [[[6, 6, 6, 6]]] * 3  # the stub's fixed function of 0+1+2+3
    # a (first ever: no switch), b (a ran last: a switch), a again (b ran last: a switch).
    assert [r["facts"]["edgetpu_cache_switches"] for r in runs] == [0, 1, 1]  # type: ignore[index]
    assert "edgetpu_last_switch_ms" in runs[1]["facts"]  # type: ignore[operator]


def test_a_second_process_cannot_open_a_held_edgetpu(tmp_path: Path, models: list[str]) -> None:
    env = _env(tmp_path, "edgetpu")
    holder = _session(env, "edgetpu:usb:0", models[0], wait=True)
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline())["step"] == "load"  # it holds the device now
    second = _session(env, "edgetpu:usb:0", models[0])
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 3
    refused = _lines(out)[0]
    assert refused["error"] == "DeviceLost" and "Failed to load delegate" in str(refused["reason"])
    holder.communicate("", timeout=120)
    assert holder.returncode == 0  # the holder was not disturbed


def test_pycoral_must_list_the_device(tmp_path: Path, models: list[str]) -> None:
    """With pycoral, the device is looked up in ``list_edge_tpus()`` first: a stick that is not
    listed is a lost device, named with what pycoral did list."""
    env = _env(tmp_path, "edgetpu", STUB_EDGETPU_DEVICES="pci:0")
    proc = _session(env, "edgetpu:usb:0", models[0])
    out, _ = proc.communicate(timeout=120)
    refused = _lines(out)[0]
    assert proc.returncode == 3 and refused["error"] == "DeviceLost"
    assert "pycoral lists no EdgeTPU usb:0 (list_edge_tpus: pci /dev/apex_0)" in str(refused["reason"])


def test_a_usb_transfer_error_aborts_the_process(tmp_path: Path, models: list[str]) -> None:
    """libedgetpu aborts on a USB transfer error (google-coral/edgetpu#494, #476): no exception
    reaches Python, so the runtime's DeviceLost mapping cannot fire in process. Only a process
    that supervises the one holding the device can turn this into DEVICE_UNAVAILABLE: that is
    the device worker's job (issue 11 part 1), which must see exactly this: SIGABRT, the log line."""
    env = _env(tmp_path, "edgetpu", STUB_EDGETPU_USB_ERROR_AT="2")
    proc = _session(env, "edgetpu:usb:0", *models)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGABRT
    assert "USB transfer error 5" in err
    assert len([s for s in _lines(out) if s["step"] == "infer"]) == 1  # the first ran; the second aborted


def test_the_probe_process_validates_an_edgetpu_model_without_a_device(tmp_path: Path) -> None:
    """``python -m tenantd.probe edgetpu`` (the daemon's probe) on an EdgeTPU-compiled file: specs
    from the file, no inference, the trial load deferred. libedgetpu is not installed here, so the
    registry's check is met by a stub runtime entry naming the same class."""
    model = tmp_path / "m_edgetpu.tflite"
    model.write_bytes(tiny.edgetpu_stand_in(1000))
    env = _env(tmp_path, TENANTD_RUNTIMES="edgetpu_here=tenantd.runtimes.edgetpu:EdgeTPURuntime")
    proc = subprocess.run(
        [sys.executable, "-m", "tenantd.probe", "edgetpu_here", str(model), "--device", "edgetpu:usb:0"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TENANTD-PROBE-RESULT "))
    result = json.loads(line.split(" ", 1)[1])
    assert result["ok"], result
    assert result["details"]["probe_device"] == "cpu" and result["details"]["trial_load"] == "deferred"
    assert result["first_infer_ms"] == 0.0 and result["inputs"][0]["dtype"] == "uint8"


def test_the_compiler_log_travels_with_the_submission_and_is_checked(daemon: Daemon, endpoint: str) -> None:
    """``submit_model(..., compiler_log=...)`` reaches the daemon, which reads it before anything
    else: a log that is not compiler stdout, one for another file, or one given for a model that
    is not an EdgeTPU model is refused with the reason. (Accepting one needs an EdgeTPU daemon:
    tests/hardware; the figures' use is test_compiler_figures_are_each_models_own.)"""
    data = tiny.mlp(4, [8], 2)
    with TenantClient(endpoint, tenant="alice") as alice:
        with pytest.raises(BadRequest, match=r"not its \*_edgetpu\.log"):
            alice.submit_model(data, "m", compiler_log="Operator  Count  Status\n")
        with pytest.raises(BadRequest, match=r"2 co-compiled models.*say which one"):
            alice.submit_model(data, "m", compiler_log=CO_COMPILED)
        with pytest.raises(BadRequest, match=r"for EdgeTPU models; this one is for runtime 'litert'"):
            alice.submit_model(data, "m", compiler_log=ONE_MODEL)
        assert alice.list_models() == []
