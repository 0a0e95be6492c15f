"""Prometheus metrics: one ``prometheus_client`` registry per daemon, served over HTTP at
``/metrics`` (``tenantd serve --metrics HOST:PORT``) and through the ``metrics`` operation.

The registry is the daemon's own (never the process-global one, so one process may run several
daemons, as the tests do). It holds three kinds of figures. Counted as they happen, in places no
front door owns: each inference request's outcome per tenant, model and code, and its queue,
compute, total and switch times as histograms (the inference core); requests per operation (the
operation dispatch, the inference core and pipelines); error replies per code and replies dropped
(where a front door sends them). Computed at scrape time from the status map (:class:`StatusCollector`):
the admission, residency and scheduler gauges that ``status`` reports. And the process's own
(``ProcessCollector``, ``PlatformCollector``). :data:`FAMILIES` names and explains every metric
once: the metrics are made from it and the README's table is checked against it.

Label cardinality is bounded by what the operator allows: a ``tenant`` label is a tenant that owns
a model or has a policy table, a ``model`` label a model in the catalog; any other name a request
carries is counted under ``""``. A removed model's (and a departed tenant's) label sets are
dropped before the next scrape (:meth:`Metrics.prune`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantd.catalog import Catalog
from tenantd.config import ConfigError, PolicyInForce

log = logging.getLogger("tenantd")

# Edge inference takes milliseconds; a switch that reloads a large model, or a long queue, seconds.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # requests per call (dynamic batching; MAX_BATCH is 64)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_METRICS_HOST = "127.0.0.1"
OK = "OK"  # the code of a request that was answered with outputs


@dataclass(frozen=True)
class Family:
    """One metric as a scrape shows it: the sample name (counters with ``_total``), its type, its
    labels and what it means."""

    name: str
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


TIMED = ("tenant", "model")
# Counted as they happen.
COUNTED: tuple[Family, ...] = (
    Family(
        "tenantd_inference_requests_total",
        "counter",
        ("tenant", "model", "code"),
        "inference requests by outcome: code OK (answered with outputs) or the error code it was refused with",
    ),
    Family("tenantd_inference_queue_seconds", "histogram", TIMED, "time an answered request waited for a slot"),
    Family("tenantd_inference_compute_seconds", "histogram", TIMED, "time the runtime took for an answered request"),
    Family(
        "tenantd_inference_total_seconds",
        "histogram",
        TIMED,
        "time from queueing to the answer, for an answered request (queue + reload + compute)",
    ),
    Family(
        "tenantd_inference_batch_size",
        "histogram",
        TIMED,
        "requests in the call that answered a request (1 unbatched; above 1 with dynamic batching)",
    ),
    Family(
        "tenantd_switch_overhead_seconds",
        "histogram",
        TIMED,
        "extra cost of a switch to this model (its reload, if any, plus its first run minus its warm median)",
    ),
    Family("tenantd_requests_total", "counter", ("op",), "requests dispatched, per operation"),
    Family("tenantd_errors_total", "counter", ("code",), "error replies sent by the front doors, per code"),
    Family(
        "tenantd_replies_dropped_total",
        "counter",
        ("reason",),
        "replies dropped because the peer had gone or stopped reading, per reason",
    ),
)
# Computed at scrape time from the status (StatusCollector).
FROM_STATUS: tuple[Family, ...] = (
    Family(
        "tenantd_info",
        "gauge",
        ("device", "profile", "emulated", "auth", "version"),
        "the daemon's device, the profile it enforces and whether it is emulated (always 1)",
    ),
    Family("tenantd_uptime_seconds", "gauge", (), "seconds since start"),
    Family("tenantd_slots", "gauge", (), "execution slots"),
    Family("tenantd_queued_requests", "gauge", (), "requests waiting to start"),
    Family("tenantd_running_requests", "gauge", (), "requests running"),
    Family("tenantd_tenant_queued_requests", "gauge", ("tenant",), "requests waiting, per tenant"),
    Family("tenantd_models", "gauge", (), "models stored"),
    Family("tenantd_models_loaded", "gauge", (), "models loaded now"),
    Family("tenantd_memory_capacity_bytes", "gauge", (), "memory capacity of the device (profile)"),
    Family("tenantd_memory_reserve_bytes", "gauge", (), "memory kept free"),
    Family(
        "tenantd_memory_host_other_bytes",
        "gauge",
        (),
        "host memory used besides the daemon's models (shared and cache memory models only)",
    ),
    Family("tenantd_memory_budget_bytes", "gauge", (), "memory budget for models"),
    Family("tenantd_memory_used_bytes", "gauge", (), "memory charged in the admission ledger"),
    Family("tenantd_memory_free_bytes", "gauge", (), "budget minus use"),
    Family("tenantd_switches_total", "counter", (), "runs of a model other than the slot's last"),
    Family("tenantd_reloads_total", "counter", (), "models loaded on demand (swapping)"),
    Family("tenantd_evictions_total", "counter", (), "models unloaded to make room (swapping)"),
    Family(
        "tenantd_mean_switch_overhead_ms",
        "gauge",
        (),
        "mean extra cost of a switch so far, in ms (absent until one is measured)",
    ),
)
FAMILIES = COUNTED + FROM_STATUS
# prometheus_client's own collectors, registered in the daemon's registry (documented, not made here).
PROCESS_FAMILIES: tuple[Family, ...] = (
    Family("process_virtual_memory_bytes", "gauge", (), "virtual memory size of the daemon process"),
    Family("process_resident_memory_bytes", "gauge", (), "resident memory size of the daemon process"),
    Family("process_start_time_seconds", "gauge", (), "start time of the process, Unix seconds"),
    Family("process_cpu_seconds_total", "counter", (), "user and system CPU time spent"),
    Family("process_open_fds", "gauge", (), "open file descriptors"),
    Family("process_max_fds", "gauge", (), "maximum open file descriptors"),
    Family(
        "python_info",
        "gauge",
        ("implementation", "major", "minor", "patchlevel", "version"),
        "the Python that runs the daemon (always 1)",
    ),
)
_BY_NAME = {f.name: f for f in FAMILIES}
_MEMORY_KEYS = ("capacity_bytes", "reserve_bytes", "host_other_bytes", "budget_bytes", "used_bytes", "free_bytes")


def _family(name: str) -> Family:
    return _BY_NAME[name]


def _bare(name: str) -> str:
    """The name prometheus_client wants for a counter: without ``_total`` (it adds it)."""
    return name.removesuffix("_total")


class StatusCollector(Collector):
    """The status map's figures as metrics, computed at each scrape (on the event loop)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        # The names only, so that a scrape may select them with name[]= like any other.
        for family in FROM_STATUS:
            yield self._empty(family, ())

    @staticmethod
    def _empty(family: Family, labels: tuple[str, ...]) -> CounterMetricFamily | GaugeMetricFamily:
        if family.kind == "counter":
            return CounterMetricFamily(_bare(family.name), family.help, labels=labels)
        return GaugeMetricFamily(family.name, family.help, labels=labels)

    def _one(self, name: str, value: float, **labels: str) -> Metric:
        family = _family(name)
        metric = self._empty(family, tuple(labels))
        metric.add_metric(list(labels.values()), value)
        return metric

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        memory = status.get("memory", {})
        residency = status.get("residency", {})
        yield self._one(
            "tenantd_info",
            1,
            device=str(status["device"]),
            profile=str(memory.get("profile", status["device"])),
            emulated=str(bool(memory.get("emulated"))).lower(),
            auth=str(status.get("auth", "")),
            version=str(status["version"]),
        )
        yield self._one("tenantd_uptime_seconds", status["uptime_s"])
        yield self._one("tenantd_slots", status["slots"])
        yield self._one("tenantd_queued_requests", status["queued"])
        yield self._one("tenantd_running_requests", status["running"])
        per_tenant = GaugeMetricFamily(
            "tenantd_tenant_queued_requests", _family("tenantd_tenant_queued_requests").help, labels=["tenant"]
        )
        for tenant, depth in sorted(status.get("queue_depths", {}).items()):
            per_tenant.add_metric([tenant], depth)
        yield per_tenant
        yield self._one("tenantd_models", status["models"])
        yield self._one("tenantd_models_loaded", len(status.get("resident", [])))
        for key in _MEMORY_KEYS:
            if memory.get(key) is not None:
                yield self._one(f"tenantd_memory_{key}", memory[key])
        yield self._one("tenantd_switches_total", status["switches"])
        yield self._one("tenantd_reloads_total", residency.get("reloads", 0))
        yield self._one("tenantd_evictions_total", residency.get("evictions", 0))
        mean = residency.get("mean_switch_overhead_ms")
        if mean is not None:
            yield self._one("tenantd_mean_switch_overhead_ms", mean)


class Metrics:
    """The daemon's registry and the calls that count into it. Every call is made on the event loop."""

    def __init__(self, catalog: Catalog, policy: PolicyInForce) -> None:
        self._catalog = catalog
        self._policy = policy
        self.registry = CollectorRegistry()
        self._status: Callable[[], Mapping[str, Any]] | None = None  # set by the daemon (operations' status)

        def counter(name: str) -> Counter:
            family = _family(name)
            return Counter(_bare(family.name), family.help, family.labels, registry=self.registry)

        def histogram(name: str) -> Histogram:
            family = _family(name)
            return Histogram(family.name, family.help, family.labels, registry=self.registry, buckets=BUCKETS)

        self.inference = counter("tenantd_inference_requests_total")
        self.queue_time = histogram("tenantd_inference_queue_seconds")
        self.compute_time = histogram("tenantd_inference_compute_seconds")
        self.total_time = histogram("tenantd_inference_total_seconds")
        self.switch_time = histogram("tenantd_switch_overhead_seconds")
        batch = _family("tenantd_inference_batch_size")
        self.batch_size = Histogram(batch.name, batch.help, batch.labels, registry=self.registry, buckets=BATCH_BUCKETS)
        self.requests = counter("tenantd_requests_total")
        self.errors = counter("tenantd_errors_total")
        self.replies_dropped = counter("tenantd_replies_dropped_total")
        self.registry.register(StatusCollector(self._status_map))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # Label sets made so far, so that a removed model's can be dropped: (tenant, model) -> codes.
        self._outcomes: dict[tuple[str, str], set[str]] = {}
        self._timed: set[tuple[str, str]] = set()
        self._switched: set[tuple[str, str]] = set()
        # Each answered request updates six labelled series; finding a series by its labels costs
        # several microseconds in prometheus_client, so those of each (tenant, model) are kept
        # here (emptied whenever label sets are pruned, so no removed series is ever updated).
        self._served_series: dict[tuple[str, str], tuple[Any, Any, Any, Any, Any]] = {}
        self._requests_series: dict[str, Any] = {}

    def set_status(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def _status_map(self) -> Mapping[str, Any]:
        assert self._status is not None, "the daemon sets the status source before serving"
        return self._status()

    # ------------------------------------------------------------------ counting

    def request(self, op: str) -> None:
        """A request of operation ``op`` was dispatched (it may still be refused)."""
        series = self._requests_series.get(op)
        if series is None:
            series = self._requests_series[op] = self.requests.labels(op)
        series.inc()

    def error_reply(self, code: str) -> None:
        """A front door sent an error reply with ``code``."""
        self.errors.labels(code).inc()

    def reply_dropped(self, reason: str) -> None:
        self.replies_dropped.labels(reason).inc()

    def refused(self, tenant: str | None, model: Any, code: str) -> None:
        """An inference request was refused or dropped: counted under bounded labels."""
        labels = self._bounded(tenant, model)
        self.inference.labels(*labels, code).inc()
        self._outcomes.setdefault(labels, set()).add(code)

    def served(
        self,
        tenant: str,
        model: str,
        queue_s: float,
        compute_s: float,
        total_s: float,
        switch_s: float | None,
        batch: int = 1,
    ) -> None:
        """An inference request was answered with outputs, after these times."""
        labels = (tenant, model)  # from the catalog's record: bounded already
        series = self._served_series.get(labels)
        if series is None:
            self._outcomes.setdefault(labels, set()).add(OK)
            self._timed.add(labels)
            series = self._served_series[labels] = (
                self.inference.labels(tenant, model, OK),
                self.queue_time.labels(*labels),
                self.compute_time.labels(*labels),
                self.total_time.labels(*labels),
                self.batch_size.labels(*labels),
            )
        served, queue, compute, total, batch_size = series
        served.inc()
        queue.observe(queue_s)
        compute.observe(compute_s)
        total.observe(total_s)
        batch_size.observe(batch)
        if switch_s is not None:
            self.switch_time.labels(*labels).observe(switch_s)
            self._switched.add(labels)

    def counts(self) -> dict[str, dict[str, int]]:
        """What ``status`` reports: requests per operation, error replies per code, dropped replies."""
        return {
            "requests": _by_label(self.requests, "op"),
            "errors": _by_label(self.errors, "code"),
            "replies_dropped": _by_label(self.replies_dropped, "reason"),
        }

    def _known_tenant(self, tenant: str) -> bool:
        return tenant in self._policy().tenants or any(r.owner == tenant for r in self._catalog.models.values())

    def _bounded(self, tenant: str | None, model: Any) -> tuple[str, str]:
        """``tenant`` and ``model`` as labels: ``""`` for a name the daemon does not know, so that
        requests naming made-up models or tenants cannot grow the label sets without bound."""
        model_label = model if isinstance(model, str) and model in self._catalog.models else ""
        tenant_label = tenant if tenant is not None and self._known_tenant(tenant) else ""
        return tenant_label, model_label

    # ------------------------------------------------------------------ scraping

    def prune(self) -> None:
        """Drop the label sets of models no longer in the catalog and of tenants no longer known."""

        models = self._catalog.models
        tenants = {r.owner for r in models.values()} | set(self._policy().tenants)

        self._served_series.clear()

        def gone(labels: tuple[str, str]) -> bool:
            tenant, model = labels
            return (model != "" and model not in models) or (tenant != "" and tenant not in tenants)

        for labels in [k for k in self._outcomes if gone(k)]:
            for code in self._outcomes.pop(labels):
                self.inference.remove(*labels, code)
        for labels in [k for k in self._timed if gone(k)]:
            self._timed.discard(labels)
            for histogram in (self.queue_time, self.compute_time, self.total_time, self.batch_size):
                histogram.remove(*labels)
        for labels in [k for k in self._switched if gone(k)]:
            self._switched.discard(labels)
            self.switch_time.remove(*labels)

    def text(self) -> str:
        """The classic text exposition of the whole registry (the ``metrics`` operation)."""
        self.prune()
        return generate_latest(self.registry).decode()


def markdown_table() -> str:
    """The README's table of every metric (tests/unit/test_metrics_doc.py checks it is there)."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for family in (*FAMILIES, *PROCESS_FAMILIES):
        labels = ", ".join(f"`{label}`" for label in family.labels) or "none"
        rows.append(f"| `{family.name}` | {family.kind} | {labels} | {family.help} |")
    return "\n".join(rows) + "\n"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (loopback) -> (host, port); ConfigError if not."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_METRICS_HOST, value
    host = host.strip("[]") or DEFAULT_METRICS_HOST
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics {value!r} is not HOST:PORT (a port 0-65535; 0 picks a free one)")
    return host, port


class MetricsServer:
    """``GET /metrics`` over HTTP on the daemon's event loop (aiohttp), in the format the scraper
    asks for: OpenMetrics for ``Accept: application/openmetrics-text``, the classic text otherwise."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.address = ""  # "http://HOST:PORT/metrics" once bound

    async def start(self) -> None:
        """Bind; a bad or taken address raises ConfigError (before any model is loaded)."""
        handler = make_aiohttp_handler(self._metrics.registry)

        async def scrape(request: web.Request) -> web.StreamResponse:
            self._metrics.prune()
            return await handler(request)

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror or exc}") from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
        if not _loopback(self._host):
            log.warning(
                "metrics are served without authentication on %s, reachable from other hosts: they name "
                "every tenant and model on this daemon",
                self.address,
            )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _by_label(counter: Counter, label: str) -> dict[str, int]:
    """A one-label counter's values by that label."""
    return {
        sample.labels[label]: int(sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
