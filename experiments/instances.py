"""Which way should one busy model use the cores: several interpreters of one thread, or one
interpreter of several threads? And what does each cost when many tenants' models are busy at once?

Runs LiteRT in this process (no daemon), for a fixed time per arrangement, rounds interleaved,
and prints inferences/s and p50 per arrangement. The daemon's ``instances = "auto"`` default
follows these figures (see the README's "Instances" section). Not a test: it prints figures.

    python -m experiments.instances MODEL.tflite [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tenantd.config import usable_cores


@dataclass(frozen=True)
class Arrangement:
    label: str
    models: int  # distinct models busy at once (tenants' models): each its own interpreters
    instances: int  # interpreters per model, each driven by its own caller thread
    threads: int  # LiteRT threads per interpreter


def _interpreter(content: bytes, threads: int) -> Interpreter:
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def run(content: bytes, arrangement: Arrangement, seconds: float) -> tuple[float, float]:
    """(inferences per second over all callers, p50 ms of one inference)."""
    # Distinct models: distinct copies of the bytes, so nothing is shared between them.
    contents = [bytes(bytearray(content)) for _ in range(arrangement.models)]
    interpreters = [_interpreter(c, arrangement.threads) for c in contents for _ in range(arrangement.instances)]
    detail = interpreters[0].get_input_details()[0]
    x = np.random.default_rng(0).random(tuple(detail["shape"])).astype(detail["dtype"])
    for interpreter in interpreters:  # warm
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
    latencies: list[list[float]] = [[] for _ in interpreters]
    start = threading.Barrier(len(interpreters) + 1)
    stop_at = [0.0]

    def caller(i: int) -> None:
        interpreter = interpreters[i]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            latencies[i].append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(interpreters))]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    start.wait()
    for thread in threads:
        thread.join()
    every = [ms for each in latencies for ms in each]
    return len(every) / seconds, statistics.median(every)


def arrangements(cores: int) -> list[Arrangement]:
    return [
        Arrangement("one model: 1 interpreter x 1 thread", 1, 1, 1),
        Arrangement(f"one model: 1 interpreter x {cores} threads", 1, 1, cores),
        Arrangement(f"one model: {cores} interpreters x 1 thread", 1, cores, 1),
        Arrangement(f"{cores} models: 1 interpreter x 1 thread each", cores, 1, 1),
        Arrangement(f"{cores} models: 1 interpreter x {cores} threads each", cores, 1, cores),
        Arrangement(f"{cores} models: {cores} interpreters x 1 thread each", cores, cores, 1),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a .tflite file")
    parser.add_argument("--seconds", type=float, default=3.0, help="per arrangement per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    content = args.model.read_bytes()
    cores = usable_cores()
    table = arrangements(cores)
    figures: dict[str, list[tuple[float, float]]] = {a.label: [] for a in table}
    for _ in range(args.rounds):
        for arrangement in table:  # rounds interleaved: a slow spell of the machine hits all alike
            figures[arrangement.label].append(run(content, arrangement, args.seconds))
    print(f"{args.model.name}, {cores} usable cores, {args.rounds} rounds x {args.seconds:g} s, median of rounds")
    print(f"{'arrangement':<52} {'inf/s':>8} {'p50 ms':>8}")
    for label, rounds in figures.items():
        rate = statistics.median(r for r, _ in rounds)
        p50 = statistics.median(p for _, p in rounds)
        print(f"{label:<52} {rate:>8.1f} {p50:>8.2f}")


if __name__ == "__main__":
    main()
