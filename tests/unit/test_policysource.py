"""Which policy is in force after a restart or SIGHUP: the file's, or one set at run time
(tenantd.policysource). The daemon-level check is tests/e2e/test_service.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantd.config import Policy, parse_policy
from tenantd.policysource import OVERRIDE_FILE, PolicySource


def source(tmp_path: Path, text: str) -> PolicySource:
    file = tmp_path / "policy.toml"
    file.write_text(text)
    return PolicySource(tmp_path, file, parse_policy(text))


def test_a_runtime_policy_survives_while_the_file_says_the_same(tmp_path: Path) -> None:
    src = source(tmp_path, "queue_depth_per_tenant = 64\n")
    assert src.resolve().source == "file"
    assert src.store("queue_depth_per_tenant = 32\n", Policy(queue_depth_per_tenant=32)) == "runtime"
    # A restart: a fresh source over the same file.
    again = source(tmp_path, "# a comment and another layout count for nothing\nqueue_depth_per_tenant    = 64\n")
    resolved = again.resolve()
    assert resolved.source == "runtime" and resolved.policy.queue_depth_per_tenant == 32
    assert not resolved.stale_override


def test_an_edited_file_wins_and_the_runtime_policy_is_set_aside(tmp_path: Path) -> None:
    src = source(tmp_path, "queue_depth_per_tenant = 64\n")
    src.store("queue_depth_per_tenant = 32\n", Policy(queue_depth_per_tenant=32))
    (tmp_path / "policy.toml").write_text("queue_depth_per_tenant = 16\n")
    base = src.read_file()
    resolved = src.resolve(base)
    assert resolved.source == "file" and resolved.policy.queue_depth_per_tenant == 16 and resolved.stale_override
    src.commit(resolved, base)
    assert not (tmp_path / OVERRIDE_FILE).exists() and (tmp_path / (OVERRIDE_FILE + ".dropped")).exists()
    # Going back to the old file does not bring the dropped runtime policy back.
    (tmp_path / "policy.toml").write_text("queue_depth_per_tenant = 64\n")
    assert src.resolve(src.read_file()).policy.queue_depth_per_tenant == 64


def test_setting_the_files_own_policy_clears_the_runtime_one(tmp_path: Path) -> None:
    src = source(tmp_path, "queue_depth_per_tenant = 64\n")
    src.store("queue_depth_per_tenant = 32\n", Policy(queue_depth_per_tenant=32))
    assert src.store("queue_depth_per_tenant = 64\n", Policy(queue_depth_per_tenant=64)) == "file"
    assert not (tmp_path / OVERRIDE_FILE).exists() and src.resolve().source == "file"


@pytest.mark.parametrize(
    "damage",
    ["not toml [[[", "queue_depth_per_tenant = 32\n", "# base-policy-sha256 = {fp}\nslots = 3\n"],
    ids=["garbage", "no fingerprint", "a restart-only field"],
)
def test_a_damaged_or_hand_edited_runtime_policy_leaves_the_file_in_force(tmp_path: Path, damage: str) -> None:
    src = source(tmp_path, "slots = 1\n")
    src.store("slots = 1\nqueue_depth_total = 10\n", Policy(slots=1, queue_depth_total=10))
    fingerprint = (tmp_path / OVERRIDE_FILE).read_text().split("base-policy-sha256 = ")[1].split()[0]
    (tmp_path / OVERRIDE_FILE).write_text(damage.replace("{fp}", fingerprint))
    resolved = src.resolve()
    assert resolved.source == "file" and resolved.policy == Policy(slots=1) and resolved.stale_override


def test_without_a_file_the_given_policy_is_the_base(tmp_path: Path) -> None:
    src = PolicySource(tmp_path, None, Policy(queue_depth_total=5))
    src.store("queue_depth_total = 6\n", Policy(queue_depth_total=6))
    assert src.read_file() == Policy(queue_depth_total=5)
    assert src.resolve().policy.queue_depth_total == 6
    optional = PolicySource(tmp_path, tmp_path / "absent.toml", Policy(), optional=True)
    assert optional.read_file() == Policy()
