"""What the issue-6 experiments share: starting ``tenantd serve`` as a user would (a subprocess
through its CLI, waited on by its ready line, stopped with SIGTERM), the run's context for the
sidecar JSON (machine, versions, command line), the out-directory check that makes a run either
resumable or a clear error, and a few formatting helpers. It knows nothing about any one
experiment's measurements."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import tenantd

REPO = Path(__file__).resolve().parents[1]
OUT_ROOT = REPO / "experiments" / "out"
READY_PREFIX = "tenantd ready"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0  # the daemon's default drain timeout is 30 s


class ExperimentError(Exception):
    """The experiment cannot go on or cannot produce trustworthy figures; the message says why."""


# ---------------------------------------------------------------------------------------- daemon


@contextmanager
def daemon_process(
    workdir: Path,
    policy_toml: str | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    launcher: Path | None = None,
) -> Iterator[str]:
    """Start ``tenantd serve`` on an ipc socket under ``workdir``; yield its endpoint once it has
    printed its ready line; SIGTERM it and wait on the way out. Its log is ``workdir/tenantd.log``.
    ``env`` replaces the environment (e.g. a PYTHONPATH naming another checkout's sources);
    ``launcher``, a script run instead of ``-m tenantd`` with the same arguments."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, *([str(launcher)] if launcher else ["-m", "tenantd"]), "serve",
        "--endpoint", f"ipc://{workdir}/tenantd.sock",
        "--state-dir", str(workdir / "state"),
    ]  # fmt: skip
    if policy_toml is not None:
        policy = workdir / "policy.toml"
        policy.write_text(policy_toml)
        command += ["--policy", str(policy)]
    command += list(extra)
    log_path = workdir / "tenantd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=env
        )
    try:
        try:
            endpoint = _wait_ready(proc)
        except ExperimentError as exc:
            raise ExperimentError(f"{exc}\n--- tenantd log (last lines) ---\n{tail(log_path)}") from None
        yield endpoint
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes]) -> str:
    """Read the daemon's stdout until its ready line; return the endpoint it names."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + READY_TIMEOUT_S
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExperimentError(f"tenantd printed no ready line within {READY_TIMEOUT_S:g} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ExperimentError(f"tenantd exited (status {proc.wait()}) before it was ready")
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith(READY_PREFIX):
        raise ExperimentError(f"tenantd's first stdout line is not its ready line: {line!r}")
    words = dict(part.split("=", 1) for part in line.split() if "=" in part)
    return words["endpoint"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"warning: tenantd ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killed", file=sys.stderr)
    if proc.returncode not in (0, None):
        print(f"warning: tenantd exited with status {proc.returncode}", file=sys.stderr)
    if proc.stdout is not None:
        proc.stdout.close()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read: {exc})"


def toml_text(values: Mapping[str, Any]) -> str:
    """A flat policy (no tables) as TOML; enough for the policies the experiments write."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            raise TypeError(f"policy key {key!r}: cannot write {type(value).__name__} as flat TOML")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- context


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def versions(extra: Sequence[str] = ()) -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    import zmq

    found = {
        "python": platform.python_version(),
        "tenantd": tenantd.__version__,
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }
    for name in ("ai-edge-litert", "openvino", "onnxruntime", *extra):
        found[name] = dist(name)
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------- out dir


def check_out_dir(out: Path, experiment: str, parameters: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """Make ``out`` ready for a run of ``experiment`` with ``parameters``.

    Returns the previous run's ``run.json`` when ``resume`` is set and the parameters match (so
    finished parts can be kept); raises :class:`ExperimentError` when ``resume`` is set but the
    directory holds another experiment or other parameters (mixing them would give a report that
    describes neither). Without ``resume`` the directory is reused and its run files overwritten."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "run.json"
    if not resume or not manifest.exists():
        if resume:
            print(f"note: --resume, but {manifest} does not exist: starting afresh", file=sys.stderr)
        return {}
    try:
        previous: dict[str, Any] = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExperimentError(f"cannot resume: {manifest} is unreadable ({exc}); delete it or drop --resume") from None
    if previous.get("experiment") != experiment:
        raise ExperimentError(
            f"cannot resume: {out} holds a {previous.get('experiment')!r} run, not {experiment!r}; use another --out"
        )
    old = previous.get("parameters", {})
    parameters = json.loads(json.dumps(parameters, default=str))  # as stored: tuples become lists
    differ = sorted(k for k in set(old) | set(parameters) if k not in ("resume",) and old.get(k) != parameters.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {parameters.get(k)!r}" for k in differ)
        raise ExperimentError(
            f"cannot resume: {out} holds a run with other parameters ({shown}); "
            "rerun with the same command line, drop --resume to start afresh, or use another --out"
        )
    return previous


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a sidecar."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, q)) if array.size else None


def fmt(value: Any, spec: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return spec.format(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
