"""Keys are issued on the daemon's host with ``tenantd keys``; ``tenantctl``, which only speaks the
wire protocol, points there. (Reloading keys in a running daemon: tests/e2e/test_daemon_process.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tenantclient import cli as tenantctl
from tenantd import cli as tenantd


def test_tenantd_keys_issues_lists_and_withdraws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert tenantd.main(["keys", "add", "alice", "--state-dir", state, "--json"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["role"] == "tenant" and Path(issued["secret_key_file"]).name == "alice.key_secret"
    assert tenantd.main(["keys", "add", "ops", "--operator", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert out.startswith("issued an operator key for ops: give them ") and "then run 'tenantctl keys reload'" in out
    # No daemon has started on this state directory yet: its public key is not there to hand out.
    assert not (Path(state) / "keys" / "server.key").exists()
    assert "server.key (written when the daemon first starts with keys)" in out

    assert tenantd.main(["keys", "add", "alice", "--state-dir", state]) == 2  # documented in `keys --help`
    err = capsys.readouterr().err
    assert "tenant 'alice' already has a key" in err and f"tenantd keys remove alice --state-dir {state}" in err
    assert "replace=True" not in err and err.count("\n") == 1
    assert tenantd.main(["keys", "add", "ops", "--operator", "--state-dir", state]) == 2
    assert f"tenantd keys remove ops --operator --state-dir {state}" in capsys.readouterr().err

    assert tenantd.main(["keys", "list", "--state-dir", state]) == 0
    assert capsys.readouterr().out.split() == ["tenant:alice", "operator:ops"]
    assert tenantd.main(["keys", "remove", "alice", "--state-dir", state]) == 0
    assert "withdrew the tenant key of alice" in capsys.readouterr().out
    assert tenantd.main(["keys", "list", "--state-dir", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["operator:ops"]


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        (
            ["keys", "add", "bob", "--operator", "--state-dir", "/srv/s"],
            "tenantd keys add bob --operator --state-dir /srv/s",
        ),
        (["--json", "keys", "list"], "tenantd keys list --state-dir STATE_DIR --json"),
        (["keys", "remove", "bob", "--state-dir", "/srv/s"], "tenantd keys remove bob --state-dir /srv/s"),
    ],
    ids=["add", "list", "remove"],
)
def test_tenantctl_points_at_tenantd_keys(argv: list[str], instead: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert tenantctl.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and instead in captured.err


def test_every_tenantctl_command_is_one_entry_of_the_table() -> None:
    paths = [command.path for command in tenantctl.COMMANDS]
    assert len(paths) == len(set(paths))
    for command in tenantctl.COMMANDS:
        help_line, _ = command.help()
        assert help_line and "\n" not in help_line, command.path
