"""Would dynamic batching pay on this CPU? Per-request cost of one LiteRT call on a batch of b
requests, for b = 1, 2, 4, 8, against b calls of one. Not a test: it prints figures.

Each model's first input dimension is resized to b (``resize_tensor_input`` + ``allocate_tensors``
once per batch size, outside the timing, as a batching runtime would keep one allocation per
size); one interpreter of ``--threads`` threads; rounds interleaved over batch sizes; medians.
Models: any ``--model`` .tflite files whose first dimension is the batch, plus two from
``models/tiny.py``: a compute-bound CNN (192x192 float input, palm_detection_lite's size) and a
memory-bound MLP (a batch-1 dense layer reads every weight once per call, so a batch shares that
read).

    python -m experiments.batching [--model M.tflite ...] [--rounds 3] [--calls 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="a .tflite (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per batch size per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from models import tiny

    with tempfile.TemporaryDirectory(prefix="tenantd-batching-") as tmp:
        cnn = Path(tmp) / "cnn192-float.tflite"
        cnn.write_bytes(tiny.cnn(image=192, channels=(96, 352, 704, 1408), input_dtype="float32", seed=3))
        mlp = Path(tmp) / "mlp-38400x256.tflite"
        mlp.write_bytes(tiny.mlp(38400, [256], 10, seed=1))
        models = [*args.model, cnn, mlp]
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
