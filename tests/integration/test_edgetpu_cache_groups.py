"""A co-compiled group shares the EdgeTPU's parameter cache: the daemon counts no switch between
its models, and a switch into or out of the group as one. Coral's compiler documentation
("Co-compiling multiple models", coral.ai/docs/edgetpu/compiler): models compiled together share
the ~8 MB cache, so running one after another needs no parameter reload; running a model compiled
apart flushes the cache, and the next model's parameters are streamed in again.

A real daemon on ``edgetpu:usb:0`` with its device worker: the device is a fake USB tree for the
detection (Coral's USB id after its firmware is loaded, 18d1:9302) and the worker runs the stub
vendor modules of tests/stubs/edgetpu (libedgetpu's one-process-per-device rule and its outputs).
The compiler output is given with each submission, as ``tenantctl submit --compiler-log`` sends it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantclient import TenantClient
from tenantd.devices import detect as detect_module
from tests.integration.test_vendor_edgetpu import CO_COMPILED
from tests.support.daemon import daemon_in_thread

ROOT = Path(__file__).resolve().parents[2]
# The same compiler output, for the pair a_edgetpu.tflite / b_edgetpu.tflite.
PAIR = CO_COMPILED.replace("mobilenet_v2_quant", "a").replace("inception_v3_quant", "b")


@pytest.fixture
def edgetpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees a Coral USB Accelerator, and the worker it starts gets the stub modules."""
    sysroot = tmp_path / "root"
    (sysroot / "proc").mkdir(parents=True)
    (sysroot / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU\n")
    (sysroot / "proc/meminfo").write_text("MemTotal:        4045332 kB\n")
    stick = sysroot / "sys/bus/usb/devices/2-1"
    stick.mkdir(parents=True)
    (stick / "idVendor").write_text("18d1\n")
    (stick / "idProduct").write_text("9302\n")
    real_detect = detect_module.detect
    # The daemon and its probes find "libedgetpu" where ctypes.util.find_library looks: an empty
    # shared object with libedgetpu's soname on LD_LIBRARY_PATH (never loaded: the probe reads an
    # EdgeTPU model statically and the worker's stub tflite_runtime stands in for what would).
    libdir = tmp_path / "lib"
    libdir.mkdir()
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to make a stand-in libedgetpu.so")
    (libdir / "empty.c").write_text("int tenantd_stand_in;\n")
    soname, out = "-Wl,-soname,libedgetpu.so.1", str(libdir / "libedgetpu.so")
    subprocess.run(["gcc", "-shared", soname, "-o", out, str(libdir / "empty.c")], check=True)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libdir))
    monkeypatch.setattr("tenantd.daemon.detect", lambda: real_detect(sysroot, nvml=False))
    # The worker (a child process) gets the stub vendor modules; this process keeps the real ones.
    paths = [str(ROOT / "tests/stubs/edgetpu"), str(ROOT), str(ROOT / "clients"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("STUB_EDGETPU_STATE", str(tmp_path))


def run_and_count(endpoint: str, order: str) -> list[bool]:
    """Run the models in ``order``; whether the daemon counted each run as a switch."""
    x = np.arange(4, dtype=np.uint8).reshape(1, 4)
    switches = []
    with TenantClient(endpoint, tenant="alice") as alice:
        for name in order:
            reply = alice.infer_detailed(name, x)
            (out,) = reply.outputs.values()
            assert out.tolist() == [[6, 6, 6, 6]]  # the stub's function of 0+1+2+3
            switches.append(reply.timings["switch"])
    return switches


@pytest.mark.usefixtures("edgetpu_host")
def test_no_switch_inside_a_co_compiled_group(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/t.sock"
    files = {}
    for name in "abc":  # the compiler names its outputs NAME_edgetpu.tflite; the log is matched by it
        files[name] = tmp_path / f"{name}_edgetpu.tflite"
        files[name].write_bytes(tiny.edgetpu_stand_in(1000, name=name))
    with daemon_in_thread(tmp_path / "state", endpoint, device="edgetpu:usb:0") as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            for name in "ab":
                alice.submit_model(files[name], name, compiler_log=PAIR)
            alice.submit_model(files["c"], "c")
            assert alice.status()["residency"]["isolation"] == "process"  # the stub runtime ran in the worker
        # a b a b: one group, one cache: no switch; c: out of the group (a switch); a: back in (a
        # switch); b: within the group again (none). The first run of all has nothing to switch from.
        assert run_and_count(endpoint, "ababcab") == [False, False, False, False, True, True, False]
        assert daemon.executor.switches == 2
    # The group is stored with the models: a restarted daemon knows it too.
    with daemon_in_thread(tmp_path / "state", endpoint, device="edgetpu:usb:0"):
        assert run_and_count(endpoint, "abcb") == [False, False, True, True]
