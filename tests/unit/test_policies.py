"""Every policy file shipped in policies/ loads, and names a profile the daemon knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantd.config import load_policy
from tenantd.devices import PROFILES

POLICIES = sorted((Path(__file__).parents[2] / "policies").glob("*.toml"))


def test_policies_exist() -> None:
    assert {p.stem for p in POLICIES} >= {"default", "rpi3", "jetson-nano", "jetson-tx2", "ncs2", "edgetpu"}


@pytest.mark.parametrize("path", POLICIES, ids=[p.stem for p in POLICIES])
def test_shipped_policy_is_valid(path: Path) -> None:
    policy = load_policy(path)
    assert policy.profile is None or policy.profile in PROFILES
    if path.stem != "default":
        assert policy.profile == path.stem
