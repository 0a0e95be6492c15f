"""Unit: the power meters of ``experiments/power.py`` on fake sysfs trees and a fake NVML, the
energy estimate's arithmetic, and the price and stand-in arithmetic of the experiments."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from experiments.concurrency import MixEntry, standin_bytes
from experiments.microbench import HOURS_PER_YEAR, price_usd
from experiments.power import (
    CpuTimeEstimate,
    Ina3221Meter,
    NvmlMeter,
    RaplMeter,
    SamplingMeter,
    detect_meters,
    estimate_watts,
    rapl_delta_uj,
)


def write(path: Path, value: int | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


def fake_rapl(root: Path) -> Path:
    base = root / "sys" / "class" / "powercap"
    for zone, energy in (("intel-rapl:0", 1_000_000), ("intel-rapl:1", 5_000_000), ("intel-rapl:0:0", 700_000)):
        write(base / zone / "energy_uj", energy)
        write(base / zone / "max_energy_range_uj", 262_143_328_850)
        write(base / zone / "name", "package" if zone.count(":") == 1 else "core")
    return base


def test_rapl_sums_package_zones_only(tmp_path: Path) -> None:
    base = fake_rapl(tmp_path)
    zones = RaplMeter.find(tmp_path)
    assert [z.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]  # the core sub-zone is inside package 0
    meter = RaplMeter(zones)
    meter.start()
    write(base / "intel-rapl:0" / "energy_uj", 3_500_000)  # +2.5 J
    write(base / "intel-rapl:1" / "energy_uj", 5_500_000)  # +0.5 J
    write(base / "intel-rapl:0:0" / "energy_uj", 9_000_000)  # not counted
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.0)
    assert not reading.estimate and "intel-rapl:0" in reading.source


def test_rapl_counter_wraps_at_its_range(tmp_path: Path) -> None:
    assert rapl_delta_uj(100, 400, 1000) == 300
    assert rapl_delta_uj(900, 50, 999) == 150  # 900 -> 999, wrap to 0, -> 50
    base = fake_rapl(tmp_path)
    write(base / "intel-rapl:1" / "max_energy_range_uj", 10_000_000)
    meter = RaplMeter([base / "intel-rapl:1"])
    meter.start()  # at 5_000_000
    write(base / "intel-rapl:1" / "energy_uj", 1_000_000)  # wrapped past 9_999_999
    assert meter.stop().joules == pytest.approx(6.0)


def test_ina3221_iio_rails_in_milliwatts(tmp_path: Path) -> None:
    dev = tmp_path / "sys" / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    write(dev / "in_power0_input", 4200)
    write(dev / "in_power1_input", 800)
    write(dev / "in_voltage0_input", 5000)  # not a power channel
    channels = Ina3221Meter.find(tmp_path)
    assert len(channels) == 2
    assert Ina3221Meter(channels).read_watts() == pytest.approx(5.0)


def test_ina3221_hwmon_rails_multiply_volts_by_amps(tmp_path: Path) -> None:
    hwmon = tmp_path / "sys" / "class" / "hwmon"
    write(hwmon / "hwmon0" / "name", "nvme")  # another sensor: ignored
    write(hwmon / "hwmon0" / "in1_input", 99_999)
    write(hwmon / "hwmon0" / "curr1_input", 99_999)
    write(hwmon / "hwmon1" / "name", "ina3221")
    write(hwmon / "hwmon1" / "in1_input", 5000)  # mV
    write(hwmon / "hwmon1" / "curr1_input", 1200)  # mA -> 6 W
    write(hwmon / "hwmon1" / "in2_input", 1000)
    write(hwmon / "hwmon1" / "curr2_input", 500)  # 0.5 W
    write(hwmon / "hwmon1" / "in7_input", 3300)  # a voltage without a current channel: no power
    channels = Ina3221Meter.find(tmp_path)
    assert len(channels) == 2 and all(str(hwmon / "hwmon1") in str(c[0]) for c in channels)
    assert Ina3221Meter(channels).read_watts() == pytest.approx(6.5)


def test_detect_meters_finds_nothing_on_a_bare_tree_and_rapl_on_a_fake_one(tmp_path: Path) -> None:
    assert detect_meters(tmp_path, nvml=False) == []
    fake_rapl(tmp_path)
    meters = detect_meters(tmp_path, nvml=False)
    assert [m.name for m in meters] == ["rapl"]


def test_sampling_meter_integrates_constant_power() -> None:
    reads = 0
    enough = threading.Event()

    def two_watts() -> float:
        nonlocal reads
        reads += 1
        if reads >= 5:
            enough.set()
        return 2.0

    meter = SamplingMeter(two_watts, "fake", interval_s=0.005)
    meter.start()
    assert enough.wait(10)
    reading = meter.stop()
    assert reading.joules == pytest.approx(2.0 * reading.seconds, rel=0.2)
    assert reading.watts == pytest.approx(2.0, rel=0.2)


class FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self, energy: bool) -> None:
        self.energy = energy
        self.counter = 10_000  # mJ

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if not self.energy:
            raise self.NVMLError("not supported")
        return self.counter

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return 70_000  # mW


def test_nvml_energy_counter_in_millijoules() -> None:
    nvml = FakeNvml(energy=True)
    meter = NvmlMeter(nvml, ["gpu0", "gpu1"])
    meter.start()
    nvml.counter += 1500  # both handles read the same fake counter: 1.5 J each
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.0) and "total energy" in reading.source


def test_nvml_falls_back_to_sampled_power() -> None:
    meter = NvmlMeter(FakeNvml(energy=False), ["gpu0"])
    assert meter._watts() == pytest.approx(70.0)
    meter.start()
    reading = meter.stop()
    assert "power usage" in reading.source and not reading.estimate
    assert reading.joules == pytest.approx(70.0 * reading.seconds, rel=0.5, abs=0.5)


def test_estimate_is_linear_between_idle_and_full_and_labelled() -> None:
    assert estimate_watts((1.9, 5.1), 0.0) == pytest.approx(1.9)
    assert estimate_watts((1.9, 5.1), 0.5) == pytest.approx(3.5)
    assert estimate_watts((1.9, 5.1), 3.0) == pytest.approx(5.1)  # clamped
    with pytest.raises(ValueError):
        estimate_watts((5.0, 1.0), 0.5)
    cpu = iter([0.0])
    meter = CpuTimeEstimate((1.9, 5.1), cores=2, cpu_seconds=lambda: next(cpu), label="rpi3")
    reading = meter.reading(cpu_s=1.0, seconds=1.0)  # one core busy of two: 50 %
    assert meter.utilisation == pytest.approx(0.5)
    assert reading.joules == pytest.approx(3.5) and reading.watts == pytest.approx(3.5)
    assert reading.estimate and reading.source.startswith("ESTIMATE") and "rpi3" in reading.source


def test_prices_and_standin_sizes() -> None:
    assert price_usd("ncs2", HOURS_PER_YEAR) == (99.0, "$99")
    cost, text = price_usd("cloud-gpu", 1000)
    assert cost == pytest.approx(3060.0) and "/h" in text
    mobilenet = MixEntry("mobilenet_v2", params=3_400_000)
    assert standin_bytes(mobilenet, "edgetpu", 1.0) == 3_400_000  # int8
    assert standin_bytes(mobilenet, "ncs2", 1.0) == 6_800_000  # FP16
    assert standin_bytes(mobilenet, "jetson-nano", 0.5) == 6_800_000  # float32, scaled
