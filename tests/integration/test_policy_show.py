"""`tenantctl policy show` prints a policy file that `tenantctl policy set` accepts, and that means
the same policy (it printed `slots = None` and `overcommit = 'reject'`, which no TOML parser reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantclient.cli import main
from tenantd.config import Policy, parse_policy
from tenantd.pipelinespec import Uplink
from tests.support.daemon import daemon_in_thread


def test_policy_show_prints_a_policy_file_that_policy_set_takes_back(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = Policy(
        tenants={
            "alice": {"weight": 2, "max_models": 3, "models": {"c.nn": {"max_batch": 8, "max_queue_delay_ms": 2.0}}},
            "b.o-b": {"memory_quota_bytes": 10_000_000, "max_batch": 4},
        },
        max_queue_delay_ms=1.5,
        uplinks={"cloud": Uplink(endpoint="tcp://127.0.0.1:5555", tenant="edge", tenants=["alice"])},
        default_deadline_ms=250.0,
    )
    with daemon_in_thread(tmp_path / "state", endpoint, policy):
        assert main(["--endpoint", endpoint, "policy", "show"]) == 0
        shown = capsys.readouterr().out
        assert parse_policy(shown) == policy  # the same policy, field for field
        assert "# slots: unset" in shown and "# restart-only: slots" in shown
        (tmp_path / "shown.toml").write_text(shown)
        assert main(["--endpoint", endpoint, "policy", "set", str(tmp_path / "shown.toml")]) == 0
        assert "changed: nothing" in capsys.readouterr().out
