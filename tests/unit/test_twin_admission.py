"""Admission against a device twin's memory model (``--timing twin``): the ledger charges each model
the twin's footprint against the twin's fixed budget, so admission stops where
``experiments.plan`` says, for every twin profile; and it says the budget is the twin's.

Real parts: the real ``Admission`` ledger and the real twin, deciding on real model files (a
trained keyword-spotting model, a generated CNN, and files served under names the twin's tables
know), the files' sizes being what the twin estimates an unknown model from."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.plan import mix_models
from models import tiny
from tenantd.admission import Admission
from tenantd.devices import get_profile
from tenantd.devices.twin import TWIN_PROFILES, get_twin

# The n-th tenant brings the n-th file of its profile's mix (cycling), as plan's tenants do.
MIXES = {
    "edgetpu": ("inception_v4", "okay_nabu", "cnn"),
    "ncs2": ("inception_v4", "okay_nabu", "cnn"),
    "jetson-nano": ("okay_nabu", "cnn"),
    "jetson-tx2": ("okay_nabu", "cnn", "mobilenet_v2"),
    "rpi3": ("inception_v4", "cnn"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    wakeword = pytest.importorskip("pymicro_wakeword")
    root = tmp_path_factory.mktemp("twin-admission")
    out = {"okay_nabu": Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"}
    out["cnn"] = root / "cnn.tflite"
    out["cnn"].write_bytes(tiny.cnn(image=32, seed=5))
    for known in ("inception_v4", "mobilenet_v2"):  # small files under names the twin knows
        out[known] = root / f"{known}.tflite"
        out[known].write_bytes(tiny.mlp(32, [64], 10, seed=6))
    return out


def fill(admission: Admission, mix: list[tuple[str, Path]]) -> tuple[int, str, int]:
    """Submit the mix's models, tenant after tenant, until one is refused: (admitted, the refusal's
    explanation, its shortfall)."""
    n = 0
    while n < 10_000:
        stem, path = mix[n % len(mix)]
        name = f"t{n:04d}-{stem}"
        footprint, overhead, parts = admission.footprint(name, 123, 45, path.stat().st_size)
        decision = admission.decide(name, footprint, "litert", overhead, note=parts)
        if not decision.admitted:
            return n, decision.explain(), decision.shortfall_bytes
        admission.loaded(name, 10**9, "litert")  # this CPU's growth: not what the twin charges
        n += 1
    raise AssertionError("no refusal in 10000 tenants")


@pytest.mark.parametrize("profile", TWIN_PROFILES)
def test_admission_stops_where_plan_does(profile: str, files: dict[str, Path]) -> None:
    twin = get_twin(profile)
    mix = [(stem, files[stem]) for stem in MIXES[profile]]
    admission = Admission(get_profile(profile), capacity_bytes=10**12, reserve_bytes=0, twin=twin)
    admitted, reason, shortfall = fill(admission, mix)

    planned = twin.admitted_limit(mix_models(twin, [str(path) for _, path in mix]))
    assert admitted == planned > 0
    assert 0 < shortfall
    budget = admission.budget()
    assert budget.source == "twin"
    assert budget.budget_bytes == twin.memory_budget()[1]  # the policy's capacity and reserve do not apply
    assert budget.host_other_bytes == 0  # this host's live use is not the device's
    assert "twin" in reason and f"{shortfall / 2**20:.1f} MiB short" in reason
    # The ledger holds the twin's charges, not the probe's 123 bytes nor the load's measured growth.
    assert admission.ledger.total() == sum(admission.ledger.models.values())
    assert budget.to_wire()["budget_source"] == "twin"


def test_models_the_twin_does_not_know_are_estimated_from_their_files(files: dict[str, Path]) -> None:
    twin = get_twin("ncs2")
    for stem in ("okay_nabu", "cnn"):
        model = twin.model(f"alice-{stem}", files[stem].stat().st_size)
        assert model.estimated
    assert not twin.model("alice-inception_v4", 1).estimated
    charge, parts = twin.charge("alice-cnn", files["cnn"].stat().st_size)
    assert charge == twin.footprint(twin.model("cnn", files["cnn"].stat().st_size)).device_bytes
    assert "FP16 weights" in parts


def test_without_a_twin_the_budget_is_measured() -> None:
    admission = Admission(get_profile("ncs2"))
    assert admission.footprint("m", 1000, 50, 10**6) == (1000, 50, "")
    budget = admission.budget()
    assert budget.source == "measured" and "budget_note" not in budget.to_wire()
    decision = admission.decide("m", 10**9, "litert", 0)
    assert not decision.admitted and "measured footprint" in decision.explain()
