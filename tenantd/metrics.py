"""Prometheus exposition of the daemon's status: the same figures as ``status``, as text a
Prometheus server (or node_exporter's textfile collector, fed by ``tenantctl metrics``) can read.

One function turns the status map into the text format; the daemon serves it through the
``metrics`` operation, so there is one source of truth for every figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + inner + "}"


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> Iterator[str]:
    yield f"# HELP tenantd_{name} {help_text}"
    yield f"# TYPE tenantd_{name} {kind}"
    for labels, value in samples:
        number = float(value)
        text = str(int(number)) if number.is_integer() else repr(number)  # exact, unlike :g
        yield f"tenantd_{name}{_labels(**labels)} {text}"


def render(status: Mapping[str, Any]) -> str:
    memory = status.get("memory", {})
    residency = status.get("residency", {})
    lines: list[str] = []
    info = {
        "device": status["device"],
        "profile": memory.get("profile", status["device"]),
        "emulated": str(bool(memory.get("emulated"))).lower(),
        "auth": status.get("auth", ""),
        "version": status["version"],
    }
    lines += _metric(
        "info", "gauge", "the daemon's device, the profile it enforces and whether it is emulated", [(info, 1)]
    )
    lines += _metric("uptime_seconds", "gauge", "seconds since start", [({}, status["uptime_s"])])
    lines += _metric("slots", "gauge", "execution slots", [({}, status["slots"])])
    lines += _metric("queued_requests", "gauge", "requests waiting to start", [({}, status["queued"])])
    lines += _metric("running_requests", "gauge", "requests running", [({}, status["running"])])
    lines += _metric(
        "tenant_queued_requests",
        "gauge",
        "requests waiting, per tenant",
        [({"tenant": t}, n) for t, n in sorted(status.get("queue_depths", {}).items())],
    )
    lines += _metric(
        "requests_total",
        "counter",
        "requests received, per operation",
        [({"op": op}, n) for op, n in sorted(status.get("requests", {}).items())],
    )
    lines += _metric(
        "errors_total",
        "counter",
        "error replies, per code",
        [({"code": code}, n) for code, n in sorted(status.get("errors", {}).items())],
    )
    lines += _metric(
        "replies_dropped_total",
        "counter",
        "replies dropped because the peer had gone or stopped reading, per reason",
        [({"reason": reason}, n) for reason, n in sorted(status.get("replies_dropped", {}).items())],
    )
    lines += _metric("models", "gauge", "models stored", [({}, status["models"])])
    lines += _metric("models_loaded", "gauge", "models loaded now", [({}, len(status.get("resident", [])))])
    for key, help_text in (
        ("capacity_bytes", "memory capacity of the device (profile)"),
        ("reserve_bytes", "memory kept free"),
        ("host_other_bytes", "host memory used besides the daemon's models (shared, cache)"),
        ("budget_bytes", "memory budget for models"),
        ("used_bytes", "memory charged in the ledger"),
        ("free_bytes", "budget minus use"),
    ):
        if key in memory:
            lines += _metric(f"memory_{key}", "gauge", help_text, [({}, memory[key])])
    lines += _metric(
        "switches_total", "counter", "runs of a model other than the slot's last", [({}, status["switches"])]
    )
    for key, kind, help_text in (
        ("reloads", "counter", "models loaded on demand (swapping)"),
        ("evictions", "counter", "models unloaded to make room (swapping)"),
    ):
        lines += _metric(f"{key}_total", kind, help_text, [({}, residency.get(key, 0))])
    mean = residency.get("mean_switch_overhead_ms")
    if mean is not None:
        lines += _metric("mean_switch_overhead_ms", "gauge", "mean extra cost of a switch so far", [({}, mean)])
    return "\n".join(lines) + "\n"


class Counters:
    """What the front doors count: requests per operation, error replies per code, replies dropped
    because the peer had gone or stopped reading."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.replies_dropped: Counter[str] = Counter()
