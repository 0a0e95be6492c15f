"""Where a large input's added latency goes: one client, one request at a time, tenantd vs direct.

Prints, for one .tflite model (``--model``; default a float-input CNN with a 442,368-byte input,
the size of mediapipe's palm_detection_lite input), in interleaved rounds:

* direct p50: set_tensor/invoke/get_tensor in this process, one interpreter, one thread;
* tenantd p50 through ``TenantClient.infer_detailed`` and the daemon's own timings (``compute_ms``:
  the runtime call on the slot thread, set_tensor and get_tensor included; ``total_ms``: from
  queueing to the reply being handed to the front door), so that ``p50 - total`` is what the
  wire, the two event loops and the codecs cost;
* the floor of that: a bare ZeroMQ DEALER/ROUTER round trip over ipc with the same request and
  reply sizes (zero-copy frames both ways), and the per-call cost of each step that touches the
  tensors (the codec both ways, the input check, set_tensor, get_tensor, one 442 KB numpy copy).

Not a test: figures move with the machine's load, which is printed.

    python -m experiments.latency_breakdown [--model PATH] [--requests 400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from experiments import harness
from experiments.throughput import Direct, default_model, model_input
from tenantclient import TenantClient
from tenantd.inference import match_inputs
from tenantwire import protocol
from tenantwire.tensors import TensorSpec


def median_us(call: Callable[[], Any], n: int = 500) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def zmq_round_trip_ms(workdir: Path, request: np.ndarray, reply_bytes: int, n: int) -> float:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{workdir}/floor.sock")
    reply = bytes(reply_bytes)

    def serve() -> None:
        while True:
            frames = router.recv_multipart(copy=False)
            if len(frames[-1]) == 0:
                return
            router.send_multipart([frames[0], b"h", reply], copy=False)

    server = threading.Thread(target=serve)
    server.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{workdir}/floor.sock")
    times = []
    body = memoryview(request.tobytes())  # the bytes once, outside the timed loop
    for _ in range(n):
        t0 = time.perf_counter()
        dealer.send_multipart([b"h", body], copy=False)
        dealer.recv_multipart(copy=False)
        times.append((time.perf_counter() - t0) * 1e3)
    dealer.send_multipart([b""])
    server.join()
    ctx.destroy(linger=0)
    return statistics.median(times[n // 10 :])


def steps(path: Path, x: np.ndarray) -> dict[str, float]:
    direct = Direct(path, 1)
    interpreter = direct.interpreter
    outputs = direct(x)
    named = [(f"out{i}", o) for i, o in enumerate(outputs)]
    timings = {"queue_ms": 0.03, "compute_ms": 4.1, "total_ms": 4.3, "switch": False, "slot": 0}
    request = [
        bytes(f) for f in protocol.encode_request("infer", 1, tenant="t", args={"model": "m"}, tensors=[(None, x)])
    ]
    reply = [bytes(f) for f in protocol.encode_reply(1, tensors=named, timings=timings)]
    decoded = protocol.decode_request(request)
    specs = [TensorSpec("x", x.dtype.name, tuple(x.shape))]
    return {
        "client encode_request": median_us(
            lambda: protocol.encode_request("infer", 1, tenant="t", args={"model": "m"}, tensors=[(None, x)])
        ),
        "daemon decode_request (views, no copy)": median_us(lambda: protocol.decode_request(request)),
        "daemon input check": median_us(lambda: match_inputs(specs, decoded.tensors)),
        "set_tensor (the one input copy)": median_us(lambda: interpreter.set_tensor(direct.input, x)),
        "get_tensor of every output (the one output copy)": median_us(
            lambda: [interpreter.get_tensor(i) for i in direct.outputs]
        ),
        "daemon encode_reply (views, no copy)": median_us(
            lambda: protocol.encode_reply(1, tensors=named, timings=timings)
        ),
        "client decode_reply (views, no copy)": median_us(lambda: protocol.decode_reply(reply)),
        f"numpy copy of the input ({x.nbytes} bytes)": median_us(x.copy),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a single-input .tflite (default: a float CNN, 442 KB input)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tenantd-latency-") as tmp:
        workdir = Path(tmp)
        path = args.model or default_model(workdir / "cnn192.tflite")
        x = model_input(path)
        direct = Direct(path, 1)
        reply_bytes = sum(o.nbytes for o in direct(x))
        print(f"model {path.name}: input {x.nbytes} bytes, outputs {reply_bytes} bytes; load {os.getloadavg()}")
        for name, us in steps(path, x).items():
            print(f"  {name:<52} {us:8.1f} us")
        n, skip = args.requests, args.requests // 10
        with harness.daemon_process(workdir / "tenantd", "instances = 1\n") as endpoint:
            with TenantClient(endpoint, tenant="bench") as client:
                client.submit_model(path, "bench")
                for _ in range(skip):
                    client.infer("bench", x)
                for round_ in range(args.rounds):
                    times = []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        direct(x)
                        times.append((time.perf_counter() - t0) * 1e3)
                    direct_p50 = statistics.median(times[skip:])
                    latency, compute, total = [], [], []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        result = client.infer_detailed("bench", x)
                        latency.append((time.perf_counter() - t0) * 1e3)
                        compute.append(result.timings["compute_ms"])
                        total.append(result.timings["total_ms"])
                    floor = zmq_round_trip_ms(workdir, x, reply_bytes, n)
                    p50 = statistics.median(latency[skip:])
                    outside = statistics.median([a - b for a, b in zip(latency[skip:], total[skip:], strict=True)])
                    print(
                        f"round {round_ + 1}: direct p50 {direct_p50:.3f} ms | tenantd p50 {p50:.3f} ms "
                        f"(added {p50 - direct_p50:+.3f}): compute {statistics.median(compute[skip:]):.3f}, "
                        f"total {statistics.median(total[skip:]):.3f}, outside total {outside:.3f} | "
                        f"bare ZeroMQ round trip {floor:.3f} ms"
                    )
        print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
