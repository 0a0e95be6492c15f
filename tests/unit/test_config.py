"""Unit tests for tenantd.config: the policy file and its defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from tenantd import config
from tenantd.config import ConfigError, Policy, load_policy

REPO_POLICY = Path(__file__).parents[2] / "policies" / "default.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_no_file_gives_defaults() -> None:
    policy = load_policy(None)
    assert policy == Policy()
    assert policy.slots is None
    assert policy.threads_per_model is None
    assert policy.queue_depth_per_tenant == 64
    assert policy.queue_depth_total == 1024
    assert policy.max_message_bytes == 256 * 1024 * 1024
    assert policy.probe_timeout_s == 60.0
    assert policy.drain_timeout_s == 30.0


def test_valid_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        # a comment
        slots = 3
        threads_per_model = 2
        queue_depth_per_tenant = 5
        queue_depth_total = 50
        max_message_bytes = 4096
        probe_timeout_s = 2.5
        drain_timeout_s = 0
        """,
    )
    policy = load_policy(path)
    assert policy.slots == 3
    assert policy.threads_per_model == 2
    assert policy.queue_depth_per_tenant == 5
    assert policy.queue_depth_total == 50
    assert policy.max_message_bytes == 4096
    assert policy.probe_timeout_s == 2.5
    assert policy.drain_timeout_s == 0.0
    assert policy.effective_slots() == 3
    assert policy.effective_threads() == 2


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "queue_depth_total = 7\n"))
    assert policy.queue_depth_total == 7
    assert policy.queue_depth_per_tenant == 64
    assert policy.slots is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "")) == Policy()


def test_repo_cpu_policy_loads() -> None:
    policy = load_policy(REPO_POLICY)
    assert isinstance(policy, Policy)
    assert policy.queue_depth_per_tenant >= 1
    assert policy.queue_depth_total >= policy.queue_depth_per_tenant
    assert policy.effective_slots() >= 1


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "slots = 2\nslotz = 2\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert "slotz" in message
    assert str(path) in message


def test_unknown_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, "[quotas]\nalice = 3\n"))
    assert "quotas" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('slots = "two"\n', "slots"),
        ("queue_depth_total = [1, 2]\n", "queue_depth_total"),
        ('probe_timeout_s = "soon"\n', "probe_timeout_s"),
        ("slots = 2.5\n", "slots"),
        ("threads_per_model = {a = 1}\n", "threads_per_model"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, text))
    message = str(info.value)
    assert f"{key}:" in message
    assert "valid" in message  # pydantic says what it should be ("should be a valid integer")


@pytest.mark.parametrize(
    "text",
    ["slots = true\n", "drain_timeout_s = false\n", 'queue_depth_total = "10"\n'],
    ids=["bool-for-int", "bool-for-float", "string-for-int"],
)
def test_wrong_toml_type_is_not_coerced(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_policy(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "key", "bound"),
    [
        ("queue_depth_total = -5\n", "queue_depth_total", "greater than or equal to 1"),
        ("queue_depth_per_tenant = 0\n", "queue_depth_per_tenant", "greater than or equal to 1"),
        ("slots = -1\n", "slots", "greater than or equal to 1"),
        ("slots = 257\n", "slots", "less than or equal to 256"),
        ("drain_timeout_s = -0.5\n", "drain_timeout_s", "greater than or equal to 0"),
        ("probe_timeout_s = 0\n", "probe_timeout_s", "greater than 0"),
        ("max_message_bytes = 100\n", "max_message_bytes", "greater than or equal to 1024"),
    ],
)
def test_out_of_range_value_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str, bound: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, text))
    message = str(info.value)
    assert f"{key}:" in message
    assert bound in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, "slots = 0\nbogus = 1\n"))
    assert "slots:" in str(info.value)
    assert "bogus:" in str(info.value)


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "slots = [\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert "not valid TOML" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert "does not exist" in str(info.value)
    assert str(path) in str(info.value)


def test_policy_is_frozen() -> None:
    policy = Policy()
    with pytest.raises(ValidationError):
        policy.slots = 4  # type: ignore[misc]


# --------------------------------------------------------------------------- effective values


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
def test_default_slots_and_threads_fit_the_cpu_count(monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    policy = Policy()
    assert policy.effective_slots() == cpus
    assert policy.effective_threads() >= 1
    assert policy.effective_slots() * policy.effective_threads() <= cpus


@pytest.mark.parametrize(("cpus", "slots", "threads"), [(8, 2, 4), (8, 3, 2), (8, 8, 1), (4, 1, 4), (6, 4, 1)])
def test_default_threads_divide_cores_among_slots(
    monkeypatch: pytest.MonkeyPatch, cpus: int, slots: int, threads: int
) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    policy = Policy(slots=slots)
    assert policy.effective_slots() == slots
    assert policy.effective_threads() == threads
    assert slots * threads <= cpus


def test_more_slots_than_cores_still_gets_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set(range(2)))
    assert Policy(slots=5).effective_threads() == 1


def test_explicit_threads_override_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert Policy(slots=2, threads_per_model=3).effective_threads() == 3


def test_an_empty_cpu_set_still_means_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set())
    policy = Policy()
    assert policy.effective_slots() == 1
    assert policy.effective_threads() == 1


def test_defaults_follow_the_cpu_set_this_process_may_use() -> None:
    cpus = len(os.sched_getaffinity(0))
    policy = Policy()
    assert policy.effective_slots() == cpus
    assert policy.effective_slots() * policy.effective_threads() <= cpus


def test_instances_take_auto_or_a_count_for_the_device_and_per_tenant() -> None:
    policy = config.parse_policy('instances = 3\n[tenants.a]\ninstances = "auto"\n[tenants.b]\ninstances = 1\n')
    assert policy.instances == 3
    assert policy.tenant("a").instances == "auto"
    assert policy.tenant("b").instances == 1
    assert policy.tenant("c").instances is None  # the device's setting applies
    assert Policy().instances == "auto"


@pytest.mark.parametrize("value", ['"many"', "0", "true", "1.5", "300"])
def test_bad_instances_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match="instances"):
        config.parse_policy(f"instances = {value}\n")
    with pytest.raises(ConfigError, match=r"tenants\.a\.instances"):
        config.parse_policy(f"[tenants.a]\ninstances = {value}\n")
