"""Ways to run a daemon under test: in a thread of the test process (integration tests: real
sockets, real runtimes, easy to inspect) or as a subprocess through its CLI (end to end). Both are
waited on by their ready signal, never by a delay."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tenantd.config import Policy
from tenantd.daemon import Daemon, ServeConfig

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
FAULTY = "faulty=tests.support.faulty_runtime:FaultyRuntime"


def daemon_env(extra_runtimes: bool = True) -> dict[str, str]:
    """Environment for daemons and probes: the repo on the path, the faulty runtime registered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    if extra_runtimes:
        env["TENANTD_RUNTIMES"] = FAULTY
    return env


@contextmanager
def daemon_in_thread(
    state_dir: Path,
    endpoint: str,
    policy: Policy | None = None,
    auth: str | None = None,
    metrics: str | None = None,
    timing: str = "cpu",
    device: str = "cpu",
) -> Iterator[Daemon]:
    """A real Daemon on a real socket, its event loop on a background thread."""
    daemon_box: list[Daemon] = []
    ready = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        daemon = Daemon(
            ServeConfig(device, endpoint, state_dir, policy or Policy(), auth=auth, metrics=metrics, timing=timing)
        )
        daemon_box.append(daemon)
        await daemon.serve(lambda _endpoint: ready.set())

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="daemon", daemon=True)
    thread.start()
    if not ready.wait(READY_TIMEOUT_S) or failure:
        raise RuntimeError(f"daemon did not start: {failure}")
    daemon = daemon_box[0]
    try:
        yield daemon
    finally:
        loop.call_soon_threadsafe(daemon.stop)
        thread.join(READY_TIMEOUT_S)
        assert not thread.is_alive(), "daemon thread did not stop"
        if failure:
            raise failure[0]


class DaemonDidNotStart(RuntimeError):
    """``tenantd serve`` exited (or was killed) before its ready line: its status and stderr."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(f"{message}; exit status {returncode}; stderr: {stderr}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[str]
    endpoint: str
    ready_line: str
    state_dir: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    log: Path | None = None  # where its stderr goes, when not to a pipe

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.log is not None:
            return self.log.read_text(errors="replace")
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def start_daemon_process(
    state_dir: Path,
    endpoint: str,
    policy: Path | None = None,
    extra: list[str] | None = None,
    cwd: Path = REPO,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    pass_paths: bool = True,
) -> DaemonProcess:
    """Start ``tenantd serve`` as a subprocess, in working directory ``cwd``, and return once it
    printed its ready line. Its stderr goes to a pipe read when it has stopped, or to the file
    ``log``: a daemon that may log more than a pipe holds (64 KiB) would block writing to one.
    ``env`` adds to its environment; without ``pass_paths`` it gets no --endpoint and --state-dir
    (it finds its default ones, which ``env`` may set: ``state_dir`` is then where the test expects it)."""
    cmd = [sys.executable, "-m", "tenantd", "serve"]
    if pass_paths:
        cmd += ["--endpoint", endpoint, "--state-dir", str(state_dir)]
    if policy is not None:
        cmd += ["--policy", str(policy)]
    cmd += extra or []
    log_file = None if log is None else log.open("w")
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if log_file is None else log_file,
            text=True,
            env={**daemon_env(), **(env or {})},
            cwd=cwd,
        )
    finally:
        if log_file is not None:
            log_file.close()  # the child holds its own copy
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=READY_TIMEOUT_S)
    except queue.Empty:
        line = "no ready line in time"
    if line is None or not line.startswith("tenantd ready"):
        if line is not None:  # still running, not ready: stop it (at EOF it is exiting with its own status)
            proc.kill()
        returncode = proc.wait(READY_TIMEOUT_S)
        err = proc.stderr.read() if proc.stderr else log.read_text() if log else ""
        raise DaemonDidNotStart(f"daemon failed to start: {line!r}", returncode, err)
    bound = line.split("endpoint=", 1)[1].split()[0]
    return DaemonProcess(proc=proc, endpoint=bound, ready_line=line, state_dir=state_dir, lines=lines, log=log)
