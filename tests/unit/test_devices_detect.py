"""Unit: device detection against fake /sys, /proc, /dev and /etc trees, and one real run on
this machine, which must report the CPU and nothing that is not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tenantd.devices import detect as D
from tenantd.devices.profiles import MemoryModel, get_profile


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def usb(root: Path, name: str, vendor: str, product: str) -> None:
    write(root, f"sys/bus/usb/devices/{name}/idVendor", vendor + "\n")
    write(root, f"sys/bus/usb/devices/{name}/idProduct", product + "\n")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\n",
    )
    write(tmp_path, "proc/meminfo", "MemTotal:        4045332 kB\nMemFree:  1 kB\n")
    usb(tmp_path, "usb1", "1d6b", "0002")  # a root hub: not an accelerator
    return tmp_path


def test_cpu_only(base: Path) -> None:
    (cpu,) = D.detect(base)
    assert (cpu.device, cpu.kind, cpu.description, cpu.profile) == ("cpu", "cpu", "Test CPU 9000", "cpu")
    assert cpu.memory_bytes == 4045332 * 1024 and cpu.details["logical_cpus"] == 2
    assert set(cpu.runtimes) == {"litert", "openvino", "onnxruntime"}


def test_coral_ncs2_and_pcie_edgetpu(base: Path) -> None:
    usb(base, "1-1", "18d1", "9302")  # Coral USB, firmware loaded
    usb(base, "1-2", "1a6e", "089a")  # Coral USB, before its firmware is loaded
    usb(base, "2-1", "03e7", "2485")  # NCS2
    write(base, "dev/apex_0", "")
    found = {d.device: d for d in D.detect(base)}
    assert list(found) == ["cpu", "edgetpu:usb:0", "edgetpu:usb:1", "edgetpu:pci:0", "ncs2:0"]
    assert found["edgetpu:usb:0"].details["usb_id"] == "18d1:9302"
    assert "firmware not yet loaded" in found["edgetpu:usb:1"].description
    assert found["edgetpu:pci:0"].details["node"] == "/dev/apex_0"
    assert found["ncs2:0"].profile == "ncs2" and found["ncs2:0"].memory_bytes == 512 * 2**20
    assert set(found["ncs2:0"].runtimes) == {"openvino"} and set(found["edgetpu:usb:0"].runtimes) == {"edgetpu"}


def test_jetson_nano_is_cuda0_with_shared_memory_and_its_profile(base: Path) -> None:
    write(base, "etc/nv_tegra_release", "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref\n")
    write(base, "proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\x00")
    found = D.detect(base)
    jetson = found[-1]
    assert (jetson.device, jetson.kind, jetson.profile) == ("cuda:0", "cuda", "jetson-nano")
    assert jetson.memory_bytes == 4045332 * 1024 and jetson.details["memory"] == "shared with the host"
    assert jetson.details["l4t_release"].startswith("R32 (release), REVISION: 7.1")
    assert set(jetson.runtimes) == {"tensorrt", "onnxruntime"}
    assert D.default_profile("cuda:0", base) == "jetson-nano"
    write(base, "proc/device-tree/model", "NVIDIA Jetson TX2\x00")
    assert D.default_profile("cuda:0", base) == "jetson-tx2"


@pytest.mark.parametrize(
    ("model", "compatible", "profile"),
    [
        # Device-tree strings as L4T ships them (model, then the NUL-separated compatible list).
        (
            "NVIDIA Jetson Orin Nano Developer Kit",
            "nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005\x00nvidia,tegra234",
            "jetson-orin",
        ),
        (
            "NVIDIA Jetson AGX Orin Developer Kit",
            "nvidia,p3737-0000+p3701-0000\x00nvidia,p3701-0000\x00nvidia,tegra234",
            "jetson-orin",
        ),
        ("NVIDIA Jetson Xavier NX Developer Kit", "nvidia,p3509-0000+p3668-0000\x00nvidia,tegra194", "jetson-xavier"),
        ("Jetson-AGX", "nvidia,p2972-0000\x00nvidia,galen\x00nvidia,tegra194", "jetson-xavier"),
        ("", "nvidia,p3509-0000+p3668-0001\x00nvidia,tegra194", "jetson-xavier"),  # model missing: the SoC
        (
            "NVIDIA Jetson Nano Developer Kit",
            "nvidia,p3450-0000\x00nvidia,jetson-nano\x00nvidia,tegra210",
            "jetson-nano",
        ),
    ],
)
def test_xavier_and_orin_from_the_device_tree_with_shared_memory(
    base: Path, model: str, compatible: str, profile: str
) -> None:
    write(base, "etc/nv_tegra_release", "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    write(base, "proc/device-tree/model", model + "\x00")
    write(base, "proc/device-tree/compatible", compatible + "\x00")
    jetson = D.detect(base)[-1]
    assert (jetson.device, jetson.profile) == ("cuda:0", profile)
    assert D.default_profile("cuda:0", base) == profile
    shared = get_profile(profile)
    assert shared.memory_model is MemoryModel.SHARED  # host and GPU share the DRAM: read from the host
    assert jetson.memory_bytes == 4045332 * 1024


def test_nvidia_gpus_from_proc_without_nvml(base: Path) -> None:
    write(base, "proc/driver/nvidia/gpus/0000:65:00.0/information", "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ: 1\n")
    found = D.detect(base)
    assert [(d.device, d.description, d.profile) for d in found[1:]] == [("cuda:0", "NVIDIA H100 80GB HBM3", "cuda")]
    assert D.default_profile("cuda:0", base) == "cuda"


def test_auto_prefers_an_accelerator_whose_runtime_is_installed(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usb(base, "1-1", "18d1", "9302")
    usb(base, "2-1", "03e7", "2485")
    installed = {"litert"}
    monkeypatch.setattr(D, "runtime_installed", lambda name: name in installed)
    chosen, why = D.pick_auto(D.detect(base))
    assert chosen.device == "cpu"
    assert "skipped edgetpu:usb:0 (no runtime installed: libedgetpu" in why and "ncs2:0" in why
    installed.add("openvino")
    chosen, why = D.pick_auto(D.detect(base))
    assert chosen.device == "ncs2:0" and why.startswith("picked ncs2:0") and "skipped edgetpu:usb:0" in why
    installed.add("edgetpu")
    assert D.pick_auto(D.detect(base))[0].device == "edgetpu:usb:0"


def test_device_names() -> None:
    for name in ("cpu", "edgetpu", "edgetpu:usb:0", "edgetpu:pci:2", "ncs2:0", "cuda:1", "npu", "gpu:0"):
        assert D.check_device_name(name) == name
    for bad in ("tpu", "edgetpu:serial:0", "cuda:x", "", "auto"):
        with pytest.raises(D.DeviceNameError, match="not one tenantd knows"):
            D.check_device_name(bad)
    assert D.default_profile("edgetpu:usb:0") == "edgetpu" and D.default_profile("ncs2:0") == "ncs2"


def test_table_lists_devices_and_what_to_install(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usb(base, "2-1", "03e7", "2485")
    monkeypatch.setattr(D, "runtime_installed", lambda name: name == "litert")
    table = D.format_table(D.detect(base))
    assert "ncs2:0" in table and "-openvino" in table and "+litert" in table
    assert "to install openvino: openvino" in table


def test_this_machine_reports_its_cpu_and_nothing_that_is_not_here() -> None:
    """The real `tenantd devices --json` on this host. Every accelerator it lists must have the
    evidence detection claims to have read; the CPU's figures must be this host's."""
    out = subprocess.run(
        [sys.executable, "-m", "tenantd", "devices", "--json"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    report = json.loads(out)
    devices = report["devices"]
    cpu = devices[0]
    assert cpu["device"] == "cpu" and cpu["servable"] and cpu["runtimes"]["litert"] is True
    assert cpu["memory_bytes"] == psutil.virtual_memory().total
    assert cpu["details"]["logical_cpus"] == os.cpu_count()
    usb_ids = set()
    for entry in Path("/sys/bus/usb/devices").glob("*"):
        try:
            usb_ids.add(f"{(entry / 'idVendor').read_text().strip()}:{(entry / 'idProduct').read_text().strip()}")
        except OSError:
            continue
    for device in devices[1:]:
        if device["kind"] in ("edgetpu", "ncs2") and "usb_id" in device["details"]:
            assert device["details"]["usb_id"] in usb_ids
        elif device["kind"] == "edgetpu":
            assert Path(device["details"]["node"]).exists()
        elif device["kind"] == "cuda":
            assert (
                Path("/etc/nv_tegra_release").exists()
                or Path("/proc/driver/nvidia").exists()
                or device["details"].get("source") == "nvml"
            )
        elif device["kind"] in ("npu", "gpu"):
            folder = "accel" if device["kind"] == "npu" else "drm"
            vendor = Path(f"/sys/class/{folder}/{device['details']['sysfs']}/device/vendor")
            assert vendor.read_text().strip() == "0x8086"
        else:
            raise AssertionError(f"unexpected device {device}")
    if not usb_ids & {"18d1:9302", "1a6e:089a", "03e7:2485", "03e7:f63b"} and not Path("/proc/driver/nvidia").exists():
        intel = [
            p for p in [*Path("/sys/class/accel").glob("accel*"), *Path("/sys/class/drm").glob("renderD*")]
            if (p / "device/vendor").is_file() and (p / "device/vendor").read_text().strip() == "0x8086"
        ]  # fmt: skip
        if not list(Path("/dev").glob("apex_*")) and not Path("/etc/nv_tegra_release").exists() and not intel:
            assert [d["device"] for d in devices] == ["cpu"]  # this CI host: a CPU and nothing else
            assert report["auto"] == "cpu"


def test_serve_device_auto_and_bad_devices(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "tenantd", "serve", "--device", "tpu9", "--endpoint", f"ipc://{tmp_path}/s",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "device 'tpu9' is not one tenantd knows" in bad.stderr
    if not any(d.kind == "edgetpu" for d in D.detect()):
        absent = subprocess.run(
            [sys.executable, "-m", "tenantd", "serve", "--device", "edgetpu:usb:0", "--endpoint",
             f"ipc://{tmp_path}/s", "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert absent.returncode == 2 and "'edgetpu:usb:0' is not attached to this host" in absent.stderr


def test_a_device_must_be_attached_to_be_served(base: Path) -> None:
    usb(base, "2-1", "03e7", "2485")
    found = D.detect(base)
    D.check_attached("cpu", found)
    D.check_attached("ncs2:0", found)
    for absent in ("ncs2:1", "edgetpu", "edgetpu:usb:0", "cuda:0"):
        with pytest.raises(D.DeviceNameError, match=f"device '{absent}' is not attached to this host"):
            D.check_attached(absent, found)


def test_intel_npu_and_gpu_for_openvino(base: Path) -> None:
    write(base, "sys/class/accel/accel0/device/vendor", "0x8086\n")
    write(base, "sys/class/drm/renderD128/device/vendor", "0x1002\n")  # an AMD GPU: not OpenVINO's
    write(base, "sys/class/drm/renderD129/device/vendor", "0x8086\n")
    found = {d.device: d for d in D.detect(base)}
    assert list(found) == ["cpu", "npu", "gpu:0"]
    assert set(found["npu"].runtimes) == {"openvino"} and found["gpu:0"].details["sysfs"] == "renderD129"
