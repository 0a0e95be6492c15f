"""Integration: under ``--timing twin`` the daemon admits tenants against the device twin's memory
model, so it stops at the same tenant as ``experiments.plan`` for the same models (each submitted
through the real client, probed in a real process, charged the twin's footprint), says in the
refusal that the budget is the twin's and by how much it is short, shows ``budget_source`` in
``status``, and charges the same again after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.plan import mix_models
from models import tiny
from tenantclient import TenantClient, errors
from tenantclient.cli import _print_status as print_status
from tenantd.config import Policy
from tenantd.devices.twin import get_twin
from tests.support.daemon import daemon_in_thread

# Mixes whose limits stay small enough to submit one by one (the unit tier covers every profile).
MIXES = {
    "jetson-nano": ("okay_nabu", "cnn"),  # estimated from their files: 3 (CUDA per process dominates)
    "ncs2": ("inception_v4", "okay_nabu"),
    "rpi3": ("inception_v4", "cnn"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    wakeword = pytest.importorskip("pymicro_wakeword")
    root = tmp_path_factory.mktemp("twin-admission")
    out = {"okay_nabu": Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"}
    out["cnn"] = root / "cnn.tflite"
    out["cnn"].write_bytes(tiny.cnn(image=32, seed=5))
    out["inception_v4"] = root / "inception_v4.tflite"  # a small file the twin takes for Inception V4
    out["inception_v4"].write_bytes(tiny.mlp(32, [64], 10, seed=6))
    return out


@pytest.mark.parametrize("profile", sorted(MIXES))
def test_daemon_admits_as_many_tenants_as_plan(
    profile: str, tmp_path: Path, endpoint: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    twin = get_twin(profile)
    mix = [files[stem] for stem in MIXES[profile]]
    planned = twin.admitted_limit(mix_models(twin, [str(p) for p in mix]))
    assert 0 < planned < 20
    state = tmp_path / "state"
    with daemon_in_thread(state, endpoint, Policy(profile=profile), timing="twin"):
        admitted = 0
        with pytest.raises(errors.AdmissionDenied) as refused:
            for n in range(planned + 1):
                path = mix[n % len(mix)]
                with TenantClient(endpoint, tenant=f"t{n}") as client:
                    client.submit_model(path, f"t{n}-{path.stem}")
                admitted += 1
        with TenantClient(endpoint, tenant="op") as op:
            status = op.status()
    memory = status["memory"]
    print_status(status)  # tenantctl status says where the budget comes from
    assert "budget      the device twin's memory model (modelled)" in capsys.readouterr().out
    assert admitted == planned
    details = refused.value.details
    assert details["budget_source"] == "twin"
    assert details["budget_bytes"] == twin.memory_budget()[1]
    assert details["host_other_bytes"] == 0
    short = details["shortfall_bytes"]
    assert short > 0 and f"{short / 2**20:.1f} MiB short" in refused.value.message
    assert "device twin" in refused.value.message and "twin's" in refused.value.message
    charged = sum(
        twin.charge(f"t{n}-{mix[n % len(mix)].stem}", mix[n % len(mix)].stat().st_size)[0] for n in range(planned)
    )
    assert memory["budget_source"] == "twin" and memory["used_bytes"] == charged
    assert not any(memory["runtime_overhead_bytes"].values())  # the twin's footprint includes the runtime
    assert memory["models_admitted"] == planned

    if profile == "jetson-nano":  # a restart charges the restored models the twin's figures again
        with daemon_in_thread(state, endpoint, Policy(profile=profile), timing="twin"):
            with TenantClient(endpoint, tenant="op") as op:
                assert op.status()["memory"]["used_bytes"] == charged


def test_cpu_timing_keeps_the_measured_budget(tmp_path: Path, endpoint: str, files: dict[str, Path]) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="ncs2")):
        with TenantClient(endpoint, tenant="a") as a:
            a.submit_model(files["inception_v4"], "a-inception_v4")
            memory = a.status()["memory"]
    assert memory["budget_source"] == "measured" and "budget_note" not in memory
    assert memory["used_bytes"] < get_twin("ncs2").charge("a-inception_v4", 1)[0]  # measured: a tiny MLP
