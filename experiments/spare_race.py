"""Two probes of one runtime at once, one spare: should the second wait for the next spare or start fresh?

tenantd/probespare.py keeps one spare probe process per runtime that cannot be forked. When two
submissions of that runtime arrive together, the first takes the spare; the second either waits for
the spare started for it (``SpareProbes.WAIT_FOR_STARTING = True``, as shipped) or starts a fresh
probe process beside it. Each round starts a ``SpareProbes`` with one ready spare, runs two probes of
the same model at once, and times at the caller: the slower of the two (what the second submitter
waits) and how long until a spare is ready again. The two ways alternate round by round (ABBA), so
both see the same machine load; it prints medians and the median of the per-pair differences, and
the CPU seconds the child processes used per round (from ``getrusage``, which load moves less).

    python -m experiments.spare_race [--rounds 10] [--runtime onnxruntime]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from experiments.harness import machine_info
from models import tiny_onnx
from tenantd.probespare import SpareProbes
from tenantwire import irbundle

LIMIT = 512 * 2**20
TIMEOUT_S = 120.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _round(runtime: str, model: Path, wait: bool) -> tuple[float, float, float, list[str]]:
    """(both probes done ms, a spare ready again ms, children's CPU s, where each probe ran)."""
    spares = SpareProbes([runtime], "cpu", lambda: 1)
    spares.WAIT_FOR_STARTING = wait
    spares.start()
    try:
        while spares.ready(runtime) < 1:
            await asyncio.sleep(0.005)  # ok: waiting for the spare the round starts from
        cpu0 = _children_cpu_s()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(spares.probe(runtime, model, 1, TIMEOUT_S, "cpu", LIMIT) for _ in range(2)))
        both_ms = (time.perf_counter() - t0) * 1e3
        while spares.ready(runtime) < 1:
            await asyncio.sleep(0.005)  # ok: timing when a spare is ready again
        ready_ms = (time.perf_counter() - t0) * 1e3
    finally:
        await spares.close()
    assert all(r.ok for r in results), [r.reason for r in results]
    return both_ms, ready_ms, _children_cpu_s() - cpu0, [str(r.details["probe_process"]) for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.spare_race", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pairs of rounds (one each way)")
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    args = parser.parse_args(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="spare-race-") as tmp:
        onnx = tiny_onnx.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7)
        model = Path(tmp) / ("cnn.onnx" if args.runtime == "onnxruntime" else "cnn.ovir")
        if args.runtime == "onnxruntime":
            model.write_bytes(onnx)
        else:
            model.write_bytes(irbundle.pack_files(tiny_onnx.save_ir(onnx, Path(tmp) / "ir" / "cnn.xml")))
        got: dict[bool, list[tuple[float, float, float, list[str]]]] = {True: [], False: []}
        for i in range(args.rounds):
            for wait in (True, False) if i % 2 == 0 else (False, True):
                got[wait].append(asyncio.run(_round(args.runtime, model, wait)))
    loadavg = ", ".join(f"{x:.1f}" for x in info["loadavg_at_start"])
    print(f"two {args.runtime} probes at once, one spare; {args.rounds} rounds each way")
    print(f"{info['cpu_model']} x{info['cores']}, load average at start {loadavg}")
    for wait, label in ((True, "wait for the next spare"), (False, "second starts fresh")):
        rows = got[wait]
        ran = sorted({"+".join(sorted(r[3])) for r in rows})
        print(
            f"  {label:24s} both done p50 {statistics.median(r[0] for r in rows):7.1f} ms,"
            f" spare ready again p50 {statistics.median(r[1] for r in rows):7.1f} ms,"
            f" children CPU {statistics.median(r[2] for r in rows):.3f} s/round ({', '.join(ran)})"
        )
    diffs = [w[0] - f[0] for w, f in zip(got[True], got[False], strict=True)]
    print(f"  wait - fresh, both done, median of per-round differences: {statistics.median(diffs):+.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
