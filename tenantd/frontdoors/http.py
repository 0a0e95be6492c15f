"""The KServe v2 HTTP/REST front door (the Open Inference Protocol), on aiohttp, on the daemon's loop.

It binds ``HOST:PORT`` (TLS when the policy names a certificate and key), decodes the protocol's
JSON and Triton's binary tensor data extension (an ``Inference-Header-Content-Length`` header: that
many bytes of JSON, then each input with a ``binary_data_size`` parameter, in order; outputs in
binary when asked with ``binary_data`` / ``binary_data_output``), and calls
:class:`~tenantd.frontdoors.kserve.KServe`, which calls the inference core and the operations. Every
refusal becomes ``{"error": "..."}`` with the status of :data:`~tenantd.frontdoors.kserve.STATUS`.
A body over the policy's ``max_message_bytes`` is refused from its Content-Length before any of it
is read (or, sent chunked, as soon as it passes the cap); each connection is its own task, so a
client that sends half a body only holds its own request.

Routes (``{v}``: the optional ``/versions/1``): ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2``, ``GET /v2/models/{name}{v}``, ``GET /v2/models/{name}{v}/ready``,
``POST /v2/models/{name}{v}/infer``, ``POST /v2/repository/index``,
``POST /v2/repository/models/{name}/load``, ``POST /v2/repository/models/{name}/unload``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from tenantd.config import ConfigError, PolicyInForce
from tenantd.errors import BadRequest
from tenantd.frontdoors.kserve import (
    MODEL_VERSION,
    BodyStalled,
    Caller,
    KServe,
    check_version,
    datatype_of,
    model_metadata,
    parse_listen,
    select_outputs,
    status_of,
    tensor_from_bytes,
    tensor_from_list,
    timeout_ms,
)
from tenantd.inference import Tensors
from tenantwire.errors import ErrorCode, TenantdError

log = logging.getLogger("tenantd.http")

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
# How long a request body may pause before the request is refused (408) and its connection closed.
BODY_IDLE_TIMEOUT_S = 60.0
# How long a stopping daemon waits for HTTP responses already being written.
SHUTDOWN_TIMEOUT_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: TenantdError) -> web.Response:
    status = status_of(error)
    headers = {}
    if status.retry_after_s is not None:
        headers["Retry-After"] = str(status.retry_after_s)
    if status.http == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tenantd"'
    body = json.dumps({"error": error.message})
    return web.Response(status=status.http, text=body, content_type=JSON_TYPE, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, a method the route does not take) in KServe's error
    body too, so that every error a client reads is ``{"error": ...}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = json.dumps({"error": f"{exc.reason}: {request.method} {request.path}"})
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.Response(status=exc.status, text=body, content_type=JSON_TYPE, headers=headers)


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type=JSON_TYPE)


class HttpFrontDoor:
    def __init__(self, listen: str, kserve: KServe, policy: PolicyInForce, tls: ssl.SSLContext | None) -> None:
        self.host, self.port = parse_listen(listen, "--http")
        self._kserve = kserve
        self._policy = policy
        self._tls = tls
        self._sock: socket.socket | None = None
        self._runner: web.AppRunner | None = None

    @property
    def bound(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def bind(self) -> None:
        """Bind now (a port in use fails before any model is loaded); answer from :meth:`start`."""
        try:
            self._sock = socket.create_server((self.host, self.port), reuse_port=False, backlog=512)
        except OSError as exc:
            raise ConfigError(f"cannot bind --http {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._sock.getsockname()[1]

    async def start(self) -> None:
        assert self._sock is not None
        # The body cap is checked by this front door (TOO_LARGE in KServe's error body); aiohttp's
        # own limit is only a backstop past it.
        app = web.Application(client_max_size=self._policy().max_message_bytes + 1, middlewares=[json_errors])
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._sock, ssl_context=self._tls)
        await site.start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        elif self._sock is not None:
            self._sock.close()

    def _routes(self) -> list[web.RouteDef]:
        v = r"{version:(?:/versions/[^/]*)?}"
        return [
            web.get("/v2/health/live", self._live),
            web.get("/v2/health/ready", self._ready),
            web.get("/v2", self._refusing(self._server_metadata)),
            web.get("/v2/models/{name}" + v, self._refusing(self._model_metadata)),
            web.get("/v2/models/{name}" + v + "/ready", self._refusing(self._model_ready)),
            web.post("/v2/models/{name}" + v + "/infer", self._refusing(self._infer)),
            web.post("/v2/repository/index", self._refusing(self._index)),
            web.post("/v2/repository/models/{name}/load", self._refusing(self._load)),
            web.post("/v2/repository/models/{name}/unload", self._refusing(self._unload)),
        ]

    # ------------------------------------------------------------------ plumbing

    def _refusing(self, handler: Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]) -> Handler:
        """Identify the caller, run ``handler``, and answer any refusal with its status and body."""

        action = handler.__name__.lstrip("_")

        async def run(request: web.Request) -> web.StreamResponse:
            caller = None
            try:
                caller = self._kserve.identify(lambda name: request.headers.get(name))
                return await handler(request, caller)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - a refusal, or a bug (logged there): answered either way
                return error_response(self._kserve.refusal(exc, "http", action, caller))

        return run

    async def _body(self, request: web.Request) -> bytes:
        """The request body, refused as TOO_LARGE from its declared length before any is read."""
        limit = self._policy().max_message_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise TenantdError(
                ErrorCode.TOO_LARGE,
                f"the body is {declared} bytes; this daemon accepts at most {limit}",
                {"limit_bytes": limit, "size_bytes": declared},
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            try:  # a client that stops sending mid-body gives its connection up, not just its time
                chunk = await asyncio.wait_for(request.content.readany(), BODY_IDLE_TIMEOUT_S)
            except TimeoutError:
                raise BodyStalled(f"no byte of the body came for {BODY_IDLE_TIMEOUT_S:g} s") from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:  # chunked bodies: stop at the cap
                raise TenantdError(ErrorCode.TOO_LARGE, f"the body passed {limit} bytes, this daemon's cap")
            chunks.append(chunk)

    @staticmethod
    def _version(request: web.Request) -> str | None:
        v = request.match_info.get("version", "")
        return v.rsplit("/", 1)[-1] if v else None

    # ------------------------------------------------------------------ health and metadata

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._kserve.ready else 503)

    async def _server_metadata(self, request: web.Request, caller: Caller) -> web.Response:
        return _json(self._kserve.server_metadata())

    async def _model_metadata(self, request: web.Request, caller: Caller) -> web.Response:
        name = request.match_info["name"]
        return _json(model_metadata(self._kserve.visible_model(caller, name, self._version(request))))

    async def _model_ready(self, request: web.Request, caller: Caller) -> web.Response:
        ready = self._kserve.model_ready(caller, request.match_info["name"], self._version(request))
        return web.Response(status=200 if ready else 503)

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: web.Request, caller: Caller) -> web.Response:
        name = request.match_info["name"]
        check_version(self._version(request))
        body = await self._body(request)
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        tensors, wanted, binary_out = decode_infer(header, binary)
        deadline = timeout_ms(header.get("parameters") or {})
        answer = await self._kserve.infer(caller, name, tensors, deadline)
        outputs = select_outputs(answer.outputs, [w for w, _ in wanted] if wanted else None)
        as_binary = dict(wanted) if wanted else {}
        reply: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION, "outputs": []}
        if "id" in header:
            reply["id"] = header["id"]
        buffers: list[bytes] = []
        for out_name, array in outputs:
            entry: dict[str, Any] = {"name": out_name, "datatype": datatype_of(array), "shape": list(array.shape)}
            if as_binary.get(out_name, binary_out):
                raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                buffers.append(raw)
            else:
                entry["data"] = array.reshape(-1).tolist()
            reply["outputs"].append(entry)
        text = json.dumps(reply).encode()
        if not buffers:
            return web.Response(body=text, content_type=JSON_TYPE)
        return web.Response(
            body=b"".join([text, *buffers]), content_type=BINARY_TYPE, headers={HEADER_LENGTH: str(len(text))}
        )

    # ------------------------------------------------------------------ the model repository

    async def _index(self, request: web.Request, caller: Caller) -> web.Response:
        await self._body(request)  # {"ready": ...} changes nothing: every listed model is ready
        return _json(await self._kserve.index(caller))

    async def _load(self, request: web.Request, caller: Caller) -> web.Response:
        name = request.match_info["name"]
        body = await self._body(request)
        query = request.query
        options: dict[str, Any]
        # Triton's JSON load request unless the body is declared to be the model file itself (a client
        # like tritonclient sends JSON with no Content-Type at all).
        if request.headers.get("Content-Type", "").split(";")[0].strip() == BINARY_TYPE:
            data, filename, options = body, query.get("filename"), {}
        else:
            data, filename, options = decode_load(body)
        runtime = options.get("runtime", query.get("runtime"))
        replace = options.get("replace", query.get("replace", "false").lower() in ("1", "true", "yes"))
        if not isinstance(runtime, str | None) or not isinstance(replace, bool):
            raise BadRequest("the config's runtime must be a string and replace a bool")
        result = await self._kserve.load(caller, name, data, filename=filename, runtime=runtime, replace=replace)
        return _json(result)

    async def _unload(self, request: web.Request, caller: Caller) -> web.Response:
        await self._body(request)
        return _json(await self._kserve.unload(caller, request.match_info["name"]))


# ---------------------------------------------------------------------------------- decoding


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary section after it (binary tensor data extension)."""
    if header_length is None:
        json_bytes, binary = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
        cut = int(header_length)
        json_bytes, binary = body[:cut], memoryview(body)[cut:]
    try:
        header = json.loads(json_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("the request must be a JSON object")
    return header, binary


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}.parameters must be an object")
    return parameters


def decode_infer(header: dict[str, Any], binary: memoryview) -> tuple[Tensors, list[tuple[str, bool]], bool]:
    """(inputs, outputs asked for with whether each in binary, binary by default) of an infer request."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    tensors: Tensors = []
    offset = 0
    for i, entry in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest(f"{where} must be an object with a name")
        size = _parameters(entry, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"{where}: binary_data_size {size!r} runs past the {len(binary)} bytes after the JSON header"
                )
            array = tensor_from_bytes(binary[offset : offset + size], entry.get("datatype"), entry.get("shape"), where)
            offset += size
        elif "data" in entry:
            array = tensor_from_list(entry["data"], entry.get("datatype"), entry.get("shape"), where)
        else:
            raise BadRequest(f"{where} has neither data nor a binary_data_size parameter")
        tensors.append((entry["name"], array))
    if offset != len(binary):
        raise BadRequest(f"the inputs' binary_data_size add up to {offset} bytes; {len(binary)} follow the header")
    request_parameters = header.get("parameters") or {}
    if not isinstance(request_parameters, dict):
        raise BadRequest("parameters must be an object")
    binary_out = request_parameters.get("binary_data_output") is True
    wanted: list[tuple[str, bool]] = []
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list")
    for i, entry in enumerate(outputs):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest(f"outputs[{i}] must be an object with a name")
        wanted.append((entry["name"], _parameters(entry, f"outputs[{i}]").get("binary_data", binary_out) is True))
    return tensors, wanted, binary_out


def decode_load(body: bytes) -> tuple[bytes, str | None, dict[str, Any]]:
    """Triton's load request: ``{"parameters": {"config": JSON, "file:PATH": base64}}``, one file.
    The file's name picks the runtime (by extension); ``config`` may hold ``runtime`` and ``replace``."""
    header, _ = split_body(body, None)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    files = {k[len("file:") :]: v for k, v in parameters.items() if k.startswith("file:")}
    if len(files) != 1:
        raise BadRequest(f"a load names exactly one model file as a 'file:PATH' parameter, not {len(files)}")
    ((path, encoded),) = files.items()
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest(f"parameter 'file:{path}' is not base64") from None
    config = parameters.get("config", "{}")
    try:
        options = json.loads(config) if isinstance(config, str) else None
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict) or set(options) - {"runtime", "replace"}:
        raise BadRequest("the config parameter must be a JSON object with at most 'runtime' and 'replace'")
    return data, path.rsplit("/", 1)[-1] or None, options
