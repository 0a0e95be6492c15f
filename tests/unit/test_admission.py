"""Unit tests for tenantd.admission and tenantd.devices: the memory ledger, budgets and profiles.

Host memory is read through an injected fake, so every budget here is exact and deterministic.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from tenantd.admission import Admission, Budget, Decision
from tenantd.config import Policy
from tenantd.devices import PROFILES, DeviceProfile, MemoryModel, get_profile
from tenantd.devices.profiles import SOURCES, GiB, MiB


class FakeHost:
    """A host whose DRAM total and use the test sets; called like ``host_memory``."""

    def __init__(self, total: int = 16 * GiB, used: int = 0) -> None:
        self.total = total
        self.used = used
        self.calls = 0

    def __call__(self) -> tuple[int, int]:
        self.calls += 1
        return self.total, self.total - self.used


def admission(name: str, host: FakeHost | None = None, **kwargs: int | None) -> Admission:
    return Admission(get_profile(name), memory_reader=host or FakeHost(), **kwargs)


# ---------------------------------------------------------------- budgets per memory model


def test_dedicated_budget_is_capacity_minus_reserve_and_ignores_host_memory() -> None:
    host = FakeHost(total=64 * GiB, used=1 * GiB)
    adm = admission("ncs2", host)
    before = adm.budget()
    assert before.memory_model == "dedicated"
    assert before.capacity_bytes == 512 * MiB
    assert before.reserve_bytes == 32 * MiB
    assert before.host_other_bytes == 0
    assert before.budget_bytes == 480 * MiB
    assert before.used_bytes == 0
    assert before.free_bytes == 480 * MiB

    host.used = 63 * GiB  # the host filling up does not touch the stick's own memory
    host.total = 1 * GiB
    assert adm.budget() == before


def test_shared_budget_subtracts_host_use_and_shrinks_as_it_grows() -> None:
    host = FakeHost(total=4 * GiB, used=1 * GiB)
    adm = admission("jetson-nano", host)
    b = adm.budget()
    assert b.memory_model == "shared"
    assert b.capacity_bytes == 4 * GiB
    assert b.reserve_bytes == 512 * MiB
    assert b.host_other_bytes == 1 * GiB
    assert b.budget_bytes == 4 * GiB - 512 * MiB - 1 * GiB

    host.used = 2 * GiB  # a host process grows by 1 GiB: the budget loses exactly that
    grown = adm.budget()
    assert grown.host_other_bytes == 2 * GiB
    assert grown.budget_bytes == b.budget_bytes - 1 * GiB

    host.used = 4 * GiB  # the host uses everything: the budget bottoms out at zero, never negative
    assert adm.budget().budget_bytes == 0


def test_shared_budget_counts_the_ledgers_own_models_once() -> None:
    host = FakeHost(total=8 * GiB, used=1 * GiB)
    adm = admission("jetson-tx2", host)
    empty = adm.budget()

    # A model is charged and really loaded: the host's use now includes it as well.
    adm.charge("m", 300 * MiB, "onnx", 100 * MiB)
    host.used += 400 * MiB
    loaded = adm.budget()
    assert loaded.used_bytes == 400 * MiB
    assert loaded.host_other_bytes == 1 * GiB  # host use minus the ledger: the model is not "other"
    assert loaded.budget_bytes == empty.budget_bytes
    assert loaded.free_bytes == empty.free_bytes - 400 * MiB  # charged once, not twice


def test_cpu_profile_takes_its_capacity_from_the_host() -> None:
    host = FakeHost(total=12 * GiB, used=2 * GiB)
    b = admission("cpu", host).budget()
    assert b.capacity_bytes == 12 * GiB
    assert b.budget_bytes == 12 * GiB - 512 * MiB - 2 * GiB


def test_cache_profile_budgets_against_host_total_not_the_on_chip_cache() -> None:
    host = FakeHost(total=6 * GiB, used=1 * GiB)
    adm = admission("edgetpu", host)
    b = adm.budget()
    assert b.memory_model == "cache"
    assert b.capacity_bytes == 6 * GiB  # not the 8 MiB parameter cache
    assert b.host_other_bytes == 1 * GiB
    assert b.budget_bytes == 6 * GiB - 512 * MiB - 1 * GiB
    host.used = 2 * GiB
    assert adm.budget().budget_bytes == b.budget_bytes - 1 * GiB


@pytest.mark.parametrize("name", ["ncs2", "jetson-nano", "edgetpu", "cpu"])
def test_capacity_and_reserve_overrides(name: str) -> None:
    host = FakeHost(total=32 * GiB, used=0)
    b = admission(name, host, capacity_bytes=2 * GiB, reserve_bytes=100 * MiB).budget()
    assert b.capacity_bytes == 2 * GiB
    assert b.reserve_bytes == 100 * MiB
    assert b.budget_bytes == 2 * GiB - 100 * MiB


def test_reserve_override_of_zero_is_respected() -> None:
    b = admission("ncs2", reserve_bytes=0).budget()
    assert b.reserve_bytes == 0
    assert b.budget_bytes == 512 * MiB


def test_a_profile_without_capacity_under_an_override_uses_the_override() -> None:
    b = admission("cuda", FakeHost(total=64 * GiB), capacity_bytes=24 * GiB).budget()
    assert b.memory_model == "dedicated"
    assert b.budget_bytes == 24 * GiB - 512 * MiB


# ---------------------------------------------------------------- decide


def test_decide_admits_when_it_fits_and_charges_at_once() -> None:
    adm = admission("ncs2")  # 480 MiB budget
    d = adm.decide("a", 200 * MiB, "openvino", 50 * MiB)
    assert d.admitted
    assert d.footprint_bytes == 200 * MiB
    assert d.runtime_overhead_bytes == 50 * MiB
    assert d.need_bytes == 250 * MiB
    assert d.shortfall_bytes == 0
    assert d.budget.used_bytes == 0  # the decision reports the state it was decided on
    assert adm.ledger.models == {"a": 200 * MiB}
    assert adm.ledger.runtime_overhead == {"openvino": 50 * MiB}
    assert adm.budget().used_bytes == 250 * MiB


def test_decide_admits_an_exact_fit() -> None:
    adm = admission("ncs2")
    assert adm.decide("a", 480 * MiB, "openvino", 0).admitted
    assert adm.budget().free_bytes == 0


def test_two_decides_for_the_last_free_bytes_cannot_both_succeed_dedicated() -> None:
    adm = admission("ncs2")  # 480 MiB free
    first = adm.decide("a", 300 * MiB, "openvino", 0)
    second = adm.decide("b", 300 * MiB, "openvino", 0)
    assert first.admitted
    assert not second.admitted
    assert second.budget.used_bytes == 300 * MiB  # it saw the first one's charge
    assert set(adm.ledger.models) == {"a"}


@pytest.mark.parametrize("name", ["jetson-nano", "cpu", "edgetpu"])
def test_two_decides_for_the_last_free_bytes_cannot_both_succeed_shared(name: str) -> None:
    host = FakeHost(total=4 * GiB, used=1536 * MiB)  # the OS and the daemon itself; nothing loaded yet
    adm = admission(name, host, capacity_bytes=4 * GiB, reserve_bytes=512 * MiB)
    assert adm.budget().free_bytes == 2048 * MiB
    first = adm.decide("a", 1200 * MiB, "onnx", 0)
    # Neither model is loaded yet, so the host's use has not moved.
    second = adm.decide("b", 1200 * MiB, "onnx", 0)
    assert first.admitted
    assert not second.admitted


def test_runtime_overhead_is_charged_with_the_first_model_of_a_runtime_only() -> None:
    adm = admission("cloud-gpu")
    first = adm.decide("a", 10 * MiB, "onnx", 100 * MiB)
    second = adm.decide("b", 10 * MiB, "onnx", 100 * MiB)
    other = adm.decide("c", 10 * MiB, "tflite", 30 * MiB)
    assert first.runtime_overhead_bytes == 100 * MiB
    assert second.runtime_overhead_bytes == 0
    assert second.need_bytes == 10 * MiB
    assert other.runtime_overhead_bytes == 30 * MiB
    assert adm.ledger.runtime_overhead == {"onnx": 100 * MiB, "tflite": 30 * MiB}
    assert adm.budget().used_bytes == 30 * MiB + 130 * MiB


def test_negative_runtime_overhead_is_clamped_to_zero() -> None:
    adm = admission("ncs2")
    d = adm.decide("a", 10 * MiB, "openvino", -5 * MiB)
    assert d.runtime_overhead_bytes == 0
    assert adm.budget().used_bytes == 10 * MiB


def test_denied_decision_leaves_the_ledger_unchanged() -> None:
    adm = admission("ncs2")  # 480 MiB budget
    adm.decide("a", 400 * MiB, "openvino", 20 * MiB)  # 60 MiB free
    ledger_before = (dict(adm.ledger.models), dict(adm.ledger.runtime_overhead))
    d = adm.decide("big", 90 * MiB, "tflite", 10 * MiB)
    assert not d.admitted
    assert d.need_bytes == 100 * MiB
    assert d.budget.free_bytes == 60 * MiB
    assert d.shortfall_bytes == d.need_bytes - d.budget.free_bytes == 40 * MiB
    assert (adm.ledger.models, adm.ledger.runtime_overhead) == ledger_before
    # The refused runtime's overhead was not kept: its next first model still pays it.
    assert adm.decide("small", 40 * MiB, "tflite", 10 * MiB).runtime_overhead_bytes == 10 * MiB


def test_shortfall_counts_an_over_budget_ledger() -> None:
    adm = admission("ncs2")  # 480 MiB budget
    adm.charge("restored", 500 * MiB, "openvino")  # restored at start-up, over the budget
    d = adm.decide("a", 10 * MiB, "openvino", 0)
    assert not d.admitted
    assert d.budget.free_bytes == -20 * MiB
    assert d.shortfall_bytes == 30 * MiB


def test_explain_names_footprint_budget_use_and_shortfall_in_mib() -> None:
    adm = admission("ncs2")  # 480 MiB budget
    adm.decide("a", 400 * MiB, "openvino", 20 * MiB)
    d = adm.decide("big", 90 * MiB, "tflite", 10 * MiB)
    text = d.explain()
    assert "'big'" in text
    assert "100.0 MiB" in text  # the need
    assert "90.0 MiB measured footprint" in text
    assert "10.0 MiB runtime library" in text
    assert "dedicated budget is 480.0 MiB" in text
    assert "420.0 MiB in use" in text
    assert "40.0 MiB short" in text


def test_explain_without_runtime_overhead_does_not_mention_it() -> None:
    adm = admission("ncs2")
    adm.decide("a", 400 * MiB, "openvino", 0)
    text = adm.decide("b", 100 * MiB, "openvino", 50 * MiB).explain()
    assert "runtime library" not in text
    assert "20.0 MiB short" in text


def test_replacing_a_model_is_decided_without_the_old_charge() -> None:
    adm = admission("ncs2")  # 480 MiB budget
    adm.decide("m", 300 * MiB, "openvino", 0)
    d = adm.decide("m", 400 * MiB, "openvino", 0)  # would not fit next to the old 300 MiB
    assert d.admitted
    assert d.budget.used_bytes == 0
    assert adm.ledger.models == {"m": 400 * MiB}
    assert adm.budget().used_bytes == 400 * MiB


def test_a_denied_replacement_keeps_the_old_charge() -> None:
    adm = admission("ncs2")
    adm.decide("m", 300 * MiB, "openvino", 0)
    d = adm.decide("m", 500 * MiB, "openvino", 0)
    assert not d.admitted
    assert d.shortfall_bytes == 20 * MiB
    assert adm.ledger.models == {"m": 300 * MiB}


# ---------------------------------------------------------------- charge, uncharge, loaded, release


def test_charge_without_deciding_may_go_over_budget() -> None:
    adm = admission("ncs2")
    adm.charge("restored", 600 * MiB, "openvino", 10 * MiB)
    adm.charge("restored2", 1 * MiB, "openvino", 99 * MiB)  # the runtime's overhead is charged once
    assert adm.ledger.runtime_overhead == {"openvino": 10 * MiB}
    assert adm.budget().used_bytes == 611 * MiB
    assert adm.budget().free_bytes < 0


def test_uncharge_without_a_previous_charge_releases() -> None:
    adm = admission("ncs2")
    adm.decide("a", 100 * MiB, "openvino", 0)
    adm.uncharge("a", None)
    assert "a" not in adm.ledger.models
    assert adm.budget().used_bytes == 0


def test_uncharge_restores_the_previous_charge_of_a_replaced_model() -> None:
    adm = admission("ncs2")
    adm.decide("m", 100 * MiB, "openvino", 0)
    previous = adm.ledger.models.get("m")
    assert adm.decide("m", 250 * MiB, "openvino", 0).admitted
    adm.uncharge("m", previous)
    assert adm.ledger.models == {"m": 100 * MiB}


def test_loaded_only_raises_a_charge() -> None:
    adm = admission("ncs2")
    adm.decide("m", 100 * MiB, "openvino", 0)
    adm.loaded("m", 60 * MiB)
    assert adm.ledger.models["m"] == 100 * MiB
    adm.loaded("m", -5)  # a load that measured RSS shrinking
    assert adm.ledger.models["m"] == 100 * MiB
    adm.loaded("m", 150 * MiB)
    assert adm.ledger.models["m"] == 150 * MiB


def test_loaded_of_an_unknown_model_charges_nothing() -> None:
    adm = admission("ncs2")
    adm.loaded("ghost", 100 * MiB)
    assert adm.ledger.models == {}
    assert adm.budget().used_bytes == 0


def test_release_frees_the_model_but_keeps_the_runtime_overhead() -> None:
    adm = admission("ncs2")
    adm.decide("a", 100 * MiB, "openvino", 20 * MiB)
    adm.decide("b", 50 * MiB, "openvino", 20 * MiB)
    adm.release("a")
    assert adm.ledger.models == {"b": 50 * MiB}
    assert adm.budget().used_bytes == 70 * MiB
    adm.release("a")  # releasing twice is harmless
    adm.release("never-admitted")
    assert adm.budget().used_bytes == 70 * MiB
    # The freed bytes can be admitted again.
    assert adm.decide("c", 410 * MiB, "openvino", 20 * MiB).admitted


# ---------------------------------------------------------------- wire forms


BUDGET_KEYS = {
    "memory_model",
    "capacity_bytes",
    "reserve_bytes",
    "host_other_bytes",
    "budget_bytes",
    "used_bytes",
    "free_bytes",
    "budget_source",
}


def test_budget_to_wire() -> None:
    host = FakeHost(total=4 * GiB, used=1 * GiB)
    adm = admission("jetson-nano", host)
    adm.charge("m", 100 * MiB, "onnx", 0)
    wire = adm.budget().to_wire()
    assert set(wire) == BUDGET_KEYS
    assert wire == {
        "memory_model": "shared",
        "capacity_bytes": 4 * GiB,
        "reserve_bytes": 512 * MiB,
        "host_other_bytes": 1 * GiB - 100 * MiB,
        "budget_bytes": 4 * GiB - 512 * MiB - (1 * GiB - 100 * MiB),
        "used_bytes": 100 * MiB,
        "free_bytes": 4 * GiB - 512 * MiB - 1 * GiB,
        "budget_source": "measured",
    }


def test_decision_to_wire() -> None:
    adm = admission("ncs2")
    adm.decide("a", 400 * MiB, "openvino", 0)
    d = adm.decide("b", 90 * MiB, "tflite", 10 * MiB)
    wire = d.to_wire()
    assert set(wire) == BUDGET_KEYS | {"footprint_bytes", "runtime_overhead_bytes", "shortfall_bytes"}
    assert wire["footprint_bytes"] == 90 * MiB
    assert wire["runtime_overhead_bytes"] == 10 * MiB
    assert wire["shortfall_bytes"] == 20 * MiB
    assert wire["free_bytes"] == 80 * MiB
    assert wire["used_bytes"] == 400 * MiB


def test_decision_shortfall_is_computed_from_its_budget() -> None:
    budget = Budget("dedicated", 100, 0, 0, 100, 70)
    assert Decision(False, "x", 50, 0, budget).shortfall_bytes == 20
    assert Decision(True, "x", 30, 0, budget).shortfall_bytes == 0


# ---------------------------------------------------------------- profiles


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_every_profile_is_well_formed(profile: DeviceProfile) -> None:
    assert isinstance(profile.memory_model, MemoryModel)
    if profile.name in ("cpu", "cuda"):
        assert profile.price_usd == 0.0
    else:
        assert profile.price_usd > 0
    assert profile.price_unit in ("device", "hour")
    low, high = profile.power_w
    assert 0 <= low <= high
    assert all(s in SOURCES for s in profile.sources)
    assert profile.default_reserve_bytes >= 0
    assert profile.capacity_bytes is None or profile.capacity_bytes > profile.default_reserve_bytes
    if profile.memory_model is MemoryModel.CACHE:
        assert profile.cache_bytes
    wire = profile.to_wire()
    assert wire["memory_model"] == profile.memory_model.value
    assert wire["sources"] == [SOURCES[s] for s in profile.sources]
    assert PROFILES[profile.name] is profile


@pytest.mark.parametrize(
    ("name", "model", "capacity", "power", "price"),
    [
        ("jetson-nano", MemoryModel.SHARED, 4 * GiB, (5.0, 10.0), 99.0),
        ("jetson-tx2", MemoryModel.SHARED, 8 * GiB, (7.5, 15.0), 399.0),
        ("ncs2", MemoryModel.DEDICATED, 512 * MiB, (1.0, 2.0), 99.0),
    ],
)
def test_slide_figures_for_edge_devices(
    name: str, model: MemoryModel, capacity: int, power: tuple[float, float], price: float
) -> None:
    p = get_profile(name)
    assert p.memory_model is model
    assert p.capacity_bytes == capacity
    assert p.power_w == power
    assert p.price_usd == price
    assert p.price_unit == "device"
    assert "slides" in p.sources


def test_slide_figures_for_the_edgetpu() -> None:
    p = get_profile("edgetpu")
    assert p.memory_model is MemoryModel.CACHE
    assert p.cache_bytes == 8 * MiB
    assert p.power_w == (0.5, 2.0)
    assert p.price_usd == 75.0
    assert "slides" in p.sources


@pytest.mark.parametrize(("name", "watts"), [("cloud-cpu", 131.26), ("cloud-gpu", 111.66)])
def test_slide_figures_for_measured_cloud_power(name: str, watts: float) -> None:
    p = get_profile(name)
    assert p.power_w == (watts, watts)
    assert p.price_unit == "hour"
    assert "slides" in p.sources


def test_get_profile_of_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_profile("jetson-agx-thor")
    message = str(info.value.args[0])
    assert "jetson-agx-thor" in message
    for name in PROFILES:
        assert name in message


def test_admission_follows_a_modified_profile() -> None:
    # Admission reads the profile it is given, not the registry by name.
    custom = replace(get_profile("ncs2"), capacity_bytes=1 * GiB, default_reserve_bytes=0)
    b = Admission(custom, memory_reader=FakeHost()).budget()
    assert b.budget_bytes == 1 * GiB


# ---------------------------------------------------------------- policy fields


def test_policy_memory_defaults() -> None:
    p = Policy()
    assert p.profile is None
    assert p.overcommit == "reject"
    assert p.capacity_bytes is None
    assert p.reserve_bytes is None


def test_policy_overcommit_is_reject_or_swap() -> None:
    assert Policy(overcommit="swap").effective_slots() == 1  # a swapping device runs one model at a time
    assert Policy(overcommit="swap", slots=1).overcommit == "swap"
    with pytest.raises(ValidationError, match="overcommit"):
        Policy(overcommit="evict-everyone")  # type: ignore[arg-type]


def test_policy_accepts_an_unknown_profile_name() -> None:
    # The daemon checks the name against PROFILES at start-up; the policy only holds it.
    assert Policy(profile="no-such-device").profile == "no-such-device"


@pytest.mark.parametrize(
    "fields", [{"capacity_bytes": 0}, {"capacity_bytes": -1}, {"reserve_bytes": -1}, {"capacity_bytes": "1GiB"}]
)
def test_policy_refuses_bad_capacity_and_reserve(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Policy(**fields)  # type: ignore[arg-type]


def test_policy_accepts_capacity_and_reserve() -> None:
    p = Policy(profile="jetson-nano", capacity_bytes=2 * GiB, reserve_bytes=0)
    assert (p.profile, p.capacity_bytes, p.reserve_bytes) == ("jetson-nano", 2 * GiB, 0)


def test_a_loaded_model_moves_from_pending_into_the_hosts_measured_use() -> None:
    host = FakeHost(total=4 * GiB, used=1536 * MiB)
    adm = admission("jetson-nano", host, capacity_bytes=4 * GiB, reserve_bytes=512 * MiB)
    # The daemon imported the runtime library before deciding: the host's 1536 MiB include it.
    assert adm.decide("a", 1200 * MiB, "onnx", 100 * MiB).admitted
    assert adm.budget().free_bytes == 2048 * MiB - 1200 * MiB  # the model is pending: not in host use yet
    host.used += 1200 * MiB  # the load happened: the host now holds the model
    adm.loaded("a", 1200 * MiB, "onnx")
    assert adm.ledger.pending() == 0
    assert adm.budget().free_bytes == 2048 * MiB - 1200 * MiB  # counted once, not twice


# ---------------------------------------------------------------- instances


def test_an_instance_is_reserved_at_its_estimate_and_charged_what_it_measured() -> None:
    adm = admission("ncs2")  # 480 MiB budget, dedicated
    assert adm.decide("a", 100 * MiB, "openvino", 0).admitted
    assert adm.reserve_instance("a", 100 * MiB)
    assert adm.budget().used_bytes == 200 * MiB  # reserved: a decision meanwhile sees it taken
    assert adm.ledger.pending() == 100 * MiB + 100 * MiB  # the model's own load and the instance
    adm.instance_loaded("a", 100 * MiB, 30 * MiB)
    assert adm.ledger.instances == {"a": [30 * MiB]}
    assert adm.ledger.pending_instance_bytes == 0
    assert adm.budget().used_bytes == 130 * MiB
    assert adm.ledger.instance_bytes("a") == 30 * MiB


def test_no_instance_is_reserved_without_room_and_nothing_is_charged() -> None:
    adm = admission("ncs2")
    assert adm.decide("a", 300 * MiB, "openvino", 0).admitted
    assert not adm.reserve_instance("a", 200 * MiB)  # 180 MiB free
    assert adm.ledger.instances == {}
    assert adm.budget().used_bytes == 300 * MiB
    assert adm.reserve_instance("a", 180 * MiB)  # an exact fit is room


def test_an_instance_of_a_model_not_charged_is_refused() -> None:
    adm = admission("ncs2")
    assert not adm.reserve_instance("ghost", 1)


def test_a_failed_instance_gives_its_reservation_back() -> None:
    adm = admission("ncs2")
    assert adm.decide("a", 100 * MiB, "openvino", 0).admitted
    assert adm.reserve_instance("a", 50 * MiB)
    adm.instance_failed("a", 50 * MiB)
    assert adm.ledger.instances.get("a", []) == []
    assert adm.ledger.pending_instance_bytes == 0
    assert adm.budget().used_bytes == 100 * MiB


def test_releasing_a_model_releases_its_instances() -> None:
    adm = admission("ncs2")
    assert adm.decide("a", 100 * MiB, "openvino", 0).admitted
    for measured in (20 * MiB, 22 * MiB):
        assert adm.reserve_instance("a", 100 * MiB)
        adm.instance_loaded("a", 100 * MiB, measured)
    assert adm.budget().used_bytes == 142 * MiB
    adm.release("a")
    assert adm.ledger.instances == {}
    assert adm.budget().used_bytes == 0


def test_shared_budget_counts_a_reserved_instance_until_it_shows_in_host_memory() -> None:
    host = FakeHost(total=4 * GiB, used=1 * GiB)
    adm = admission("jetson-nano", host)
    free = adm.budget().free_bytes
    assert adm.decide("a", 100 * MiB, "litert", 0).admitted
    host.used += 100 * MiB
    adm.loaded("a", 100 * MiB, "litert")
    assert adm.budget().free_bytes == free - 100 * MiB
    assert adm.reserve_instance("a", 40 * MiB)
    assert adm.budget().free_bytes == free - 140 * MiB  # not in the host's use yet: pending
    host.used += 30 * MiB
    adm.instance_loaded("a", 40 * MiB, 30 * MiB)
    assert adm.budget().free_bytes == free - 130 * MiB
