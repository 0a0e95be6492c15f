"""The peers of experiments/throughput.py: one LiteRT model served by PyTriton or by Ray Serve.

Run by that benchmark with the peers' own interpreter (a virtualenv with ``nvidia-pytriton``,
``ray[serve]`` and ``ai-edge-litert``, kept apart from tenantd's), so it imports nothing of tenantd:

    PYTHON server_kind MODEL.tflite INSTANCES THREADS

``triton``: PyTriton binds the model with INSTANCES inference callables (Triton model instances),
each with its own LiteRT interpreter of THREADS threads, batching off; prints ``READY host:port``
(its gRPC front door). ``ray``: Ray Serve with INSTANCES replicas of one CPU each, an interpreter
per replica, taking the raw input array as the HTTP body (shape in ``x-shape``) and answering the
first output's raw bytes; prints ``READY url``. Runs until terminated.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class Model:
    def __init__(self, path: str, threads: int) -> None:
        self.interpreter = Interpreter(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self.outputs]


def triton(path: str, instances: int, threads: int) -> None:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    probe = Model(path, threads)
    dtype = np.dtype(probe.input["dtype"])
    shape = tuple(int(n) for n in probe.input["shape"])

    def make() -> Any:
        model = Model(path, threads)

        def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
            # Batching is off: each request is one input, answered by its own outputs.
            return [{f"output{i}": out for i, out in enumerate(model(r["input"]))} for r in requests]

        return infer

    outputs = [
        Tensor(name=f"output{i}", dtype=np.dtype(d["dtype"]).type, shape=tuple(int(n) for n in d["shape"]))
        for i, d in enumerate(probe.outputs)
    ]
    # SIGTERM from the benchmark must leave through ``with``, which stops tritonserver (a child that
    # would otherwise outlive this process and hold the ports).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    config = TritonConfig(http_port=18000, grpc_port=18001, metrics_port=18002, log_verbose=0)
    with Triton(config=config) as server:
        server.bind(
            model_name="bench",
            infer_func=[make() for _ in range(instances)],
            inputs=[Tensor(name="input", dtype=dtype.type, shape=shape)],
            outputs=outputs,
            config=ModelConfig(batching=False),
            strict=True,
        )
        server.run()
        print("READY localhost:18001", flush=True)
        threading.Event().wait()


def ray_serve(path: str, instances: int, threads: int) -> None:
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    ray.init(num_cpus=instances, include_dashboard=False, logging_level="ERROR")

    @serve.deployment(num_replicas=instances, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4)
    class Bench:
        def __init__(self) -> None:
            self.model = Model(path, threads)
            self.dtype = np.dtype(self.model.input["dtype"])

        async def __call__(self, request: Request) -> Response:
            shape = tuple(int(n) for n in request.headers["x-shape"].split(","))
            x = np.frombuffer(await request.body(), self.dtype).reshape(shape)
            return Response(self.model(x)[0].tobytes(), media_type="application/octet-stream")

    def stop(_signum: int, _frame: Any) -> None:  # SIGTERM from the benchmark: take the local cluster down too
        serve.shutdown()
        ray.shutdown()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    serve.start(http_options={"host": "127.0.0.1", "port": 18100})
    serve.run(Bench.bind(), route_prefix="/bench")  # type: ignore[attr-defined]
    print("READY http://127.0.0.1:18100/bench", flush=True)
    while True:
        time.sleep(3600)


def main() -> None:
    kind, path, instances, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "triton":
        triton(path, instances, threads)
    elif kind == "ray":
        ray_serve(path, instances, threads)
    else:
        raise SystemExit(f"unknown peer {kind!r}: triton or ray")


if __name__ == "__main__":
    main()
