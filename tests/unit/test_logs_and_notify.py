"""The daemon's stderr log as JSON lines, its flags on either side of the subcommand, and
sd_notify datagrams received on a real AF_UNIX socket (a path, and the abstract namespace)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantd import logs, sdnotify
from tenantd.cli import build_parser, policy_examples


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_a_line_with_the_stable_fields(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("DEBUG", "json", out)
    log = logging.getLogger("tenantd")
    log.info("admitted %s\nfor %s", "m", "alice", extra={"tenant": "alice", "model": "m", "event": "x"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # a newline in a message stays inside its line
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "msg", "tenant", "model", "event"}
    assert first["msg"] == "admitted m\nfor alice" and first["level"] == "INFO" and first["logger"] == "tenantd"
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_text_logs_and_levels(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("WARNING", "text", out)
    logging.getLogger("tenantd").info("hidden")
    logging.getLogger("tenantd").warning("shown")
    assert out.getvalue().count("\n") == 1 and "WARNING tenantd: shown" in out.getvalue()
    with pytest.raises(ValueError, match="log format"):
        logs.configure("INFO", "xml")


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "--log-format", "json", "serve"],
        ["serve", "--log-level", "DEBUG", "--log-format", "json"],
        ["--log-level", "WARNING", "serve", "--log-level", "debug", "--log-format", "json"],  # the later wins
    ],
)
def test_log_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == ("DEBUG", "json")


def test_log_flags_default_when_given_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENANTD_LOG_FORMAT", raising=False)
    monkeypatch.delenv("TENANTD_LOG_LEVEL", raising=False)
    args = build_parser().parse_args(["keys", "list", "--state-dir", "x"])
    assert (args.log_level, args.log_format) == ("INFO", "text")


def test_serve_help_names_the_installed_examples(capsys: pytest.CaptureFixture[str]) -> None:
    examples = policy_examples()
    assert examples is not None and (examples / "edgetpu.toml").is_file()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    assert str(examples) in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5)
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_notify_sends_to_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready("serving")
        assert receive(sock) == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "serving"}
        assert sdnotify.reloading()
        reloading = receive(sock)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert sdnotify.stopping()
        assert receive(sock) == {"STOPPING": "1"}


def test_notify_sends_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tenantd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.stopping()
        assert receive(sock) == {"STOPPING": "1"}


def test_notify_without_a_manager_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not sdnotify.ready()  # logged, never raised: the daemon serves on
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/name")
    assert not sdnotify.ready()
