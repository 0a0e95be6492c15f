"""A discrete-event simulation of one device twin: requests arrive, wait, and hold the device for
the twin's service time (plus its switch time when the model changes), one at a time first come
first served (EdgeTPU, NCS2, Raspberry Pi) or sharing the device equally (processor sharing: a
Jetson's GPU time-sliced between processes). Time is simulated, so hours of load run in seconds.

Used by ``experiments.plan`` (capacity planning), ``experiments.validate_twins`` (the published
concurrent experiments, each with its own set-up) and the daemon-agreement test.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tenantd.devices.twin import PS, DeviceTwin, TwinModel


@dataclass(frozen=True)
class Request:
    model: str
    arrival_s: float


@dataclass(frozen=True)
class Served:
    model: str
    arrival_s: float
    start_s: float
    end_s: float
    switch_ms: float
    service_ms: float

    @property
    def response_ms(self) -> float:
        return (self.end_s - self.arrival_s) * 1e3


def poisson_arrivals(rates: Mapping[str, float], horizon_s: float, seed: int) -> list[Request]:
    """Independent Poisson streams, one per model (``rates`` in requests per second), merged."""
    rng = random.Random(seed)
    out: list[Request] = []
    for model, rate in sorted(rates.items()):
        t = 0.0
        while rate > 0:
            t += rng.expovariate(rate)
            if t > horizon_s:
                break
            out.append(Request(model, t))
    out.sort(key=lambda r: r.arrival_s)
    return out


def simulate_fcfs(
    requests: Sequence[Request],
    service_ms: Callable[[str], float],
    switch_ms: Callable[[str, str | None], float],
    previous: str | None = None,
) -> list[Served]:
    """One server, first come first served (ties in the given order); a request holds it for its
    service plus the switch from the model that ran before it."""
    free, out = 0.0, []
    for r in requests:
        start = max(free, r.arrival_s)
        switch, service = switch_ms(r.model, previous), service_ms(r.model)
        free = start + (service + switch) / 1e3
        out.append(Served(r.model, r.arrival_s, start, free, switch, service))
        previous = r.model
    return out


def simulate_ps(requests: Sequence[Request], service_ms: Callable[[str], float]) -> list[Served]:
    """Egalitarian processor sharing: the n requests present each progress at 1/n speed."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    active: list[tuple[Request, float]] = []  # (request, remaining work in s)
    out: list[Served] = []
    now, i = 0.0, 0
    while i < len(pending) or active:
        next_arrival = pending[i].arrival_s if i < len(pending) else float("inf")
        if active:
            n = len(active)
            least = min(rem for _, rem in active)
            finish_at = now + least * n
        else:
            finish_at = float("inf")
        if next_arrival <= finish_at:
            if active:
                done = (next_arrival - now) / len(active)
                active = [(r, rem - done) for r, rem in active]
            now = next_arrival
            active.append((pending[i], service_ms(pending[i].model) / 1e3))
            i += 1
        else:
            done = least
            now = finish_at
            still = []
            for r, rem in active:
                rem -= done
                if rem <= 1e-12:
                    out.append(Served(r.model, r.arrival_s, r.arrival_s, now, 0.0, service_ms(r.model)))
                else:
                    still.append((r, rem))
            active = still
    return out


def simulate(
    twin: DeviceTwin, requests: Sequence[Request], known: Mapping[str, TwinModel] | None = None
) -> list[Served]:
    """The twin's own discipline, service and switch times (``known``: models by name that the twin
    had to estimate from their files, which it cannot find by name alone)."""
    models = {m: (known or {}).get(m) or twin.model(m) for m in {r.model for r in requests}}
    if twin.discipline == PS:
        return simulate_ps(requests, lambda m: twin.service(models[m]).ms)
    return simulate_fcfs(
        requests, lambda m: twin.service(models[m]).ms, lambda m, prev: twin.switch_ms(models[m], prev)
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Summary:
    requests: int
    throughput_per_s: float
    utilisation: float  # device time asked for (service + switch) / horizon
    switch_share: float  # switch time / busy device time
    switches: int
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)


def summarise(served: Sequence[Served], horizon_s: float, warmup_s: float = 0.0) -> Summary:
    """Statistics over requests that arrived after ``warmup_s``; throughput over the horizon."""
    kept = [s for s in served if s.arrival_s >= warmup_s]
    span = max(horizon_s - warmup_s, 1e-9)
    busy = sum(s.service_ms + s.switch_ms for s in kept) / 1e3
    switch = sum(s.switch_ms for s in kept) / 1e3
    by: dict[str, list[float]] = {}
    for s in kept:
        by.setdefault(s.model, []).append(s.response_ms)

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "n": float(len(values)),
            "mean_ms": statistics.fmean(values),
            "p50_ms": percentile(values, 0.50),
            "p95_ms": percentile(values, 0.95),
            "p99_ms": percentile(values, 0.99),
        }

    return Summary(
        requests=len(kept),
        throughput_per_s=len(kept) / span,
        utilisation=busy / span,
        switch_share=switch / busy if busy else 0.0,
        switches=sum(1 for s in kept if s.switch_ms > 0),
        per_model={m: stats(v) for m, v in sorted(by.items())},
        overall=stats([s.response_ms for s in kept]) if kept else {},
    )
