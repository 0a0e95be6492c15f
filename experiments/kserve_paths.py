"""The KServe v2 paths of ``experiments.overhead``: the same model, the same input, through the
daemon's HTTP/REST front door (Triton's binary tensor data extension both ways) and its gRPC front
door (raw contents both ways), with the asyncio clients of ``tritonclient`` (``tritonclient.http.aio``,
on aiohttp; ``tritonclient.grpc.aio``, on grpc.aio): ``c`` closed loops on one client, as the
ZeroMQ phases run on one ``AsyncTenantClient``. A KServe reply carries no daemon timings, so these
rows have latency and throughput only.

Each function returns the (start, end) ``perf_counter`` pairs of the requests and the measured
window ``(begin, end)``; :mod:`experiments.overhead` summarises them as it does its own phases.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Spans = list[tuple[float, float]]
DATATYPES = {"uint8": "UINT8", "float32": "FP32"}


@dataclass(frozen=True)
class Target:
    """What every request sends and must get back."""

    tenant: str
    model: str
    input_name: str
    x: npt.NDArray[Any]
    output: str
    expected: npt.NDArray[Any]  # the direct invocation's output for ``x``


def free_port() -> int:
    """A port free on loopback now (the daemon binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_outputs(path: str, got: npt.NDArray[Any] | None, expected: npt.NDArray[Any]) -> None:
    if got is None or not np.array_equal(got, expected):
        raise ValueError(f"the {path} front door's output differs from the direct output")


async def _loops(concurrency: int, warmup_s: float, duration_s: float, call: Any) -> tuple[Spans, float, float]:
    spans: Spans = []
    begin = time.perf_counter() + warmup_s
    end = begin + duration_s

    async def loop() -> None:
        while (start := time.perf_counter()) < end:
            await call()
            spans.append((start, time.perf_counter()))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return spans, begin, end


def measure_http(
    address: str, target: Target, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[Spans, float, float]:
    """Closed loops of ``tritonclient.http.aio`` infer calls, binary data both ways."""
    import tritonclient.http.aio as th  # an experiment's optional client, imported when run

    headers = {"tenantd-tenant": target.tenant}

    async def run() -> tuple[Spans, float, float]:
        async with th.InferenceServerClient(address, conn_limit=max(8, concurrency)) as client:
            x = target.x
            inp = th.InferInput(target.input_name, list(x.shape), DATATYPES[x.dtype.name])
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [th.InferRequestedOutput(target.output, binary_data=True)]

            async def call() -> Any:
                return await client.infer(target.model, [inp], outputs=outputs, headers=headers)

            check_outputs("HTTP", (await call()).as_numpy(target.output), target.expected)
            return await _loops(concurrency, warmup_s, duration_s, call)

    return asyncio.run(run())


def measure_grpc(
    address: str, target: Target, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[Spans, float, float]:
    """Closed loops of ``tritonclient.grpc.aio`` infer calls (raw contents both ways)."""
    import tritonclient.grpc.aio as tg  # an experiment's optional client, imported when run

    headers = {"tenantd-tenant": target.tenant}

    async def run() -> tuple[Spans, float, float]:
        client = tg.InferenceServerClient(address)
        try:
            x = target.x
            inp = tg.InferInput(target.input_name, list(x.shape), DATATYPES[x.dtype.name])
            inp.set_data_from_numpy(x)
            outputs = [tg.InferRequestedOutput(target.output)]

            async def call() -> Any:
                return await client.infer(target.model, [inp], outputs=outputs, headers=headers)

            check_outputs("gRPC", (await call()).as_numpy(target.output), target.expected)
            return await _loops(concurrency, warmup_s, duration_s, call)
        finally:
            await client.close()

    return asyncio.run(run())
