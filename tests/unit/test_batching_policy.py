"""The policy's batching keys: device default, tenant table, tenant model table; bad values are
refused with the key named."""

from __future__ import annotations

import pytest

from tenantd.config import ConfigError, Policy, parse_policy


def test_batching_is_off_by_default() -> None:
    assert Policy().batching("anyone", "any") == (1, 0.0)


def test_the_model_table_wins_over_the_tenant_table_over_the_device() -> None:
    policy = parse_policy(
        """
max_batch = 2
max_queue_delay_ms = 1.5
[tenants.alice]
max_batch = 4
[tenants.alice.models.cnn]
max_batch = 8
max_queue_delay_ms = 0
[tenants.bob]
max_queue_delay_ms = 3
"""
    )
    assert policy.batching("alice", "cnn") == (8, 0.0)  # 0 in the model table is kept, not skipped
    assert policy.batching("alice", "other") == (4, 1.5)
    assert policy.batching("bob", "cnn") == (2, 3.0)  # an integer delay is taken as ms
    assert policy.batching("carol", "cnn") == (2, 1.5)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_batch = 0", "max_batch"),
        ("max_batch = 65", "max_batch"),
        ('max_batch = "8"', "max_batch"),
        ("max_queue_delay_ms = -1", "max_queue_delay_ms"),
        ("max_queue_delay_ms = 60001", "max_queue_delay_ms"),
        ("[tenants.a]\nmax_batch = 0", "tenants.a.max_batch"),
        ("[tenants.a.models.m]\nmax_batch = 100", "tenants.a.models.m.max_batch"),
        ("[tenants.a.models.m]\nbatch = 4", "tenants.a.models.m.batch"),
    ],
)
def test_bad_batching_values_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_policy(text)
