"""The device twins' arithmetic: switch cost from on-chip bytes and link, the one-model cache,
service times published or fitted, memory models and the tenant limits they give, energy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tenantd.devices import twin
from tenantd.devices.twin import MB, TwinUnavailable, get_twin

ROOT = Path(__file__).resolve().parents[2]


def test_switch_is_a_constant_plus_on_chip_bytes_over_the_link() -> None:
    fit = twin.SWITCH_FIT
    # Fitted on ibis's figure: ~2 ms plus ~435 MB/s of USB 3 (the figure's rows lie within 2 %).
    assert 1.0 < fit.constant_ms < 3.0
    assert 0.35 < fit.mb_per_ms < 0.5
    assert fit.max_rel_err < 0.02
    assert fit.predict(4.0, "usb3") == pytest.approx(fit.constant_ms + 4.0 / fit.mb_per_ms)
    # USB 2 streams the same bytes at 480/5000 of the bandwidth.
    extra2 = fit.predict(4.0, "usb2") - fit.constant_ms
    extra3 = fit.predict(4.0, "usb3") - fit.constant_ms
    assert extra2 == pytest.approx(extra3 * 5000 / 480)


def test_edgetpu_cache_holds_one_model_so_any_change_is_a_switch() -> None:
    t = get_twin("edgetpu")
    a, b = t.model("mobilenet_v2"), t.model("mobilenet_v1")
    assert t.switch_ms(a, "mobilenet_v2") == 0.0
    assert t.switch_ms(a, None) == pytest.approx(10.43)  # cold cache: ibis's published overhead
    # Two models that would both fit 8 MiB (3.75 + 4.21 MB on chip) still evict each other.
    assert t.switch_ms(b, a.name) == pytest.approx(15.12)
    assert t.hold_ms(a, b.name) == pytest.approx(4.91 + 10.43)
    # A model without a published overhead gets the formula from its on-chip bytes.
    kws = t.model("cnn-trad-fpool3")
    on_chip, off_chip = kws.edgetpu_split()
    assert off_chip == 0.0 and on_chip == pytest.approx(0.244)
    assert t.switch_ms(kws, a.name) == pytest.approx(twin.SWITCH_FIT.predict(on_chip, "usb3"))
    # On USB 2 the published USB 3 overheads no longer hold; the formula does.
    slow = get_twin("edgetpu", "usb2")
    assert slow.switch_ms(a, None) == pytest.approx(twin.SWITCH_FIT.predict(3.75, "usb2"))
    assert slow.switch_ms(a, None) > 3 * t.switch_ms(a, None)


def test_parameters_beyond_the_cache_are_streamed_on_every_inference() -> None:
    # Estimated split for a model ibis did not measure: int8 parameters fill the cache first.
    big = twin.TwinModel("x", 1.0, 20.0, None)
    assert big.edgetpu_split() == pytest.approx((twin.EDGETPU_ON_CHIP_MAX_MB, 20.0 - twin.EDGETPU_ON_CHIP_MAX_MB))
    fit = twin.SERVICE_FITS[("edgetpu", "usb3", False)]
    assert fit.features == ("one", "gmacs", "off_chip_mb")
    assert fit.coef[2] > 0  # more streamed bytes, longer service


def test_only_other_devices_keep_every_model_loaded() -> None:
    for name in ("ncs2", "jetson-nano", "jetson-tx2", "rpi3"):
        t = get_twin(name)
        assert t.switch_ms(t.model("mobilenet_v2"), "inception_v4") == 0.0
    assert get_twin("jetson-nano").discipline == twin.PS
    assert get_twin("edgetpu").discipline == twin.FCFS


def test_service_time_is_published_where_published_and_fitted_elsewhere() -> None:
    assert get_twin("edgetpu").service(twin.MODELS["inception_v4"]) == twin.ServiceTime(125.13, "published")
    assert get_twin("ncs2").service(twin.MODELS["ssd_mobilenet_v2"]) == twin.ServiceTime(80.4, "published")
    assert get_twin("ncs2", "usb2").service(twin.MODELS["ssd_mobilenet_v2"]).ms == 118.6
    fitted = get_twin("ncs2").service(twin.MODELS["ssd_mobilenet_v1"])
    assert fitted.source == "fitted"
    assert fitted.ms == pytest.approx(twin.SERVICE_FITS[("ncs2", "usb3", True)].coef[0] * 1.2)
    tx2 = get_twin("jetson-tx2").service(twin.MODELS["ssd_mobilenet_v2"])
    assert tx2 == twin.ServiceTime(pytest.approx(72.3 * twin.TX2_OVER_NANO), "scaled")
    # USB 2 EdgeTPU: aallan's USB2/USB3 ratio (~3.25) on the USB 3 time.
    assert twin.EDGETPU_USB2_FACTOR == pytest.approx((58.1 / 18.2 + 49.3 / 14.9) / 2)


def test_every_modelled_figure_is_positive() -> None:
    for name in twin.TWIN_PROFILES:
        t = get_twin(name)
        for m in ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2", "cnn-trad-fpool3"):
            model = t.model(m)
            assert t.service(model).ms > 0, (name, m)
            assert t.energy_mj(model) > 0
            assert t.footprint(model).device_bytes > 0


def test_unknown_models_are_estimated_from_their_size_and_say_so() -> None:
    t = get_twin("edgetpu")
    assert t.model("MobileNet-V2").name == "mobilenet_v2"  # aliases and spelling
    assert t.model("t01-ssd_mobilenet_v2").name == "ssd_mobilenet_v2"  # a tenant's prefix
    assert t.model("alice.mobilenet_v2").name == "mobilenet_v2"
    assert twin.resolve("notmobilenet_v2x") is None
    est = t.model("my-detector", param_bytes=3_000_000)
    assert est.estimated and est.params_m == pytest.approx(3.0)  # int8 on the EdgeTPU
    assert t.service(est).source == "estimated"
    with pytest.raises(TwinUnavailable, match="not in the twin's tables"):
        t.model("my-detector")


def test_memory_models_bound_tenants_like_the_slides_say() -> None:
    # Jetson: ~0.8 GB of CUDA/TensorRT per process beside a modelled 1 GiB OS: the Nano's 4 GB
    # admits 3 MobileNetV2 tenants, the TX2's 8 GB 8 (no dependence on this host's memory).
    mnv2 = twin.MODELS["mobilenet_v2"]
    nano = get_twin("jetson-nano")
    fp = nano.footprint(mnv2)
    assert fp.device_bytes == int(twin.ASSUMED["jetson_cuda_bytes"] + 3.4 * MB * 2 + 6.0 * MB / 2)
    assert fp.budget_bytes == 4 * twin.GiB - twin.ASSUMED["jetson_os_bytes"]
    assert nano.admitted_limit([mnv2]) == 3
    assert get_twin("jetson-tx2").admitted_limit([mnv2]) == 8
    # NCS2: FP16 weights + activations in 512 MiB less the reserve.
    ncs2 = get_twin("ncs2")
    per = int(42.68 * MB * 2 + 14.0 * MB / 2)
    assert ncs2.footprint(twin.MODELS["inception_v4"]).device_bytes == per
    assert ncs2.admitted_limit([twin.MODELS["inception_v4"]]) == (512 - 32) * 1024**2 // per
    # EdgeTPU: bounded by host memory only, so many tenants.
    assert get_twin("edgetpu").admitted_limit([mnv2]) > 50
    # A mix: tenants bring models in turn.
    mix = [twin.MODELS["inception_v4"], mnv2]
    limit = ncs2.admitted_limit(mix)
    used = sum(ncs2.footprint(mix[i % 2]).device_bytes for i in range(limit))
    assert used <= ncs2.footprint(mnv2).budget_bytes < used + ncs2.footprint(mix[limit % 2]).device_bytes


def test_energy_and_per_dollar_use_active_power_and_list_price() -> None:
    t = get_twin("edgetpu")
    m = twin.MODELS["mobilenet_v2"]
    assert t.energy_mj(m) == pytest.approx(2.0 * 4.91)  # 2 W (slides) x 4.91 ms
    assert t.inferences_per_s_per_usd(m) == pytest.approx(1000 / 4.91 / 75)


def test_profiles_without_a_twin_and_bad_links_are_refused() -> None:
    with pytest.raises(TwinUnavailable, match="no device twin for profile 'cpu'"):
        get_twin("cpu")
    with pytest.raises(TwinUnavailable, match="link 'pcie'"):
        get_twin("ncs2", "pcie")
    with pytest.raises(TwinUnavailable, match="no link"):
        get_twin("rpi3", "usb3")


def test_fit_rows_and_validation_rows_are_kept_apart() -> None:
    """The twin reads only its own tables, whose rows are all fit data; the concurrent
    measurements live in experiments/data/twins with role=validation and are never fitted."""
    for name in ("service_times.csv", "switch_costs.csv"):
        roles = {r["role"] for r in twin._rows(name)}
        assert roles <= {"fit", "crosscheck", "per-model"}, (name, roles)
    for path in (ROOT / "experiments/data/twins").glob("ibis_*.csv"):
        for row in csv.DictReader(path.open()):
            assert row["role"] == ("fit" if row.get("process_type") == "Sequential" else "validation")
            assert row["repository"] and row["commit"]
