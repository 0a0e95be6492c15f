"""Side by side: one model served by tenantd, by Triton (PyTriton) and by Ray Serve, against direct
in-process invocation at full machine use. Prints figures; not a test.

What it measures
----------------
One LiteRT model (``--model``: any single-input float or uint8 .tflite; the issue used mediapipe's
``palm_detection_lite.tflite``, 442 KB float input, see the README's "Instances" section for how
to get it; by default a float-input CNN of the same input size from ``models/tiny.py``, about
3.5 ms per inference at one thread on the 2-core VM like palm's 4 ms, but with a 40-byte output
where palm's two outputs are 153 KB), served
to ``c`` client *processes* for each ``c`` in ``--clients`` (1, 4, 16), each with one request in
flight (a closed loop). Arms:

* **direct**: no server. ``c`` threads in this process, each with its own LiteRT interpreter of
  ``--threads`` threads, in a closed loop of set_tensor/invoke/get_tensor: what the machine does
  with the model at that concurrency when nothing sits in between.
* **tenantd**: ``tenantd serve`` as a subprocess on an ``ipc://`` socket with its default policy
  (one slot per core, ``instances = "auto"``), the model submitted once; clients are
  ``TenantClient`` (sync) in the client processes.
* **triton**: PyTriton (Triton's gRPC front door) with one model instance of ``--threads`` threads
  per core, started from ``--peers-python`` (a separate virtualenv with ``nvidia-pytriton`` and
  ``ai-edge-litert``); clients use ``tritonclient.grpc``. Skipped, with the reason printed,
  where that interpreter or package is missing.
* **ray**: Ray Serve (HTTP) with one replica per core, also from ``--peers-python``; clients POST
  the raw array with ``httpx``. Skipped likewise.

Rounds are interleaved (every arm at every client count, then again), so a slow spell of a
shared machine hits all arms alike; the table gives, per arm and client count, the median over
rounds of throughput and of the p50/p99 latency (measured at the client, over requests that
started and ended inside the window), and each arm's throughput over direct's. Before measuring,
every server's reply must equal the direct output (bit for bit for tenantd and the peers, which
run the same LiteRT on the same bytes); otherwise the run stops.

    python -m experiments.throughput --quick                   # ~2 min: 1 round, short windows
    python -m experiments.throughput --model palm_detection_lite.tflite --peers-python /work/peers-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments import harness
from tenantd.config import usable_cores

PEER_SERVER = Path(__file__).with_name("peer_servers.py")
START_DELAY_S = 0.5  # between the go message and the common start of a measurement


# ---------------------------------------------------------------------------------------- model


def default_model(path: Path) -> Path:
    """A float-input CNN with the issue's input size (1x192x192x3 float32 = 442,368 bytes) and
    about the same compute as palm_detection_lite (its output is far smaller)."""
    from models import tiny

    path.write_bytes(tiny.cnn(image=192, channels=(96, 352, 704, 1408), input_dtype="float32", seed=3))
    return path


def model_input(path: Path, seed: int = 0) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    rng = np.random.default_rng(seed)
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(n) for n in detail["shape"])
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape).astype(dtype)


class Direct:
    """One interpreter, called as the daemon's LiteRT runtime calls it."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self.outputs]


# ---------------------------------------------------------------------------------------- clients


def _client(arm: str, target: str, model: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A blocking call of one request for ``arm``, made in a client process."""
    if arm == "tenantd":
        from tenantclient import TenantClient

        client = TenantClient(target, tenant="bench")
        return lambda x: list(client.infer(model, x).values())
    if arm == "triton":
        import tritonclient.grpc as grpcclient

        triton = grpcclient.InferenceServerClient(target)
        meta = triton.get_model_metadata(model)
        names = [o.name for o in meta.outputs]

        def call(x: np.ndarray) -> list[np.ndarray]:
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32" if x.dtype == np.float32 else "UINT8")
            tensor.set_data_from_numpy(x)
            result = triton.infer(model, [tensor])
            return [result.as_numpy(n) for n in names]

        return call
    if arm == "ray":
        import httpx

        http = httpx.Client(timeout=60)

        def post(x: np.ndarray) -> list[np.ndarray]:
            reply = http.post(target, content=x.tobytes(), headers={"x-shape": ",".join(map(str, x.shape))})
            reply.raise_for_status()
            return [np.frombuffer(reply.content, np.float32)]

        return post
    raise ValueError(arm)


def _worker(conn: multiprocessing.connection.Connection) -> None:
    """A client process: on ("run", arm, target, model, input, start, warm, seconds) it runs a
    closed loop from ``start`` (a CLOCK_MONOTONIC time shared by all processes), and answers the
    latencies (ms) of the requests that started and ended inside the measuring window."""
    calls: dict[tuple[str, str, str], Callable[[np.ndarray], list[np.ndarray]]] = {}
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        _, arm, target, model, x, start, warm, seconds = message
        try:
            call = calls.get((arm, target, model))
            if call is None:
                call = calls[(arm, target, model)] = _client(arm, target, model)
            if message[0] == "check":
                conn.send(call(x))
                continue
            begin, end = start + warm, start + warm + seconds
            time.sleep(max(0.0, start - time.monotonic()))
            latencies = []
            while (t0 := time.monotonic()) < end:
                call(x)
                t1 = time.monotonic()
                if t0 >= begin and t1 <= end:
                    latencies.append((t1 - t0) * 1e3)
            conn.send(latencies)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            conn.send(RuntimeError(f"{arm} client: {type(exc).__name__}: {exc}"))  # picklable whatever it was


@dataclass
class Pool:
    """Client processes started once, reused by every measurement."""

    size: int
    conns: list[multiprocessing.connection.Connection] = field(default_factory=list)
    procs: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def check(self, arm: str, target: str, model: str, x: np.ndarray) -> list[np.ndarray]:
        self.conns[0].send(("check", arm, target, model, x, 0.0, 0.0, 0.0))
        reply = self.conns[0].recv()
        if isinstance(reply, Exception):
            raise reply
        return list(reply)

    def run(
        self, clients: int, arm: str, target: str, model: str, x: np.ndarray, warm: float, seconds: float
    ) -> list[float]:
        start = time.monotonic() + START_DELAY_S
        for conn in self.conns[:clients]:
            conn.send(("run", arm, target, model, x, start, warm, seconds))
        latencies: list[float] = []
        for conn in self.conns[:clients]:
            reply = conn.recv()
            if isinstance(reply, Exception):
                raise reply
            latencies += reply
        return latencies

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)


def run_direct(path: Path, threads: int, clients: int, x: np.ndarray, warm: float, seconds: float) -> list[float]:
    callers = [Direct(path, threads) for _ in range(clients)]
    start = time.monotonic() + START_DELAY_S
    begin, end = start + warm, start + warm + seconds
    found: list[list[float]] = [[] for _ in callers]

    def loop(i: int) -> None:
        time.sleep(max(0.0, start - time.monotonic()))
        while (t0 := time.monotonic()) < end:
            callers[i](x)
            t1 = time.monotonic()
            if t0 >= begin and t1 <= end:
                found[i].append((t1 - t0) * 1e3)

    threads_ = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads_:
        thread.start()
    for thread in threads_:
        thread.join()
    return [ms for each in found for ms in each]


# ---------------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def tenantd_server(path: Path, workdir: Path) -> Iterator[str]:
    from tenantclient import TenantClient

    with harness.daemon_process(workdir, None) as endpoint:
        with TenantClient(endpoint, tenant="bench") as client:
            client.submit_model(path, "bench")
        with TenantClient(endpoint) as operator:  # its instances are made in the background
            deadline = time.monotonic() + 60
            while not operator.events(event="model.instances") and time.monotonic() < deadline:
                time.sleep(0.1)  # a benchmark's set-up, polling a condition
            status = operator.status()
        print(
            f"  tenantd: {status['slots']} slot(s), {status['threads_per_model']} thread(s) per model, "
            f"instances {status['residency']['instances']}",
            flush=True,
        )
        yield endpoint


PEER_START_S = 180.0  # a peer that is not serving by then is reported, with its last output


@contextlib.contextmanager
def peer_server(kind: str, python: str, path: Path, instances: int, threads: int) -> Iterator[str]:
    """A peer server from the peers' interpreter; yields its target once it printed READY."""
    env = dict(os.environ)
    lib = Path(python).resolve().parent.parent / "lib"
    base_lib = Path(sys.base_prefix) / "lib"  # PyTriton's Python stub needs libpython beside it
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), str(base_lib), env.get("LD_LIBRARY_PATH")]))
    cmd = [python, str(PEER_SERVER), kind, str(path), str(instances), str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # its whole output, read on a thread so that a silent hang still times out
        for line in proc.stdout or ():
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    target = None
    seen: list[str] = []
    deadline = time.monotonic() + PEER_START_S
    try:
        while target is None and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break  # it exited
            seen.append(line)
            if line.startswith("READY "):
                target = line.split(" ", 1)[1].strip()
        if target is None:
            why = "exited" if proc.poll() is not None else f"printed no READY within {PEER_START_S:g} s"
            raise RuntimeError(f"{kind} did not start ({why}): {''.join(seen[-20:])}")
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def peer_problem(python: str | None, kind: str) -> str | None:
    """Why peer ``kind`` cannot run, or None."""
    if python is None:
        return "no --peers-python given (a virtualenv with nvidia-pytriton, ray[serve] and ai-edge-litert)"
    module = {"triton": "pytriton", "ray": "ray.serve"}[kind]
    check = subprocess.run(
        [python, "-c", f"import {module}, ai_edge_litert"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        return f"{python} cannot import {module} and ai_edge_litert: {check.stderr.strip().splitlines()[-1:]}"
    if kind == "triton":
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError:
            return "tritonclient[grpc] is not installed here (the client side)"
    if kind == "ray":
        try:
            import httpx  # noqa: F401
        except ImportError:
            return "httpx is not installed here (the client side)"
    return None


# ---------------------------------------------------------------------------------------- main


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a single-input .tflite (default: a float CNN, 442 KB input)")
    parser.add_argument("--clients", type=_ints, default=(1, 4, 16), help="client processes per point (1,4,16)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="warm-up before each window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads per interpreter (direct, peers)")
    parser.add_argument("--peers-python", help="interpreter with nvidia-pytriton and ray[serve] (else peers skipped)")
    parser.add_argument("--arms", default="direct,tenantd,triton,ray", help="which arms to run")
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s windows, 0.5 s warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3.0, 0.5
    cores = usable_cores()
    arms = [a for a in args.arms.split(",") if a]

    with tempfile.TemporaryDirectory(prefix="tenantd-throughput-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        path = args.model or default_model(workdir / "cnn192.tflite")
        x = model_input(path)
        reference = Direct(path, 1)(x)
        print(f"model {path.name}: input {x.shape} {x.dtype} ({x.nbytes} bytes); {cores} usable cores", flush=True)
        print(f"load average before: {os.getloadavg()}", flush=True)
        targets: dict[str, str] = {}
        skipped: dict[str, str] = {}
        if "tenantd" in arms:
            targets["tenantd"] = stack.enter_context(tenantd_server(path, workdir / "tenantd"))
        for kind in ("triton", "ray"):
            if kind not in arms:
                continue
            problem = peer_problem(args.peers_python, kind)
            if problem is None:
                try:
                    targets[kind] = stack.enter_context(peer_server(kind, args.peers_python, path, cores, args.threads))
                except RuntimeError as exc:
                    problem = str(exc)
            if problem is not None:
                skipped[kind] = problem
                print(f"  {kind}: skipped: {problem}", flush=True)
        pool = Pool(max(args.clients))
        stack.callback(pool.close)
        for arm, target in targets.items():
            got = pool.check(arm, target, "bench", x)
            if arm == "ray":  # one flat float32 buffer: compare with the first output
                got, want = got[:1], [reference[0].reshape(-1)]
            else:
                want = reference
            if len(got) != len(want) or not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)):
                raise SystemExit(f"{arm}'s reply differs from direct invocation: not measuring")
        figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        order = [a for a in arms if a == "direct" or a in targets]
        for round_ in range(args.rounds):
            for clients in args.clients:
                for arm in order:
                    if arm == "direct":
                        lat = run_direct(path, args.threads, clients, x, args.warmup, args.seconds)
                    else:
                        lat = pool.run(clients, arm, targets[arm], "bench", x, args.warmup, args.seconds)
                    rate = len(lat) / args.seconds
                    p50 = harness.percentile(lat, 50) or float("nan")
                    p99 = harness.percentile(lat, 99) or float("nan")
                    figures.setdefault((arm, clients), []).append((rate, p50, p99))
                    print(
                        f"  round {round_ + 1} c={clients:<3} {arm:<8} {rate:8.1f}/s  "
                        f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms",
                        flush=True,
                    )
        print(f"load average after: {os.getloadavg()}")
        print()
        print(
            f"| clients | {' | '.join(order)} | " + " | ".join(f"{a} ÷ direct" for a in order if a != "direct") + " |"
        )
        print("|---:|" + "---:|" * (2 * len(order) - 1))
        for clients in args.clients:
            cells, rates = [], {}
            for arm in order:
                runs = figures[(arm, clients)]
                rate = statistics.median(r for r, _, _ in runs)
                rates[arm] = rate
                p50 = statistics.median(p for _, p, _ in runs)
                p99 = statistics.median(p for _, _, p in runs)
                cells.append(f"{rate:.0f}/s, p50 {p50:.2f}, p99 {p99:.2f} ms")
            ratios = [f"{rates[a] / rates['direct']:.2f}" for a in order if a != "direct" and "direct" in rates]
            print(f"| {clients} | " + " | ".join(cells + ratios) + " |")
        for kind, why in skipped.items():
            print(f"{kind}: skipped: {why}")


if __name__ == "__main__":
    main()
