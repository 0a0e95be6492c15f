"""Would dynamic batching pay on this CPU? Per-request cost of one LiteRT call on a batch of b
requests, for b = 1, 2, 4, 8, against b calls of one. Not a test: it prints figures.

Each model's first input dimension is resized to b (``resize_tensor_input`` + ``allocate_tensors``
once per batch size, outside the timing, as a batching runtime would keep one allocation per
size); one interpreter of ``--threads`` threads; rounds interleaved over batch sizes; medians.
Models: any ``--model`` .tflite files whose first dimension is the batch, plus two from
``models/tiny.py``: a compute-bound CNN (192x192 float input, palm_detection_lite's size) and a
memory-bound MLP (a batch-1 dense layer reads every weight once per call, so a batch shares that
read).

``--daemon`` measures the same models through tenantd instead: one ``tenantd serve`` per arm
(its default slots and instances; ``off``: ``max_batch = 1``; ``bN``: ``max_batch = N``,
``max_queue_delay_ms = 0``, which batches only what queued while every instance was busy;
``bNdM``: and waits up to M ms for a batch to fill), every model submitted to each, ``c`` client
processes for each ``c`` in ``--clients`` with one request in flight each (experiments/throughput.py's
closed loop), rounds interleaved over arms; per model, arm and ``c``: throughput, p50 and the mean
batch size the daemon reports (its ``tenantd_inference_batch_size`` histogram). Every arm's reply
must equal direct invocation bit for bit before it is measured.

    python -m experiments.batching [--model M.tflite ...] [--rounds 3] [--calls 40]
    python -m experiments.batching --daemon [--arms off,b8,b8d2] [--clients 1,4,16] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from experiments import harness
from experiments.throughput import Direct, Pool, model_input

BATCHES = (1, 2, 4, 8)


def per_request_ms(path: Path, batch: int, threads: int, calls: int) -> float:
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    detail = interpreter.get_input_details()[0]
    shape = [batch, *(int(n) for n in detail["shape"][1:])]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).random(shape).astype(detail["dtype"])
    outputs = [d["index"] for d in interpreter.get_output_details()]
    for _ in range(3):
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        for index in outputs:
            interpreter.get_tensor(index)
        times.append((time.perf_counter() - t0) * 1e3 / batch)
    return statistics.median(times)


def arm_policy(arm: str) -> str:
    """``off`` | ``bN`` | ``bNdM`` -> the policy TOML of that arm."""
    found = re.fullmatch(r"b(\d+)(?:d([\d.]+))?", arm)
    if arm == "off":
        return "max_batch = 1\n"
    if found is None:
        raise SystemExit(f"arm {arm!r} is not off, bN or bNdM (N requests, M ms)")
    return f"max_batch = {int(found[1])}\nmax_queue_delay_ms = {float(found[2] or 0)}\n"


@contextlib.contextmanager
def daemon(arm: str, models: list[Path], workdir: Path) -> Iterator[str]:
    from tenantclient import TenantClient

    with harness.daemon_process(workdir / arm, arm_policy(arm)) as endpoint:
        with TenantClient(endpoint, tenant="bench") as client:
            for path in models:
                client.submit_model(path, path.stem)
        with TenantClient(endpoint) as operator:  # instances are made in the background
            deadline = time.monotonic() + 60
            while len(operator.events(event="model.instances")) < len(models) and time.monotonic() < deadline:
                time.sleep(0.1)  # a benchmark's set-up, polling a condition
        yield endpoint


def batch_counts(endpoint: str) -> dict[str, tuple[float, float]]:
    """Per model: (sum, count) of the daemon's batch-size histogram so far."""
    from tenantclient import TenantClient

    with TenantClient(endpoint) as operator:
        text = operator.metrics()
    found: dict[str, list[float]] = {}
    for kind, model, value in re.findall(
        r'^tenantd_inference_batch_size_(sum|count)\{model="([^"]+)",tenant="bench"\} (\S+)$', text, re.MULTILINE
    ):
        found.setdefault(model, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {model: (v[0], v[1]) for model, v in found.items()}


def through_daemon(args: argparse.Namespace, models: list[Path], workdir: Path) -> None:
    arms = [a for a in args.arms.split(",") if a]
    clients = tuple(int(c) for c in args.clients.split(","))
    print(f"load average before: {os.getloadavg()}", flush=True)
    with contextlib.ExitStack() as stack:
        targets = {arm: stack.enter_context(daemon(arm, models, workdir)) for arm in arms}
        pool = Pool(max(clients))
        stack.callback(pool.close)
        inputs = {path.stem: model_input(path) for path in models}
        for path in models:
            want = Direct(path, 1)(inputs[path.stem])
            for arm, target in targets.items():
                got = pool.check("tenantd", target, path.stem, inputs[path.stem])
                if not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)):
                    raise SystemExit(f"{arm}'s reply for {path.stem} differs from direct invocation: not measuring")
        figures: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
        for round_ in range(args.rounds):
            for path in models:
                name = path.stem
                for c in clients:
                    for arm, target in targets.items():
                        before = batch_counts(target).get(name, (0.0, 0.0))
                        lat = pool.run(c, "tenantd", target, name, inputs[name], args.warmup, args.seconds)
                        after = batch_counts(target).get(name, (0.0, 0.0))
                        served = after[1] - before[1]
                        mean_batch = (after[0] - before[0]) / served if served else float("nan")
                        rate = len(lat) / args.seconds
                        p50 = harness.percentile(lat, 50) or float("nan")
                        figures.setdefault((name, arm, c), []).append((rate, p50, mean_batch))
                        print(
                            f"  round {round_ + 1} {name:<22} c={c:<3} {arm:<7} {rate:8.1f}/s  p50 {p50:7.2f} ms"
                            f"  mean batch {mean_batch:5.2f}",
                            flush=True,
                        )
    print(f"load average after: {os.getloadavg()}")
    print()
    print("| model | clients | " + " | ".join(arms) + " | " + " | ".join(f"{a} ÷ off" for a in arms[1:]) + " |")
    print("|---|---:|" + "---:|" * (2 * len(arms) - 1))
    for path in models:
        for c in clients:
            cells, rates = [], {}
            for arm in arms:
                runs = figures[(path.stem, arm, c)]
                rates[arm] = statistics.median(r for r, _, _ in runs)
                p50 = statistics.median(p for _, p, _ in runs)
                batch = statistics.median(b for _, _, b in runs)
                cells.append(f"{rates[arm]:.0f}/s, p50 {p50:.2f} ms, batch {batch:.1f}")
            ratios = [f"{rates[a] / rates[arms[0]]:.2f}" for a in arms[1:]]
            print(f"| {path.stem} | {c} | " + " | ".join(cells + ratios) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="a .tflite (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per batch size per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--daemon", action="store_true", help="through tenantd: arms x client counts")
    parser.add_argument("--arms", default="off,b8,b8d2", help="--daemon: off, bN (max_batch N), bNdM (+M ms delay)")
    parser.add_argument("--clients", default="1,4,16", help="--daemon: client processes per point")
    parser.add_argument("--seconds", type=float, default=6.0, help="--daemon: measuring window per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="--daemon: warm-up before each window")
    parser.add_argument("--quick", action="store_true", help="--daemon: 1 round, 3 s windows, 0.5 s warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3.0, 0.5
    from models import tiny

    with tempfile.TemporaryDirectory(prefix="tenantd-batching-") as tmp:
        cnn = Path(tmp) / "cnn192-float.tflite"
        cnn.write_bytes(tiny.cnn(image=192, channels=(96, 352, 704, 1408), input_dtype="float32", seed=3))
        mlp = Path(tmp) / "mlp-38400x256.tflite"
        mlp.write_bytes(tiny.mlp(38400, [256], 10, seed=1))
        models = [*args.model, cnn, mlp]
        if args.daemon:
            through_daemon(args, models, Path(tmp))
            return
        figures: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for path in models:
                for batch in BATCHES:
                    ms = per_request_ms(path, batch, args.threads, args.calls)
                    figures.setdefault((path.name, batch), []).append(ms)
        print(f"ms per request (median of {args.rounds} rounds), one interpreter of {args.threads} thread(s)")
        print(f"{'model':<34}" + "".join(f"{'b=' + str(b):>10}" for b in BATCHES) + f"{'b=8 gain':>10}")
        for path in models:
            row = [statistics.median(figures[(path.name, b)]) for b in BATCHES]
            print(f"{path.name:<34}" + "".join(f"{ms:>10.3f}" for ms in row) + f"{row[0] / row[-1]:>9.2f}x")


if __name__ == "__main__":
    main()
