"""Device profiles: what the daemon knows about each kind of device it may own or emulate.

A profile carries the device's memory model, its capacity, the power range and the price. The
memory model decides how admission computes a budget (see ``tenantd/admission.py``):

- ``shared``: host and accelerator share DRAM (Jetson, a Raspberry Pi, a plain CPU); the budget is
  what the DRAM has left after the host's live use and a reserve, so a host process growing
  shrinks it.
- ``dedicated``: the device has its own memory (NCS2, a discrete GPU); capacity minus a reserve.
- ``cache``: a small on-chip parameter cache in front of host memory (EdgeTPU); admission is
  bounded by host memory, and residency in the cache is managed on demand.

Figures and their sources (``SOURCES`` keys): the IISWC 2020 slides (Liang, Shenoy, Irwin, "AI on
the Edge", ``shared/paper``) for the Jetsons, NCS2 and EdgeTPU and for the measured cloud power;
vendor pages for the rest. Prices are list prices in USD at the time of the paper; cloud instances
are priced per hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MiB = 1024**2
GiB = 1024**3


class MemoryModel(StrEnum):
    SHARED = "shared"
    DEDICATED = "dedicated"
    CACHE = "cache"


SOURCES: dict[str, str] = {
    "slides": "Liang, Shenoy, Irwin, 'AI on the Edge', IISWC 2020 slides (shared/paper/ai-on-the-edge-slides.txt)",
    "rpi": "Raspberry Pi 3 Model B+ product brief (1 GB LPDDR2, USD 35); power 1.9-5.1 W idle to load "
    "(Raspberry Pi Foundation power figures)",
    "aws": "AWS EC2 p3.2xlarge: 8 vCPU, 61 GiB RAM, one Tesla V100 16 GB; on-demand USD 3.06/hour (us-east-1)",
    "v100": "NVIDIA Tesla V100 datasheet: 16 GB HBM2, 250-300 W board power",
    "coral": "Coral docs, 'Run multiple models with multiple Edge TPUs' and edgetpu#518: ~8 MB on-chip "
    "parameter cache shared by co-compiled models",
    "jetson": "NVIDIA Jetson module data sheets: Xavier NX 10-20 W, AGX Xavier 10-30 W, Orin Nano 7-15 W, "
    "AGX Orin 15-60 W; memory is the module's LPDDR4x/LPDDR5 shared by CPU and GPU; price: the lowest "
    "developer kit of the family (Xavier NX USD 399, Orin Nano USD 499)",
    "openvino": "OpenVINO docs: MYRIAD plugin last shipped in 2022.3 LTS; one process per NCS2 stick",
}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    memory_model: MemoryModel
    capacity_bytes: int | None  # device (or shared DRAM) memory; None: read from the host
    power_w: tuple[float, float]  # idle-to-load range, or (measured, measured)
    price_usd: float
    price_unit: str  # "device" or "hour"
    sources: tuple[str, ...]
    cache_bytes: int | None = None  # on-chip parameter cache, for the cache memory model
    default_reserve_bytes: int = 0  # kept free for the host / runtime by default
    # Instances of one model the device can run at once; None: one per execution slot. An NCS2
    # belongs to one process and runs one graph at a time; an EdgeTPU runs one model at a time.
    max_instances: int | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "memory_model": self.memory_model.value,
            "capacity_bytes": self.capacity_bytes,
            "cache_bytes": self.cache_bytes,
            "max_instances": self.max_instances,
            "power_w": list(self.power_w),
            "price_usd": self.price_usd,
            "price_unit": self.price_unit,
            "sources": [SOURCES[s] for s in self.sources],
        }


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "cpu",
            "this host's CPU; models share the host's DRAM",
            MemoryModel.SHARED,
            None,
            (0.0, 0.0),
            0.0,
            "device",
            (),
            default_reserve_bytes=512 * MiB,
        ),
        DeviceProfile(
            "rpi3",
            "Raspberry Pi 3 B+ (Cortex-A53, 1 GB shared LPDDR2)",
            MemoryModel.SHARED,
            1 * GiB,
            (1.9, 5.1),
            35.0,
            "device",
            ("rpi",),
            default_reserve_bytes=256 * MiB,
        ),
        DeviceProfile(
            "jetson-nano",
            "NVIDIA Jetson Nano (4 GB DRAM shared by host and GPU)",
            MemoryModel.SHARED,
            4 * GiB,
            (5.0, 10.0),
            99.0,
            "device",
            ("slides",),
            default_reserve_bytes=512 * MiB,
        ),
        DeviceProfile(
            "jetson-tx2",
            "NVIDIA Jetson TX2 (8 GB DRAM shared by host and GPU)",
            MemoryModel.SHARED,
            8 * GiB,
            (7.5, 15.0),
            399.0,
            "device",
            ("slides",),
            default_reserve_bytes=512 * MiB,
        ),
        DeviceProfile(
            "jetson-xavier",
            "NVIDIA Jetson Xavier (NX 8/16 GB, AGX 16/32/64 GB DRAM shared by host and GPU, read from it)",
            MemoryModel.SHARED,
            None,
            (10.0, 30.0),
            399.0,
            "device",
            ("jetson",),
            default_reserve_bytes=1 * GiB,
        ),
        DeviceProfile(
            "jetson-orin",
            "NVIDIA Jetson Orin (Nano 4/8 GB, NX 8/16 GB, AGX 32/64 GB DRAM shared by host and GPU, read from it)",
            MemoryModel.SHARED,
            None,
            (7.0, 60.0),
            499.0,
            "device",
            ("jetson",),
            default_reserve_bytes=1 * GiB,
        ),
        DeviceProfile(
            "ncs2",
            "Intel Neural Compute Stick 2 (Myriad X VPU, 512 MB on the stick)",
            MemoryModel.DEDICATED,
            512 * MiB,
            (1.0, 2.0),
            99.0,
            "device",
            ("slides", "openvino"),
            default_reserve_bytes=32 * MiB,
            max_instances=1,
        ),
        DeviceProfile(
            "edgetpu",
            "Google Coral EdgeTPU (8 MB on-chip parameter cache, 4 TOPS int8)",
            MemoryModel.CACHE,
            None,
            (0.5, 2.0),
            75.0,
            "device",
            ("slides", "coral"),
            cache_bytes=8 * MiB,
            default_reserve_bytes=512 * MiB,
            max_instances=1,
        ),
        DeviceProfile(
            "cuda",
            "a discrete NVIDIA GPU; set capacity_bytes in the policy (no NVML detection yet)",
            MemoryModel.DEDICATED,
            None,
            (0.0, 0.0),
            0.0,
            "device",
            (),
            default_reserve_bytes=512 * MiB,
        ),
        DeviceProfile(
            "cloud-cpu",
            "AWS p3.2xlarge host CPU (8 vCPU, 61 GiB)",
            MemoryModel.SHARED,
            61 * GiB,
            (131.26, 131.26),
            3.06,
            "hour",
            ("slides", "aws"),
            default_reserve_bytes=2 * GiB,
        ),
        DeviceProfile(
            "cloud-gpu",
            "NVIDIA Tesla V100 16 GB (in a p3.2xlarge)",
            MemoryModel.DEDICATED,
            16 * GiB,
            (111.66, 111.66),
            3.06,
            "hour",
            ("slides", "aws", "v100"),
            default_reserve_bytes=1 * GiB,
        ),
    )
}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None
