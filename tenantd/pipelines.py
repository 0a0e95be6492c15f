"""Pipelines across tiers: a tenant's model on this (edge) daemon chained to a model on another
(cloud) daemon, run as one ``infer``.

Two shapes, after the paper's split-processing question:

* ``split``: the edge runs the head of a network (its first k layers), ships the intermediate
  tensor to the cloud, which runs the tail; the tenant gets the tail's outputs.
* ``cascade``: the edge runs a compact model; if its top confidence is below the tenant's
  threshold the *input* goes to the full model in the cloud, else the edge answer stands.

The daemon talks to the cloud like any tenant would, through the client library, as the identity
an operator gave it in the policy's ``[uplinks.NAME]`` table (a CurveZMQ key on ``tcp://``, or a
tenant name on ``ipc://``/loopback). Tenants choose an uplink by name but never its endpoint or
key, so a tenant cannot make the daemon connect anywhere the operator did not allow. Every cloud
call has a timeout: a cloud that is down or slow is an ``UPSTREAM_ERROR`` (or, for a cascade that
asked for it, the edge answer flagged ``cloud_failed``), never a hang.

This module owns the pipeline requests: defining, listing and removing pipelines (their specs
are in :mod:`tenantd.pipelinespec`), the uplink connections, and the flow of one pipeline request,
whose edge stage is a caller of the inference core like any other request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from tenantclient import AsyncTenantClient
from tenantclient.errors import ClientClosed, KeyRefused, TenantError
from tenantd.catalog import Catalog, is_operator_acting, require_tenant
from tenantd.config import Policy
from tenantd.errors import BadRequest, Forbidden, NotOwner, PipelineFailed, UnknownModel, UpstreamFailed
from tenantd.events import Event, EventLog
from tenantd.inference import Answer, InferenceCore, Tensors, match_inputs
from tenantd.lifecycle import Lifecycle
from tenantd.pipelinespec import PipelineSpec, Uplink, parse_spec
from tenantd.store import Store
from tenantwire.curve import KeyFileError
from tenantwire.errors import ErrorCode, ProtocolError
from tenantwire.protocol import NAME_RE, Request

log = logging.getLogger("tenantd")

# Runs a local model: (model name, input tensors) -> (named outputs, the local infer's timings).
LocalInfer = Callable[[str, Sequence[np.ndarray]], Awaitable[tuple[Tensors, dict[str, Any]]]]


def top_confidence(scores: np.ndarray) -> tuple[float, list[int]]:
    """The lowest, over the batch, of each row's top class probability, and each row's top class.
    Scores that are not already probabilities (rows not summing to 1) go through a softmax first."""
    s = np.asarray(scores, dtype=np.float64).reshape(scores.shape[0] if scores.ndim > 1 else 1, -1)
    if s.size == 0:
        return 0.0, []  # nothing to be sure of: forward
    if not (np.all(s >= 0) and np.allclose(s.sum(axis=1), 1.0, atol=1e-3)):
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
    return float(s.max(axis=1).min()), [int(c) for c in s.argmax(axis=1)]


@dataclass
class PipelineResult:
    outputs: Tensors
    timings: dict[str, Any]


Connection = tuple[str, str | None, str | None, str | None, float]


def _connection(uplink: Uplink) -> Connection:
    """What a client connection depends on: not the uplink's ``tenants``, which only says who may
    use it (and, being a list, would make the uplink unusable as a dictionary key)."""
    return (uplink.endpoint, uplink.tenant, uplink.key_file, uplink.server_key, uplink.timeout_ms)


class Uplinks:
    """One client connection per configured uplink, made on first use and kept."""

    def __init__(self) -> None:
        self._clients: dict[Connection, AsyncTenantClient] = {}

    def client(self, uplink: Uplink) -> AsyncTenantClient:
        """The daemon is a tenant of the other daemon."""
        client = self._clients.get(_connection(uplink))
        if client is None:
            keys: dict[str, Any] = {}
            if uplink.key_file is not None:
                text = uplink.server_key or ""
                # A file (keys/server.key there), or the key itself as z85 text.
                server_key: bytes | Path = Path(text) if Path(text).exists() else text.encode()
                keys = {"key_file": uplink.key_file, "server_key": server_key}
            client = AsyncTenantClient(uplink.endpoint, tenant=uplink.tenant, timeout=uplink.timeout_ms / 1e3, **keys)
            self._clients[_connection(uplink)] = client
        return client

    async def drop(self, uplink: Uplink) -> None:
        """Forget ``uplink``'s client: a refused key is final for a client, and the next request
        should try with a new one (the other daemon's operator may have registered the key since)."""
        await self._drop(_connection(uplink))

    async def _drop(self, connection: Connection) -> None:
        client = self._clients.pop(connection, None)
        if client is not None:
            await client.close()

    async def keep_only(self, uplinks: Iterable[Uplink]) -> None:
        """Close the clients of uplinks no longer configured (after a policy reload)."""
        for connection in set(self._clients) - {_connection(u) for u in uplinks}:
            await self._drop(connection)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


async def run_pipeline(
    name: str,
    spec: PipelineSpec,
    uplink: Uplink,
    uplinks: Uplinks,
    inputs: Sequence[np.ndarray],
    input_names: Sequence[str | None],
    run_local: LocalInfer,
) -> PipelineResult:
    """One request through ``spec``: the edge stage here, then (split always, cascade when unsure)
    the cloud stage through ``uplink``."""
    started = time.monotonic()
    edge_outputs, edge_timings = await run_local(spec.edge_model, inputs)
    edge_ms = (time.monotonic() - started) * 1e3
    timings: dict[str, Any] = {
        "pipeline": name,
        "kind": spec.kind,
        "encoding": spec.encoding,
        "edge_ms": round(edge_ms, 4),
        "edge_compute_ms": edge_timings.get("compute_ms"),
        "bytes_up": 0,
        "bytes_down": 0,
    }
    if spec.kind == "cascade":
        scores = _named(edge_outputs, spec.confidence_output)
        confidence, classes = top_confidence(scores)
        timings["confidence"] = round(confidence, 6)
        assert spec.threshold is not None
        if confidence >= spec.threshold and not set(classes) & set(spec.forward_classes):
            timings.update(tier="edge", total_ms=round((time.monotonic() - started) * 1e3, 4))
            return PipelineResult(edge_outputs, timings)
        up: Tensors = list(zip(input_names, inputs, strict=True))  # the input goes to the full model
    else:
        up = edge_outputs  # the intermediate tensor goes to the tail

    timeout_ms = spec.timeout_ms or uplink.timeout_ms
    cloud_started = time.monotonic()
    try:
        client = uplinks.client(uplink)
        reply = await client.call(
            "infer",
            {"model": spec.cloud_model},
            tensors=up,
            encoding=spec.tensor_encoding,
            timeout=timeout_ms / 1e3,
        )
    except (TenantError, OSError, zmq.ZMQError, KeyFileError, ProtocolError) as exc:
        if isinstance(exc, KeyRefused | ClientClosed | KeyFileError):
            await uplinks.drop(uplink)
        cause = getattr(exc, "code", None) or type(exc).__name__
        message = f"the cloud stage of pipeline {name!r} via uplink {spec.uplink!r} failed: {exc}"
        if spec.kind == "cascade" and spec.on_cloud_failure == "edge":
            timings.update(
                tier="edge",
                cloud_failed=str(cause),
                cloud_error=str(exc),
                total_ms=round((time.monotonic() - started) * 1e3, 4),
            )
            return PipelineResult(edge_outputs, timings)
        raise PipelineFailed(ErrorCode.UPSTREAM_ERROR, message, {"uplink": spec.uplink, "cause": str(cause)}) from exc
    cloud_ms = (time.monotonic() - cloud_started) * 1e3
    cloud_total = reply.timings.get("total_ms")
    timings.update(
        tier="cloud",
        bytes_up=reply.request_bytes,
        bytes_down=reply.wire_bytes,
        cloud_round_trip_ms=round(cloud_ms, 4),
        cloud_compute_ms=reply.timings.get("compute_ms"),
        # What the link and both daemons' messaging took: the round trip less the cloud's own time.
        network_ms=None if cloud_total is None else round(max(0.0, cloud_ms - float(cloud_total)), 4),
        total_ms=round((time.monotonic() - started) * 1e3, 4),
    )
    return PipelineResult(list(reply.tensors), timings)


def _named(outputs: Tensors, name: str | None) -> np.ndarray:
    if name is None:
        return outputs[0][1]
    for out_name, array in outputs:
        if out_name == name:
            return array
    raise PipelineFailed(
        ErrorCode.BAD_REQUEST,
        f"the edge model has no output {name!r} (outputs: {[n for n, _ in outputs]})",
    )


async def close_quietly(uplinks: Uplinks) -> None:
    """Close uplink clients at shutdown, whatever state their sockets are in."""
    try:
        await asyncio.wait_for(uplinks.close(), 5)
    except (TimeoutError, OSError):
        pass


class Pipelines:
    """The pipeline operations and requests of one daemon. Pipelines share the catalog's namespace
    with models; their edge stage goes through the inference core (same queues, quotas and
    deadlines as any request), then the cloud stage through the pipeline's uplink."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        events: EventLog,
        core: InferenceCore,
        lifecycle: Lifecycle,
        policy: Callable[[], Policy],
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._events = events
        self._core = core
        self._lifecycle = lifecycle
        self._policy = policy
        self.uplinks = Uplinks()

    def restore(self) -> None:
        for name, owner, spec in self._store.list_pipelines():
            try:
                self._catalog.pipelines[name] = (owner, parse_spec(spec))
            except ValueError as exc:  # written by an older tenantd whose spec this one reads differently
                log.error("pipeline %r of tenant %r is not restored: %s", name, owner, exc)
                self._events.emit(Event.PIPELINE_NOT_RESTORED, pipeline=name, tenant=owner, reason=str(exc))

    def info(self, name: str) -> dict[str, Any]:
        owner, spec = self._catalog.pipelines[name]
        return {"name": name, "owner": owner, **spec.model_dump()}

    async def define(self, request: Request) -> dict[str, Any]:
        """A tenant defines (or with ``replace``, redefines) a pipeline: its edge model here,
        chained through an operator's uplink to a model on another daemon."""
        tenant = require_tenant(request)
        name = request.args.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise BadRequest(f"args.name must be a valid name ({NAME_RE.pattern})")
        spec_args = request.args.get("spec")
        if not isinstance(spec_args, dict):
            raise BadRequest("args.spec must be a map (docs/protocol.md, pipeline_set)")
        try:
            spec = parse_spec(spec_args)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        uplinks = self._policy().uplinks
        if spec.uplink in uplinks and not uplinks[spec.uplink].allows(tenant):
            raise Forbidden(f"the operator has not given tenant {tenant!r} uplink {spec.uplink!r}")
        if spec.uplink not in uplinks:
            raise BadRequest(f"no uplink named {spec.uplink!r}; configured: {sorted(uplinks) or 'none'}")
        edge = self._catalog.models.get(spec.edge_model)
        if edge is None:
            raise UnknownModel(f"no model named {spec.edge_model!r} (the edge model)")
        if edge.owner != tenant:
            raise NotOwner(f"model {spec.edge_model!r} belongs to another tenant")
        if spec.kind == "cascade" and spec.confidence_output is not None:
            if spec.confidence_output not in [o.name for o in edge.outputs]:
                raise BadRequest(
                    f"{spec.edge_model!r} has no output {spec.confidence_output!r} "
                    f"(outputs: {[o.name for o in edge.outputs]})"
                )
        replace = bool(request.args.get("replace", False))
        await asyncio.get_running_loop().run_in_executor(
            None, self._store.put_pipeline, name, tenant, spec.model_dump(exclude_defaults=True), replace
        )
        self._catalog.pipelines[name] = (tenant, spec)
        self._events.emit(Event.PIPELINE_SET, pipeline=name, tenant=tenant, **spec.model_dump())
        return {"pipeline": self.info(name)}

    async def remove(self, request: Request) -> dict[str, Any]:
        tenant = None if is_operator_acting(request) else require_tenant(request)
        name = request.args.get("name")
        owner, _ = self._catalog.pipeline(name, tenant)
        assert isinstance(name, str)
        await asyncio.get_running_loop().run_in_executor(None, self._store.remove_pipeline, name)
        self._catalog.pipelines.pop(name, None)
        self._events.emit(Event.PIPELINE_REMOVED, pipeline=name, tenant=owner)
        return {"removed": name}

    def list(self, request: Request) -> dict[str, Any]:
        tenant = request.tenant
        names = [n for n, (owner, _) in self._catalog.pipelines.items() if tenant is None or owner == tenant]
        return {"pipelines": [self.info(n) for n in names]}

    async def infer(self, request: Request) -> Answer:
        """``infer`` on a pipeline's name; raises the refusal (a PipelineFailed also goes to the log)."""
        self._core.metrics.request("pipeline_infer")  # its edge stage is counted again, as an infer
        self._lifecycle.check_accepting()
        tenant = require_tenant(request)
        name = request.args["model"]
        _, spec = self._catalog.pipeline(name, tenant)
        uplink = self._policy().uplinks.get(spec.uplink)
        if uplink is None or not uplink.allows(tenant):  # the operator withdrew it by a policy reload
            raise UpstreamFailed(f"uplink {spec.uplink!r} is no longer configured for you")
        edge = self._catalog.models.get(spec.edge_model)
        if edge is None or edge.owner != tenant:
            raise UnknownModel(f"the edge model {spec.edge_model!r} is gone")
        inputs = match_inputs(edge.inputs, request.tensors)

        async def run_local(model: str, tensors: Sequence[np.ndarray]) -> tuple[Tensors, dict[str, Any]]:
            named: Tensors = [(s.name, array) for s, array in zip(edge.inputs, tensors, strict=True)]
            answer = await self._core.infer(tenant, model, named, request.deadline_ms)
            return answer.outputs, answer.timings

        try:
            result = await run_pipeline(
                name, spec, uplink, self.uplinks, inputs, [s.name for s in edge.inputs], run_local
            )
        except PipelineFailed as exc:
            self._events.emit(Event.PIPELINE_FAILED, pipeline=name, code=exc.code.value, **exc.details)
            raise
        if result.timings.get("cloud_failed"):
            self._events.emit(
                Event.PIPELINE_CLOUD_FAILED, pipeline=name, cause=result.timings["cloud_failed"], answered_by="edge"
            )
        return Answer(result.outputs, result.timings)

    async def apply_policy(self) -> None:
        """A withdrawn uplink's connection goes."""
        await self.uplinks.keep_only(self._policy().uplinks.values())
