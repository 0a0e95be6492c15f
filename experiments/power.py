"""Energy over a measurement window: real power meters where the hardware has them, and a labelled
estimate where it has none.

Meters, each written against its documented interface and found by :func:`detect_meters`:

- :class:`RaplMeter`: Intel RAPL through the powercap sysfs, one counter per package zone
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at
  ``max_energy_range_uj``); the kernel's powercap documentation.
- :class:`NvmlMeter`: NVIDIA NVML (``pynvml``, the nvidia-ml-py package):
  ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded; Volta and newer),
  or, where that is not supported, ``nvmlDeviceGetPowerUsage`` (milliwatts) sampled and integrated.
- :class:`Ina3221Meter`: the Jetson's INA3221 rail monitors, either the L4T iio driver
  (``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power<N>_input``, milliwatts) or the hwmon
  driver of newer L4T (``/sys/class/hwmon/hwmon*/`` with ``name`` = ``ina3221``,
  ``in<N>_input`` millivolts and ``curr<N>_input`` milliamps); sampled and integrated.

Where none exists (this development machine: no RAPL, no hwmon), :class:`CpuTimeEstimate` gives
``P = P_idle + (P_max - P_idle) x utilisation`` over the window, with the utilisation from the
measured process's CPU time and the power range of a device profile. Every reading carries
``estimate`` so that reports label it; an estimate is never shown as a measurement.

Every path is a parameter (``root``), so the tests run the readers on fake sysfs trees.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    seconds: float
    source: str  # what measured or estimated it, for the report
    estimate: bool

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


class PowerMeter(ABC):
    """Energy between :meth:`start` and :meth:`stop`. One window at a time."""

    name: str = "meter"
    estimate = False

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> EnergyReading: ...


# ---------------------------------------------------------------------------------------- RAPL


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class RaplMeter(PowerMeter):
    """Intel RAPL package zones (``intel-rapl:N``; sub-zones such as ``intel-rapl:N:M`` are parts
    of their package and would be counted twice)."""

    name = "rapl"

    def __init__(self, zones: Sequence[Path]) -> None:
        if not zones:
            raise ValueError("RaplMeter needs at least one zone")
        self.zones = list(zones)
        self._start: list[int] = []
        self._t0 = 0.0

    @staticmethod
    def find(root: Path = Path("/")) -> list[Path]:
        base = root / "sys" / "class" / "powercap"
        if not base.is_dir():
            return []
        zones = []
        for zone in sorted(base.glob("intel-rapl:*")):
            if zone.name.count(":") != 1 or not (zone / "energy_uj").exists():
                continue
            try:
                _read_int(zone / "energy_uj")  # readable? (root-only since CVE-2020-8694 on many kernels)
            except (OSError, ValueError):
                continue
            zones.append(zone)
        return zones

    def start(self) -> None:
        self._start = [_read_int(z / "energy_uj") for z in self.zones]
        self._t0 = time.monotonic()

    def stop(self) -> EnergyReading:
        seconds = time.monotonic() - self._t0
        total_uj = 0
        for zone, first in zip(self.zones, self._start, strict=True):
            last = _read_int(zone / "energy_uj")
            total_uj += rapl_delta_uj(first, last, _read_int(zone / "max_energy_range_uj"))
        names = ", ".join(z.name for z in self.zones)
        return EnergyReading(total_uj / 1e6, seconds, f"Intel RAPL ({names})", estimate=False)


def rapl_delta_uj(first: int, last: int, max_range_uj: int) -> int:
    """Energy between two RAPL readings; the counter wraps to 0 after ``max_energy_range_uj``
    (windows are far shorter than a wrap period, so at most one wrap is assumed)."""
    return last - first if last >= first else last + (max_range_uj - first) + 1


# ---------------------------------------------------------------------------------------- sampling


class SamplingMeter(PowerMeter):
    """Integrates instantaneous power (W) read every ``interval_s`` on a background thread
    (trapezoid rule), for meters that report power rather than energy."""

    def __init__(self, read_watts: Callable[[], float], source: str, interval_s: float = 0.05) -> None:
        self._read = read_watts
        self.source = source
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._joules = 0.0
        self._t0 = 0.0

    def _run(self) -> None:
        last_t, last_w = time.monotonic(), self._read()
        while not self._stop.wait(self.interval_s):
            t, w = time.monotonic(), self._read()
            self._joules += (w + last_w) / 2 * (t - last_t)
            last_t, last_w = t, w
        t, w = time.monotonic(), self._read()
        self._joules += (w + last_w) / 2 * (t - last_t)

    def start(self) -> None:
        self._joules = 0.0
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"power-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> EnergyReading:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return EnergyReading(self._joules, time.monotonic() - self._t0, self.source, estimate=False)


class Ina3221Meter(SamplingMeter):
    """A Jetson's INA3221 rails, summed (the module's input rail(s) as the board wires them)."""

    name = "ina3221"

    def __init__(self, channels: Sequence[tuple[Path, Path | None]], interval_s: float = 0.05) -> None:
        # (power file in mW) or (voltage mV, current mA) per channel
        if not channels:
            raise ValueError("Ina3221Meter needs at least one channel")
        self.channels = list(channels)
        super().__init__(self.read_watts, f"INA3221 ({len(self.channels)} rails)", interval_s)

    def read_watts(self) -> float:
        total = 0.0
        for first, second in self.channels:
            if second is None:
                total += _read_int(first) / 1e3  # in_power<N>_input: mW
            else:
                total += _read_int(first) / 1e3 * _read_int(second) / 1e3  # mV x mA
        return total

    @staticmethod
    def find(root: Path = Path("/")) -> list[tuple[Path, Path | None]]:
        channels: list[tuple[Path, Path | None]] = []
        iio = root / "sys" / "bus" / "i2c" / "drivers" / "ina3221x"
        if iio.is_dir():
            channels += [(p, None) for p in sorted(iio.glob("*/iio:device*/in_power*_input"))]
        hwmon = root / "sys" / "class" / "hwmon"
        if not channels and hwmon.is_dir():
            for dev in sorted(hwmon.glob("hwmon*")):
                try:
                    if (dev / "name").read_text().strip() != "ina3221":
                        continue
                except OSError:
                    continue
                for volts in sorted(dev.glob("in*_input")):
                    n = volts.name[2:].split("_")[0]
                    amps = dev / f"curr{n}_input"
                    if amps.exists():
                        channels.append((volts, amps))
        return channels


class NvmlMeter(PowerMeter):
    """NVIDIA GPUs through NVML: the energy counter where supported, else sampled power."""

    name = "nvml"

    def __init__(self, nvml: Any, handles: Sequence[Any]) -> None:
        self.nvml = nvml
        self.handles = list(handles)
        self._energy = True
        try:
            for h in self.handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except nvml.NVMLError:
            self._energy = False
        self._sampler = SamplingMeter(self._watts, f"NVML power usage ({len(self.handles)} GPU)")
        self._start: list[int] = []
        self._t0 = 0.0

    def _watts(self) -> float:
        return float(sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles)) / 1e3  # mW

    @staticmethod
    def open() -> NvmlMeter | None:
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError:
            return None
        return NvmlMeter(pynvml, handles) if handles else None

    def start(self) -> None:
        self._t0 = time.monotonic()
        if self._energy:
            self._start = [int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]
        else:
            self._sampler.start()

    def stop(self) -> EnergyReading:
        if not self._energy:
            return self._sampler.stop()
        seconds = time.monotonic() - self._t0
        mj = sum(
            int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) - s
            for h, s in zip(self.handles, self._start, strict=True)
        )
        return EnergyReading(mj / 1e3, seconds, f"NVML total energy ({len(self.handles)} GPU)", estimate=False)


# ---------------------------------------------------------------------------------------- estimate


def estimate_watts(power_range_w: tuple[float, float], utilisation: float) -> float:
    """Linear power model between idle and full load; utilisation is clamped to [0, 1]."""
    idle, full = power_range_w
    if idle < 0 or full < idle:
        raise ValueError(f"power range must be 0 <= idle <= full, got {power_range_w}")
    return idle + (full - idle) * min(1.0, max(0.0, utilisation))


class CpuTimeEstimate(PowerMeter):
    """No meter: ``P_idle + (P_max - P_idle) x utilisation`` over the window, where the utilisation
    is the CPU time that ``cpu_seconds`` reports (e.g. the daemon's) over ``wall x cores``."""

    name = "estimate"
    estimate = True

    def __init__(
        self, power_range_w: tuple[float, float], cores: int, cpu_seconds: Callable[[], float], label: str
    ) -> None:
        if cores < 1:
            raise ValueError("cores must be >= 1")
        estimate_watts(power_range_w, 0.0)  # validates the range
        self.power_range_w = power_range_w
        self.cores = cores
        self._cpu = cpu_seconds
        self.label = label
        self._cpu0 = 0.0
        self._t0 = 0.0
        self.utilisation = 0.0

    def start(self) -> None:
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()

    def stop(self) -> EnergyReading:
        seconds = time.monotonic() - self._t0
        return self.reading(self._cpu() - self._cpu0, seconds)

    def reading(self, cpu_s: float, seconds: float) -> EnergyReading:
        self.utilisation = cpu_s / (seconds * self.cores) if seconds > 0 else 0.0
        watts = estimate_watts(self.power_range_w, self.utilisation)
        lo, hi = self.power_range_w
        source = (
            f"ESTIMATE: {self.label} power range {lo:g}-{hi:g} W x CPU utilisation "
            f"{100 * self.utilisation:.0f}% of {self.cores} cores"
        )
        return EnergyReading(watts * seconds, seconds, source, estimate=True)


def detect_meters(root: Path = Path("/"), nvml: bool = True) -> list[PowerMeter]:
    """Every real meter this host exposes (RAPL, INA3221, NVML); empty where there is none."""
    meters: list[PowerMeter] = []
    zones = RaplMeter.find(root)
    if zones:
        meters.append(RaplMeter(zones))
    channels = Ina3221Meter.find(root)
    if channels:
        meters.append(Ina3221Meter(channels))
    if nvml:
        meter = NvmlMeter.open()
        if meter is not None:
            meters.append(meter)
    return meters
