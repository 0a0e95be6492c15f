"""A per-request timeline of one tenantd request: where the time outside the model call goes.

Starts ``tenantd serve`` from this tree with a few of its functions wrapped to stamp
``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process) at each hop, runs one
client here with one request in flight (stamped the same way), and prints the median of each hop
over the requests:

    client encode -> [request on the wire] -> front door has the frames (loop) -> decoded, checked,
    queued -> slot thread starts -> runtime call (set_tensor, invoke, get_tensor) -> back on the loop
    -> reply encoded -> reply handed to ZeroMQ -> [reply on the wire] -> client has the frames
    -> decoded.

Wrapping adds about a microsecond per stamp. Not a test; figures move with the machine's load.

    python -m experiments.latency_timeline [--model PATH] [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

# Runs in the daemon process: wrap the hops, dump the stamps when the daemon exits.
LAUNCHER = """
import atexit, json, os, sys, time
from tenantd import inference, executor
from tenantd.frontdoors import zeromq
from tenantd import scheduler
stamps = {}
def wrap(owner, name, before=None, after=None):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if before: stamps.setdefault(before, []).append(time.monotonic_ns())
        try:
            return original(*args, **kwargs)
        finally:
            if after: stamps.setdefault(after, []).append(time.monotonic_ns())
    setattr(owner, name, wrapper)
wrap(zeromq.ZmqFrontDoor, "_handle", "door_has_frames")
wrap(scheduler.Scheduler, "submit", None, "queued")
wrap(inference.InferenceCore, "_execute", "slot_started")
wrap(executor.Executor, "run", "run_start", "run_end")
wrap(inference.InferenceCore, "_finish", "loop_has_result")
wrap(zeromq.ZmqFrontDoor, "_send", "reply_encoded", "reply_sent")
atexit.register(lambda: open(os.environ["TENANTD_TIMELINE_OUT"], "w").write(json.dumps(stamps)))
sys.argv = ["tenantd", *sys.argv[1:]]
from tenantd.cli import main
sys.exit(main())
"""

HOPS = [
    ("client encode + request on the wire + loop wake-up", "client_start", "door_has_frames"),
    ("front door: decode, identify, check, queue", "door_has_frames", "queued"),
    ("queued -> slot thread running", "queued", "slot_started"),
    ("slot: checks before the runtime call", "slot_started", "run_start"),
    ("runtime call (set_tensor, invoke, get_tensor)", "run_start", "run_end"),
    ("slot -> back on the loop", "run_end", "loop_has_result"),
    ("loop: account, timings, reply encode", "loop_has_result", "reply_encoded"),
    ("send_multipart", "reply_encoded", "reply_sent"),
    ("reply on the wire + client wake-up", "reply_sent", "client_has_reply"),
    ("client decode", "client_has_reply", "client_end"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a single-input .tflite (default: a float CNN, 442 KB input)")
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args(argv)

    from experiments import harness
    from experiments.throughput import default_model, model_input
    from tenantclient import TenantClient
    from tenantclient import client as client_module

    with tempfile.TemporaryDirectory(prefix="tenantd-timeline-") as tmp:
        workdir = Path(tmp)
        path = args.model or default_model(workdir / "cnn192.tflite")
        x = model_input(path)
        out = workdir / "stamps.json"
        launcher = workdir / "launch.py"
        launcher.write_text(LAUNCHER)
        env = {**os.environ, "TENANTD_TIMELINE_OUT": str(out)}
        client_stamps: dict[str, list[int]] = {"client_start": [], "client_has_reply": [], "client_end": []}
        decode = client_module.protocol.decode_reply

        def stamped_decode(frames):  # type: ignore[no-untyped-def]
            client_stamps["client_has_reply"].append(time.monotonic_ns())
            return decode(frames)

        warm = 50
        with harness.daemon_process(workdir / "d", "instances = 1\n", env=env, launcher=launcher) as endpoint:
            with TenantClient(endpoint, tenant="bench") as client:
                client.submit_model(path, "bench")
                for _ in range(warm):
                    client.infer("bench", x)
                client_module.protocol.decode_reply = stamped_decode  # type: ignore[assignment]
                try:
                    for _ in range(args.requests):
                        client_stamps["client_start"].append(time.monotonic_ns())
                        client.infer("bench", x)
                        client_stamps["client_end"].append(time.monotonic_ns())
                finally:
                    client_module.protocol.decode_reply = decode  # type: ignore[assignment]
        stamps: dict[str, list[int]] = json.loads(out.read_text())
        n = args.requests
        for key in ("door_has_frames", "queued", "slot_started", "run_start", "run_end", "loop_has_result"):
            stamps[key] = stamps[key][-n:]
        # _send runs for the submit reply and the warm-up ones too: keep the last n
        for key in ("reply_encoded", "reply_sent"):
            stamps[key] = stamps[key][-n:]
        stamps.update(client_stamps)
        skip = n // 10
        print(f"model {path.name}: input {x.nbytes} bytes; {n - skip} requests; load {os.getloadavg()}")
        total = 0.0
        for label, start, end in HOPS:
            ms = statistics.median((b - a) / 1e6 for a, b in zip(stamps[start][skip:], stamps[end][skip:], strict=True))
            total += ms
            print(f"  {label:<56} {ms:7.3f} ms")
        whole = statistics.median(
            (b - a) / 1e6 for a, b in zip(stamps["client_start"][skip:], stamps["client_end"][skip:], strict=True)
        )
        run = statistics.median(
            (b - a) / 1e6 for a, b in zip(stamps["run_start"][skip:], stamps["run_end"][skip:], strict=True)
        )
        print(f"  {'sum of hop medians':<56} {total:7.3f} ms")
        print(f"  {'request p50 (client)':<56} {whole:7.3f} ms; outside the runtime call {whole - run:.3f} ms")


if __name__ == "__main__":
    main()
