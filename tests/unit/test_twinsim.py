"""The twin simulator's disciplines on workloads worked out by hand, and the validation against
the published concurrent measurements (a few rows here; the whole table behind -m slow)."""

from __future__ import annotations

import itertools

import pytest

from experiments import plan, validate_twins
from experiments.twinsim import Request, poisson_arrivals, simulate, simulate_fcfs, simulate_ps, summarise
from tenantd.devices.twin import get_twin


def test_fcfs_holds_the_device_for_service_plus_switch_in_arrival_order() -> None:
    reqs = [Request("a", 0.0), Request("b", 0.0), Request("a", 0.050)]
    served = simulate_fcfs(reqs, {"a": 10.0, "b": 20.0}.__getitem__, lambda m, p: 0.0 if p == m else 5.0)
    assert [round(s.end_s * 1e3, 6) for s in served] == [
        15.0,
        40.0,
        65.0,
    ]  # 5+10; 15+5+20; the third waits for its arrival: 50+5+10
    assert [s.switch_ms for s in served] == [5.0, 5.0, 5.0]
    assert served[2].start_s == pytest.approx(0.050)  # arrived after the device was free


def test_processor_sharing_splits_the_device_equally() -> None:
    served = {
        s.model: s.response_ms
        for s in simulate_ps(
            [Request("x", 0), Request("y", 0), Request("z", 0)], {"x": 10.0, "y": 20.0, "z": 40.0}.__getitem__
        )
    }
    # Three share until x is done (3 x 10), two until y is (30 + 2 x 10), then z alone (50 + 20).
    assert served == pytest.approx({"x": 30.0, "y": 50.0, "z": 70.0})


def test_poisson_arrivals_have_the_asked_rate() -> None:
    reqs = poisson_arrivals({"a": 50.0, "b": 5.0}, 200.0, seed=3)
    counts = {m: sum(r.model == m for r in reqs) for m in ("a", "b")}
    assert 9_400 < counts["a"] < 10_600 and 850 < counts["b"] < 1_150
    assert all(x.arrival_s <= y.arrival_s for x, y in itertools.pairwise(reqs))


def test_switch_share_on_the_edgetpu_twin() -> None:
    reqs = [Request(m, i * 1.0) for i, m in enumerate(["mobilenet_v2", "mobilenet_v2", "inception_v4"])]
    summary = summarise(simulate(get_twin("edgetpu"), reqs), horizon_s=3.0)
    switch = 10.43 + 19.43  # cold start, then the change to inception_v4
    assert summary.switches == 2
    assert summary.switch_share == pytest.approx(switch / (switch + 2 * 4.91 + 125.13))


def test_validation_reproduces_the_fcfs_and_processor_sharing_runs() -> None:
    rows = {(r.experiment, r.model): r for r in [*validate_twins.edgetpu_fcfs(), *validate_twins.trt_ps()]}
    assert abs(rows[("edgetpu-fcfs", "SSD Mobilenet V2")].error) < 0.05
    assert abs(rows[("trt-ps", "EfficientNet-B3")].error) < 0.05
    assert rows[("edgetpu-fcfs", "ENets-S")].published_ms == pytest.approx(27.086)


@pytest.mark.slow
def test_every_published_concurrent_mean_is_within_15_percent() -> None:
    rows = validate_twins.validation_rows()
    assert len(rows) == 43
    worst = max(rows, key=lambda r: abs(r.error))
    assert abs(worst.error) <= validate_twins.TOLERANCE, worst
    assert sum(abs(r.error) <= 0.10 for r in rows) >= len(rows) // 2


def test_plan_prints_the_limit_throughput_and_switch_share(capsys: pytest.CaptureFixture[str]) -> None:

    assert (
        plan.main(
            [
                "--profile",
                "jetson-nano",
                "--models",
                "mobilenet_v2",
                "--tenants",
                "6",
                "--rate",
                "20",
                "--horizon-s",
                "60",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "admitted-tenant limit for this mix: 3" in out and "3 of 6 admitted" in out
    assert "throughput" in out and "p99" in out
    assert (
        plan.main(["--profile", "edgetpu", "--models", "mobilenet_v2,inception_v4", "--rate", "2", "--horizon-s", "60"])
        == 0
    )
    out = capsys.readouterr().out
    assert "% of device time)" in out and "switches 0 " not in out
    assert plan.main(["--profile", "ncs2", "--models", "no-such-model", "--rate", "1"]) == 2
    assert "not in the twin's tables" in capsys.readouterr().err


def test_microbench_modelled_rows_are_labelled_and_positive() -> None:
    from experiments.microbench import modelled_rows

    rows = modelled_rows()
    assert len(rows) == 25  # five twins x the paper's five models
    for device, _model, service, rate, mj, per_w, per_usd, _source in rows:
        assert device.endswith(": MODELLED")
        assert service.split(" (")[1].rstrip(")") in ("published", "fitted", "scaled")
        assert min(float(rate), float(mj), float(per_w), float(per_usd)) > 0


def test_concurrency_switch_share_is_never_printed_negative() -> None:
    from experiments.concurrency import _pct_share, switch_share

    # Under twin timing every switch's modelled cost counts; under CPU timing only reloads'.
    step = {"switch_overhead_share": 0.25, "reload_overhead_share": 0.1}
    assert switch_share(step, "twin") == 0.25 and switch_share(step, "cpu") == 0.1
    # A negative share (the host disturbed the measurement) is flagged, not a result.
    assert switch_share({"reload_overhead_share": -2.386}, "cpu") is None
    assert _pct_share({"reload_overhead_share": -2.386}, "cpu") == "disturbed"
