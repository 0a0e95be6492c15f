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

This module owns the pipeline spec, the uplink connections, and the flow of one pipeline request
given a way to run a local model; the daemon (``server.py``) owns where requests come from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tenantwire.errors import ErrorCode, ProtocolError
from tenantwire.tensors import TensorEncoding

Tensors = list[tuple[str | None, np.ndarray]]
# Runs a local model: (model name, input tensors) -> (named outputs, the local infer's timings).
LocalInfer = Callable[[str, Sequence[np.ndarray]], Awaitable[tuple[Tensors, dict[str, Any]]]]


class Uplink(BaseModel):
    """``[uplinks.NAME]`` in the policy: how this daemon reaches another daemon."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    endpoint: str
    """The other daemon's endpoint, e.g. ``tcp://cloud.example:5555`` (or a relay in front of it)."""

    tenant: str | None = None
    """The tenant this daemon acts as there, when that daemon takes header identities (ipc://)."""

    key_file: str | None = None
    """This daemon's secret certificate issued by the other daemon's operator (CurveZMQ)."""

    server_key: str | None = None
    """The other daemon's public key: a file (keys/server.key there) or the z85 text."""

    timeout_ms: Annotated[float, Field(gt=0)] = 5000.0
    """Longest wait for the other daemon's answer; a pipeline may ask for less."""

    tenants: list[str] | None = None
    """Tenants whose pipelines may use this uplink (default: every tenant). All of them act as
    this daemon's one identity on the other daemon, and so share its models and quotas there."""

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @model_validator(mode="after")
    def _identity(self) -> Uplink:
        if (self.key_file is None) != (self.server_key is None):
            raise ValueError("an uplink with keys needs both key_file and server_key")
        if self.key_file is None and self.tenant is None:
            raise ValueError("an uplink needs an identity: key_file + server_key, or tenant")
        if not self.endpoint.startswith(("tcp://", "ipc://")):
            raise ValueError(f"uplink endpoint {self.endpoint!r} must be tcp:// or ipc://")
        return self


class PipelineSpec(BaseModel):
    """What a tenant asks for in ``pipeline_set`` (the wire form is this model's fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["split", "cascade"]
    edge_model: str
    """A model of the same tenant on this daemon: the head (split) or the compact model (cascade)."""

    uplink: str
    """An uplink the operator configured (``[uplinks.NAME]``)."""

    cloud_model: str
    """The model's name on the other daemon, owned there by this daemon's identity."""

    encoding: str = "none"
    """How tensors travel up: none, zlib, lz4, float16, int8, or a lossy step + a codec
    (e.g. ``int8+zlib``). See docs/protocol.md, tensor encodings."""

    threshold: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """cascade: forward to the cloud when the edge's top confidence is below this."""

    confidence_output: str | None = None
    """cascade: the edge output holding class scores (default: its first output)."""

    forward_classes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """cascade: classes whose edge answers always go to the cloud, however confident (e.g. the
    "other" class of a compact model trained only for a few frequent classes)."""

    on_cloud_failure: Literal["error", "edge"] = "error"
    """cascade: ``edge`` answers with the edge result, flagged, when the cloud fails."""

    timeout_ms: Annotated[float | None, Field(gt=0)] = None
    """Longest wait for the cloud (default: the uplink's timeout_ms)."""

    @model_validator(mode="after")
    def _shape(self) -> PipelineSpec:
        TensorEncoding.parse(self.encoding)  # raises ValueError with the accepted forms
        if self.kind == "cascade" and self.threshold is None:
            raise ValueError("a cascade needs a threshold (forward when the top confidence is below it)")
        if self.kind == "split" and (
            self.threshold is not None or self.on_cloud_failure != "error" or self.forward_classes
        ):
            raise ValueError("a split has no edge answer to fall back on: threshold/on_cloud_failure are for cascades")
        return self

    @property
    def tensor_encoding(self) -> TensorEncoding | None:
        return TensorEncoding.parse(self.encoding)


class PipelineError(Exception):
    """A pipeline request failed; ``code`` is its wire error code."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def parse_spec(args: dict[str, Any]) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"pipeline spec is not valid: {problems}") from None


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


class Uplinks:
    """One client connection per configured uplink, made on first use and kept."""

    def __init__(self) -> None:
        self._clients: dict[Uplink, Any] = {}

    def client(self, uplink: Uplink) -> Any:
        from tenantclient import AsyncTenantClient  # the daemon is a tenant of the other daemon

        client = self._clients.get(uplink)
        if client is None:
            keys: dict[str, Any] = {}
            if uplink.key_file is not None:
                text = uplink.server_key or ""
                # A file (keys/server.key there), or the key itself as z85 text.
                server_key: bytes | Path = Path(text) if Path(text).exists() else text.encode()
                keys = {"key_file": uplink.key_file, "server_key": server_key}
            client = AsyncTenantClient(uplink.endpoint, tenant=uplink.tenant, timeout=uplink.timeout_ms / 1e3, **keys)
            self._clients[uplink] = client
        return client

    async def drop(self, uplink: Uplink) -> None:
        """Forget ``uplink``'s client: a refused key is final for a client, and the next request
        should try with a new one (the other daemon's operator may have registered the key since)."""
        client = self._clients.pop(uplink, None)
        if client is not None:
            await client.close()

    async def keep_only(self, uplinks: Iterable[Uplink]) -> None:
        """Close the clients of uplinks no longer configured (after a policy reload)."""
        for uplink in set(self._clients) - set(uplinks):
            await self.drop(uplink)

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
    from tenantclient.errors import ClientClosed, KeyRefused, TenantError
    from tenantd.auth import AuthConfigError  # a bad key file (imported here: auth imports config imports this)

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
    except (TenantError, OSError, zmq.ZMQError, AuthConfigError, ProtocolError) as exc:
        if isinstance(exc, KeyRefused | ClientClosed | AuthConfigError):
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
        raise PipelineError(ErrorCode.UPSTREAM_ERROR, message, {"uplink": spec.uplink, "cause": str(cause)}) from exc
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
    raise PipelineError(
        ErrorCode.BAD_REQUEST,
        f"the edge model has no output {name!r} (outputs: {[n for n, _ in outputs]})",
    )


async def close_quietly(uplinks: Uplinks) -> None:
    """Close uplink clients at shutdown, whatever state their sockets are in."""
    try:
        await asyncio.wait_for(uplinks.close(), 5)
    except (TimeoutError, OSError):
        pass
