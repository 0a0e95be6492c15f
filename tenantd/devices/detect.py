"""Device detection: what accelerators are attached to this host, which runtime serves each, and
whether that runtime is installed; and the device names the daemon accepts.

Detection reads the kernel's views and never needs the vendor's tools: USB devices by vendor and
product id from ``/sys/bus/usb/devices/*/idVendor`` and ``idProduct`` (Coral USB EdgeTPU
``1a6e:089a`` before its firmware is loaded and ``18d1:9302`` after; Intel NCS2 ``03e7:2485``, and
``03e7:f63b`` once booted by OpenVINO), the PCIe EdgeTPU's ``/dev/apex_N`` nodes, a Jetson's
``/etc/nv_tegra_release`` and ``/proc/device-tree/model``, NVIDIA GPUs through NVML (``pynvml`` /
``nvidia-ml-py``) where installed, else ``/proc/driver/nvidia/gpus/*/information``, and Intel NPUs
(``/sys/class/accel/accel*`` of vendor ``0x8086``) and GPUs (``/sys/class/drm/renderD*`` of vendor
``0x8086``) for OpenVINO. Every path is
read under a root directory, so tests can hand it a fake tree. The CPU is always present.

Device names: ``cpu``; ``edgetpu:usb:N`` / ``edgetpu:pci:N``; ``ncs2:N``; ``cuda:N`` (a Jetson's
integrated GPU is ``cuda:0``); ``npu``; ``gpu:N`` (an Intel GPU through OpenVINO).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenantd.runtimes import install_hint, runtime_installed

EDGETPU_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (firmware not yet loaded)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
# openvinotoolkit/openvino#13968 (a maintainer): the MYRIAD plugin is not in the PyPI packages
# (its license); it comes with the OpenVINO archives, whose last release with it is 2022.3 LTS.
MYRIAD_NOTE = "needs OpenVINO 2022.3 LTS or older from Intel's archive (MYRIAD plugin; not in PyPI wheels)"
NCS2_USB_IDS = {
    ("03e7", "2485"): "Intel Neural Compute Stick 2",
    ("03e7", "f63b"): "Intel Neural Compute Stick 2 (booted)",
}
KINDS = ("cpu", "edgetpu", "ncs2", "cuda", "npu", "gpu")
# Which runtime serves each kind of device (the first of these installed wins at submission).
RUNTIMES = {
    "cpu": ("litert", "openvino", "onnxruntime"),
    "edgetpu": ("edgetpu",),
    "ncs2": ("openvino",),
    "cuda": ("tensorrt", "onnxruntime"),
    "npu": ("openvino",),
    "gpu": ("openvino",),
}
# `--device auto` prefers an accelerator over the CPU, the more specialised the better.
AUTO_ORDER = ("edgetpu", "ncs2", "cuda", "npu", "gpu", "cpu")
_NAME = re.compile(r"^(cpu|npu|edgetpu(:(usb|pci)(:\d+)?)?|ncs2(:\d+)?|cuda(:\d+)?|gpu(:\d+)?)$")


class DeviceNameError(ValueError):
    """A device name tenantd does not know."""


def check_device_name(device: str) -> str:
    """``device`` if it is a device name tenantd knows, else DeviceNameError saying which are."""
    if not _NAME.fullmatch(device):
        raise DeviceNameError(
            f"device {device!r} is not one tenantd knows: cpu, edgetpu:usb:N, edgetpu:pci:N, ncs2:N, cuda:N, npu, "
            "gpu:N, or auto (run 'tenantd devices' to see what is attached)"
        )
    return device


@dataclass
class Detected:
    """One device found on this host."""

    device: str  # the name to pass to `tenantd serve --device`
    kind: str
    description: str
    profile: str  # the device profile admission uses for it by default
    runtimes: dict[str, bool]  # runtime -> installed here
    memory_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def servable(self) -> bool:
        return any(self.runtimes.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["servable"] = self.servable
        data["install"] = {name: install_hint(name) for name, ok in self.runtimes.items() if not ok}
        return data


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _runtimes(kind: str) -> dict[str, bool]:
    return {name: runtime_installed(name) for name in RUNTIMES[kind]}


def _meminfo_total(root: Path) -> int | None:
    text = _read(root / "proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cpu(root: Path) -> Detected:
    text = _read(root / "proc/cpuinfo") or ""
    names = re.findall(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text, re.MULTILINE)
    logical = len(re.findall(r"^processor\s*:", text, re.MULTILINE)) or os.cpu_count() or 1
    details: dict[str, Any] = {"logical_cpus": logical}
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        details["usable_cpus"] = len(os.sched_getaffinity(0))
    return Detected(
        device="cpu",
        kind="cpu",
        description=names[0].strip() if names else "CPU",
        profile="cpu",
        runtimes=_runtimes("cpu"),
        memory_bytes=_meminfo_total(root),
        details=details,
    )


def _usb_devices(root: Path) -> list[tuple[str, str, str]]:
    """(sysfs name, vendor id, product id) of every USB device, sorted by sysfs name."""
    found = []
    base = root / "sys/bus/usb/devices"
    for entry in sorted(base.glob("*")) if base.is_dir() else []:
        vendor, product = _read(entry / "idVendor"), _read(entry / "idProduct")
        if vendor and product:
            found.append((entry.name, vendor.strip().lower(), product.strip().lower()))
    return found


def _edgetpus(root: Path, usb: list[tuple[str, str, str]]) -> list[Detected]:
    found = []
    sticks = [(name, EDGETPU_USB_IDS[(v, p)], f"{v}:{p}") for name, v, p in usb if (v, p) in EDGETPU_USB_IDS]
    for index, (sysfs, description, ids) in enumerate(sticks):
        found.append(
            Detected(
                f"edgetpu:usb:{index}", "edgetpu", description, "edgetpu", _runtimes("edgetpu"),
                details={"usb_id": ids, "sysfs": sysfs},
            )
        )  # fmt: skip
    apex = sorted((root / "dev").glob("apex_*")) if (root / "dev").is_dir() else []
    for node in apex:
        number = node.name.removeprefix("apex_")
        found.append(
            Detected(
                f"edgetpu:pci:{number}", "edgetpu", "Coral PCIe/M.2 Accelerator", "edgetpu", _runtimes("edgetpu"),
                details={"node": f"/dev/{node.name}"},
            )
        )  # fmt: skip
    return found


def _ncs2(usb: list[tuple[str, str, str]]) -> list[Detected]:
    sticks = [(name, NCS2_USB_IDS[(v, p)], f"{v}:{p}") for name, v, p in usb if (v, p) in NCS2_USB_IDS]
    return [
        Detected(
            f"ncs2:{index}", "ncs2", description, "ncs2", _runtimes("ncs2"), memory_bytes=512 * 2**20,
            details={"usb_id": ids, "sysfs": sysfs, "note": MYRIAD_NOTE},
        )
        for index, (sysfs, description, ids) in enumerate(sticks)
    ]  # fmt: skip


# The SoC in a Jetson's device-tree ``compatible`` list -> its family (NVIDIA's L4T device trees).
_TEGRA_FAMILY = {
    "tegra210": "jetson-nano",
    "tegra186": "jetson-tx2",
    "tegra194": "jetson-xavier",
    "tegra234": "jetson-orin",
}


def jetson_profile(model: str, compatible: list[str]) -> str:
    """The profile of a Jetson from its device tree: the model string where it names the module
    ("NVIDIA Jetson Orin Nano Developer Kit" is an Orin, never the 4 GB Nano), else the SoC in the
    ``compatible`` strings ("nvidia,tegra234" -> Orin). ``cuda`` when neither tells."""
    lowered = model.lower()
    if "orin" in lowered:
        return "jetson-orin"
    if "xavier" in lowered or "jetson-agx" in lowered:
        return "jetson-xavier"
    if "tx2" in lowered:
        return "jetson-tx2"
    if "nano" in lowered:
        return "jetson-nano"
    for entry in compatible:
        family = _TEGRA_FAMILY.get(entry.split(",", 1)[-1].strip().lower())
        if family is not None:
            return family
    return "cuda"


def _jetson(root: Path) -> Detected | None:
    release = _read(root / "etc/nv_tegra_release")
    model = (_read(root / "proc/device-tree/model") or "").replace("\x00", "").strip()
    compatible = [c for c in (_read(root / "proc/device-tree/compatible") or "").split("\x00") if c]
    if release is None and "jetson" not in model.lower() and not any("tegra" in c for c in compatible):
        return None
    profile = jetson_profile(model, compatible)
    details: dict[str, Any] = {"model": model or None, "compatible": compatible or None}
    if release:
        details["l4t_release"] = release.splitlines()[0].lstrip("# ").strip()
    return Detected(
        "cuda:0", "cuda", model or "NVIDIA Jetson", profile, _runtimes("cuda"),
        memory_bytes=_meminfo_total(root), details={**details, "memory": "shared with the host"},
    )  # fmt: skip


def _nvml_gpus() -> list[Detected] | None:
    """GPUs through NVML, or None where pynvml is missing or NVML cannot start (no driver)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                Detected(
                    f"cuda:{index}", "cuda", name.decode() if isinstance(name, bytes) else str(name), "cuda",
                    _runtimes("cuda"), memory_bytes=int(memory.total), details={"source": "nvml"},
                )
            )  # fmt: skip
        return found
    finally:
        pynvml.nvmlShutdown()


def _proc_gpus(root: Path) -> list[Detected]:
    base = root / "proc/driver/nvidia/gpus"
    found = []
    for index, entry in enumerate(sorted(base.glob("*")) if base.is_dir() else []):
        info = _read(entry / "information") or ""
        match = re.search(r"^Model:\s*(.+)$", info, re.MULTILINE)
        found.append(
            Detected(
                f"cuda:{index}", "cuda", match.group(1).strip() if match else "NVIDIA GPU", "cuda", _runtimes("cuda"),
                details={"source": "/proc/driver/nvidia", "bus": entry.name},
            )
        )  # fmt: skip
    return found


def _intel(root: Path) -> list[Detected]:
    """Intel NPUs and GPUs, which OpenVINO serves as ``npu`` and ``gpu:N`` (N in OpenVINO's order,
    which for one GPU is 0)."""
    found = []
    accel = root / "sys/class/accel"
    npus = [e for e in sorted(accel.glob("accel*")) if (_read(e / "device/vendor") or "").strip() == "0x8086"]
    if npus:
        found.append(
            Detected("npu", "npu", "Intel NPU", "cpu", _runtimes("npu"), details={"sysfs": npus[0].name})
        )  # fmt: skip
    drm = root / "sys/class/drm"
    gpus = [e for e in sorted(drm.glob("renderD*")) if (_read(e / "device/vendor") or "").strip() == "0x8086"]
    for index, entry in enumerate(gpus):
        found.append(
            Detected(f"gpu:{index}", "gpu", "Intel GPU", "cpu", _runtimes("gpu"), details={"sysfs": entry.name})
        )  # fmt: skip
    return found


def detect(root: Path = Path("/"), *, nvml: bool = True) -> list[Detected]:
    """Every device found under ``root``: the CPU first, then accelerators. NVML is asked only for
    the real root (it knows nothing of a fake tree)."""
    usb = _usb_devices(root)
    found = [_cpu(root), *_edgetpus(root, usb), *_ncs2(usb)]
    jetson = _jetson(root)
    if jetson is not None:
        found.append(jetson)  # its GPU is integrated: NVML and /proc/driver/nvidia do not list it
    else:
        gpus = _nvml_gpus() if nvml and root == Path("/") else None
        found.extend(gpus if gpus is not None else _proc_gpus(root))
    found.extend(_intel(root))
    return found


def pick_auto(found: list[Detected]) -> tuple[Detected, str]:
    """The device ``--device auto`` serves, and why: the first in AUTO_ORDER that is present with a
    runtime installed; the CPU otherwise."""
    skipped: list[str] = []
    for kind in AUTO_ORDER:
        for device in (d for d in found if d.kind == kind):
            if device.servable:
                why = f"picked {device.device} ({device.description})"
                return device, why + (f"; skipped {', '.join(skipped)}" if skipped else "")
            missing = ", ".join(install_hint(name) for name in device.runtimes)
            skipped.append(f"{device.device} (no runtime installed: {missing})")
    cpu = next(d for d in found if d.kind == "cpu")
    return cpu, f"picked cpu; skipped {', '.join(skipped)}"


def check_attached(device: str, found: list[Detected]) -> None:
    """Raise DeviceNameError unless ``device`` is among ``found`` (a bare ``edgetpu`` matches any
    EdgeTPU). Intel NPUs and GPUs are not detected here: OpenVINO itself says whether they exist."""
    kind = device.split(":", 1)[0]
    if kind in ("npu", "gpu"):
        return
    if any(d.device == device or (device == "edgetpu" and d.kind == "edgetpu") for d in found):
        return
    raise DeviceNameError(
        f"device {device!r} is not attached to this host (found: {', '.join(d.device for d in found)}); "
        "run 'tenantd devices' to see what is"
    )


def default_profile(device: str, root: Path = Path("/")) -> str:
    """The profile admission uses for ``device`` unless told otherwise: its own kind's, a Jetson's
    (nano or tx2, from the device tree) for ``cuda:0`` on a Jetson, the CPU's for Intel NPUs and GPUs
    (they share the host's DRAM)."""
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        jetson = _jetson(root)
        return jetson.profile if jetson is not None else "cuda"
    return {"edgetpu": "edgetpu", "ncs2": "ncs2"}.get(kind, "cpu")


def format_table(found: list[Detected]) -> str:
    """The human-readable table ``tenantd devices`` prints."""
    rows = [("DEVICE", "DESCRIPTION", "MEMORY", "PROFILE", "RUNTIMES (installed: +, missing: -)")]
    for d in found:
        memory = f"{d.memory_bytes / 2**30:.1f} GiB" if d.memory_bytes else "-"
        runtimes = " ".join(f"{'+' if ok else '-'}{name}" for name, ok in d.runtimes.items())
        rows.append((d.device, d.description, memory, d.profile, runtimes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows
    ]
    missing = sorted({name for d in found for name, ok in d.runtimes.items() if not ok})
    lines += [f"  to install {name}: {install_hint(name)}" for name in missing]
    return "\n".join(lines)
