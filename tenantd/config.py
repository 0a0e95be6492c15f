"""Operator configuration: the policy file and the daemon's start-up settings, typed and frozen.

A policy is a TOML file (see ``policies/``). It is validated once at start-up; an unknown key or a
bad value stops the daemon with a message naming the key and what it should be, rather than being
ignored.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenantd.pipelinespec import Uplink


class ConfigError(Exception):
    """The daemon's configuration is invalid; the message says how to fix it."""


class ModelPolicy(BaseModel):
    """Per-model rules of one tenant: ``[tenants.NAME.models.MODEL]`` tables in the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_batch: Annotated[int, Field(ge=1, le=64)] | None = None
    """Requests of this model run as one batch, at most this many (else the tenant's or device's)."""

    max_queue_delay_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    """How long a request may wait for its batch to fill (else the tenant's or device's)."""


class TenantPolicy(BaseModel):
    """Per-tenant rules: ``[tenants.NAME]`` tables in the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    """Share of the device under the weighted-fair discipline (turns per round)."""

    max_models: Annotated[int | None, Field(ge=0)] = None
    """Models the tenant may have on this daemon."""

    memory_quota_bytes: Annotated[int | None, Field(ge=0)] = None
    """Total measured footprint the tenant's models may be charged."""

    max_in_flight: Annotated[int | None, Field(ge=1)] = None
    """Requests the tenant may have queued or running at once (else queue_depth_per_tenant)."""

    instances: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] | None = None
    """Instances of each of this tenant's models (else the device's ``instances``)."""

    max_batch: Annotated[int, Field(ge=1, le=64)] | None = None
    """Dynamic batching for this tenant's models (else the device's ``max_batch``)."""

    max_queue_delay_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    """How long this tenant's requests may wait for a batch to fill (else the device's)."""

    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    """Per-model batching of this tenant's models, by model name."""


DEFAULT_TENANT = TenantPolicy()


class Policy(BaseModel):
    """Operator rules for one device. Every field has a default that suits a small CPU box."""

    # strict: `slots = true` or `queue_depth_total = "10"` is a mistake to report, not to coerce.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    slots: Annotated[int | None, Field(ge=1, le=256)] = None
    """Execution slots: how many inferences may run at once. Default: one per CPU core."""

    threads_per_model: Annotated[int | None, Field(ge=1, le=256)] = None
    """Runtime threads per model. Default: cores // slots, at least 1, so slots x threads <= cores."""

    instances: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    """How many requests for one model may run at once (one interpreter, infer request or session
    caller each), at most one per slot. ``auto``: one per slot. Each instance past the first is
    created only while the memory budget has room, and charged what it was measured to cost; an
    EdgeTPU or NCS2 keeps one. A new policy that gives a loaded model more instances adds them at
    once; fewer apply from the model's next load (a restart, or a new submission)."""

    max_batch: Annotated[int, Field(ge=1, le=64)] = 1
    """Dynamic batching: up to this many queued requests of one model run as one call, stacked
    along the first dimension, where its runtime takes a batch (``status`` shows each model's
    ``max_batch``). 1 (the default, as measured on a 2-core CPU: see the README) is off."""

    max_queue_delay_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    """How long the oldest request of a batch may wait for more to arrive, when ``max_batch`` > 1
    and a slot is free; 0 batches only what is queued already. A request whose deadline would pass
    sooner does not wait."""

    queue_depth_per_tenant: Annotated[int, Field(ge=1)] = 64
    """Requests one tenant may have waiting; more get QUEUE_FULL."""

    queue_depth_total: Annotated[int, Field(ge=1)] = 1024
    """Requests waiting on the whole device; more get QUEUE_FULL."""

    max_message_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    """Largest message accepted (model uploads included); larger ones get TOO_LARGE."""

    probe_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """A model whose probe (load + one inference) takes longer is refused as INVALID_MODEL."""

    probe_spares: Annotated[int, Field(ge=0, le=8)] = 1
    """Spare probe processes kept ready per runtime that the probe host cannot fork (ONNX Runtime,
    OpenVINO), each with its runtime imported, from that runtime's first probe on; 0 probes those
    runtimes in fresh processes."""

    drain_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    """On SIGTERM/SIGINT, how long to keep answering accepted requests before giving up."""

    event_log_max_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024 * 1024
    """Size at which events.jsonl is rotated to events.jsonl.1, and audit.jsonl (the audit events
    again, which the others cannot rotate away) to audit.jsonl.1; one generation of each is kept."""

    switch_events: Literal["sampled", "all"] = "sampled"
    """``sampled``: the first 10 switches of each model pair per 10 s window are written as
    ``switch`` events, and every switch is counted in that window's ``switch.summary`` event;
    ``all``: every switch is written as an event too (for experiments that read each one)."""

    profile: str | None = None
    """Device profile whose memory model and budget admission enforces (see tenantd/devices).
    Default: the profile named like the device. ``tenantd serve --profile`` overrides it."""

    overcommit: Literal["reject", "swap"] = "reject"
    """What to do with a model that does not fit the budget: ``reject`` refuses it with
    ADMISSION_DENIED; ``swap`` admits it as swappable: models are loaded on demand and the least
    recently used idle ones unloaded to stay within the budget (needs slots = 1)."""

    capacity_bytes: Annotated[int | None, Field(gt=0)] = None
    """Override the profile's memory capacity (e.g. a Jetson module with more DRAM)."""

    reserve_bytes: Annotated[int | None, Field(ge=0)] = None
    """Memory kept free for the host and runtimes. Default: the profile's."""

    discipline: Literal["round-robin", "weighted-fair", "swap-aware"] = "round-robin"
    """Which waiting request runs next: ``round-robin`` over tenants; ``weighted-fair``, each
    tenant ``weight`` turns per round; ``swap-aware``, requests for already-loaded models first
    (fewer switches), but none passed over more than ``max_pass_over`` times."""

    max_pass_over: Annotated[int, Field(ge=0)] = 8
    """swap-aware: how many times a waiting request may be passed over before it must run."""

    default_deadline_ms: Annotated[float | None, Field(gt=0)] = None
    """Deadline for requests that carry none (how long they may wait to start)."""

    budget_watch_s: Annotated[float, Field(gt=0)] = 2.0
    """How often a shared or cache budget (which follows the host's live memory use) is re-read,
    so that the event log says when a host process shrinks it."""

    http_listen: str | None = None
    """KServe v2 HTTP/REST front door, ``HOST:PORT`` (``tenantd serve --http`` overrides it). Off if unset."""

    grpc_listen: str | None = None
    """KServe v2 gRPC front door, ``HOST:PORT`` (``tenantd serve --grpc`` overrides it). Off if unset."""

    tls_cert_file: str | None = None
    """PEM certificate (chain) for TLS on the HTTP and gRPC front doors; with ``tls_key_file``."""

    tls_key_file: str | None = None
    """PEM private key of ``tls_cert_file``. Both set: the KServe front doors speak only TLS."""

    isolation: Literal["inline", "process"] | None = None
    """Where the device's runtime runs: ``process``, a worker process the daemon supervises (a
    vendor abort, segfault or hang ends the worker, never the daemon; the worker is restarted and
    its models reloaded), or ``inline``, in the daemon. Default: ``process`` for EdgeTPU, NCS2 and
    CUDA devices; for the CPU see ``CPU_ISOLATION``."""

    worker_python: str | None = None
    """The interpreter of the device's worker (Python >= 3.6 with numpy and the vendor runtime, e.g.
    JetPack 4.6's /usr/bin/python3). Default: the daemon's own. Which runtimes the device has is
    then the worker's answer; the daemon's Python needs no vendor package."""

    worker_watchdog_s: Annotated[float, Field(gt=0)] = 60.0
    """A call to the worker (a load, an inference) taking longer is taken for a hang: the worker is
    killed and restarted, and that call answered DEVICE_UNAVAILABLE."""

    worker_memory_limit_bytes: Annotated[int | None, Field(gt=0)] = None
    """Address-space limit of the worker (RLIMIT_AS): a runaway model fails there, not the host."""

    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    """Per-tenant weight and quotas, by tenant name."""

    uplinks: dict[str, Uplink] = Field(default_factory=dict)
    """Other daemons (a cloud tier) that tenants' pipelines may send work to, by name, with the
    identity this daemon uses there. Tenants name an uplink, never an endpoint or a key."""

    def tenant(self, name: str) -> TenantPolicy:
        return self.tenants.get(name, DEFAULT_TENANT)

    def batching(self, tenant: str, model: str) -> tuple[int, float]:
        """(max_batch, max_queue_delay_ms) for ``tenant``'s ``model``: its model table, else its
        tenant table, else the device's."""
        rules = self.tenant(tenant)
        own = rules.models.get(model, ModelPolicy())
        batch = own.max_batch or rules.max_batch or self.max_batch
        delay = own.max_queue_delay_ms
        if delay is None:
            delay = self.max_queue_delay_ms if rules.max_queue_delay_ms is None else rules.max_queue_delay_ms
        return batch, delay

    def effective_slots(self) -> int:
        if self.slots is None and self.overcommit == "swap":
            return 1  # a swapping device runs one model at a time
        return self.slots or usable_cores()

    def effective_isolation(self, device_kind: str) -> str:
        if self.isolation is not None:
            return self.isolation
        return CPU_ISOLATION if device_kind == "cpu" else "process"

    def effective_threads(self) -> int:
        if self.threads_per_model:
            return self.threads_per_model
        return max(1, usable_cores() // self.effective_slots())


# The CPU's default isolation, chosen by measurement (README, "Device workers"): on a quiet 2-core
# machine the worker cost 10-20 % of throughput with two requests in flight against inline.
CPU_ISOLATION = "inline"


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    return max(1, len(os.sched_getaffinity(0)))


# Fields a running daemon cannot change: they shape its threads, its device and its residency.
class PolicyInForce:
    """The policy the daemon runs under now, replaced whole by ``policy_set``. Everything that
    reads the policy holds this and calls it, so a new policy reaches every part at once."""

    def __init__(self, policy: Policy, source: str = "file") -> None:
        self.current = policy
        # "file": the policy file's (or the defaults); "runtime": set by policy_set (tenantd.policysource)
        self.source = source

    def __call__(self) -> Policy:
        return self.current


RESTART_ONLY = (
    "slots",
    "threads_per_model",
    "profile",
    "overcommit",
    "max_message_bytes",
    "http_listen",
    "grpc_listen",
    "tls_cert_file",
    "tls_key_file",
    "isolation",
    "worker_python",
    "worker_memory_limit_bytes",
)


def load_policy(path: Path | None) -> Policy:
    """Read and validate a policy TOML file; no file means every default."""
    if path is None:
        return Policy()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Validate policy TOML text; errors name the field and what it should be."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib on arrays or tables nested thousands deep
        raise ConfigError(f"{source} nests arrays or tables too deeply to be a policy") from None
    try:
        return Policy(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source} is invalid: {problems}") from exc
