"""``make demo``: one daemon on this machine's CPU serving two tenants, end to end.

Starts ``tenantd serve`` as a process (waiting for its ready line), has tenant *alice* submit a
real trained keyword-spotting model (int8, from the pymicro-wakeword wheel) and tenant *bob* an
untrained float32 MLP classifier built here, runs both tenants' requests concurrently, checks every answer
against a direct in-process LiteRT run of the same file, shows a refused request (bob asking for
alice's model), prints the models, timings and event log, and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import tiny
from tenantclient import AsyncTenantClient, TenantClient, errors

REPO = Path(__file__).resolve().parents[1]


def start_daemon(state_dir: Path, endpoint: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tenantd",
            "serve",
            "--device",
            "cpu",
            "--endpoint",
            endpoint,
            "--state-dir",
            str(state_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=(state_dir.parent / "daemon.log").open("w"),
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until the daemon is serving (or has died)
    if not line.startswith("tenantd ready"):
        proc.kill()
        raise SystemExit(f"the daemon did not start: {line!r}; see {state_dir.parent / 'daemon.log'}")
    return proc, line


def direct(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out


IN_FLIGHT = 8  # per tenant; the daemon's queue holds 64 per tenant and refuses more (QUEUE_FULL)


async def tenant_load(endpoint: str, tenant: str, model: str, inputs: list[np.ndarray]) -> list[Any]:
    async with AsyncTenantClient(endpoint, tenant=tenant) as client:
        window = asyncio.Semaphore(IN_FLIGHT)

        async def one(x: np.ndarray) -> Any:
            async with window:
                return await client.infer_detailed(model, x)

        return await asyncio.gather(*(one(x) for x in inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per tenant (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory and print its path")
    args = parser.parse_args(argv)

    import pymicro_wakeword  # a small wheel that ships real trained .tflite models

    work = Path(tempfile.mkdtemp(prefix="tenantd-demo-"))
    kws = Path(pymicro_wakeword.__file__).parent / "models" / "okay_nabu.tflite"
    classifier = work / "bob_classifier.tflite"
    classifier.write_bytes(tiny.mlp(256, [512, 256], 10, seed=7))
    endpoint = f"ipc://{work}/tenantd.sock"

    print(f"1. starting the daemon (state in {work / 'state'})")
    t0 = time.perf_counter()
    proc, ready = start_daemon(work / "state", endpoint)
    print(f"   {ready}   [{(time.perf_counter() - t0) * 1e3:.0f} ms]")
    try:
        print("2. tenants submit their models (stored, probed in a throwaway process, loaded)")
        with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
            for who, client, path, name in (("alice", alice, kws, "okay_nabu"), ("bob", bob, classifier, "bob_mlp")):
                info = client.submit_model(path, name)
                spec = ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in info.inputs)
                print(
                    f"   {who:<5} -> {info.name:<10} runtime={info.runtime} "
                    f"footprint={info.footprint_bytes / 2**20:.1f} MiB "
                    f"load={info.load_ms:.1f} ms input: {spec}"
                )

            print("3. bob asks for alice's model (must be refused)")
            try:
                bob.infer("okay_nabu", np.zeros((1, 3, 40), np.int8))
                print("   UNEXPECTED: served")
                return 1
            except errors.Forbidden as exc:
                print(f"   refused: {exc}")

        print(f"4. both tenants send {args.requests} requests each, {IN_FLIGHT} in flight per tenant at a time")
        rng = np.random.default_rng(0)
        kws_in = [rng.integers(-128, 128, (1, 3, 40), dtype=np.int8) for _ in range(args.requests)]
        cls_in = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(args.requests)]

        async def both() -> tuple[list[Any], list[Any]]:
            return await asyncio.gather(  # type: ignore[return-value]
                tenant_load(endpoint, "alice", "okay_nabu", kws_in), tenant_load(endpoint, "bob", "bob_mlp", cls_in)
            )

        t0 = time.perf_counter()
        alice_res, bob_res = asyncio.run(both())
        wall = time.perf_counter() - t0

        print("5. every answer checked against a direct in-process LiteRT run of the same file")
        # The keyword model is stateful (streaming), so its reference replays the same sequence.
        from ai_edge_litert.interpreter import Interpreter

        ref = Interpreter(model_path=str(kws), num_threads=1)
        ref.allocate_tensors()
        kws_ok = 0
        for x, r in zip(kws_in, alice_res, strict=True):
            ref.set_tensor(ref.get_input_details()[0]["index"], x)
            ref.invoke()
            kws_ok += np.array_equal(
                next(iter(r.outputs.values())), ref.get_tensor(ref.get_output_details()[0]["index"])
            )
        cls_ok = sum(
            np.array_equal(r.outputs["probs"], direct(classifier, x)) for x, r in zip(cls_in, bob_res, strict=True)
        )
        rows = []
        for tenant, model, results, ok in (
            ("alice", "okay_nabu", alice_res, kws_ok),
            ("bob", "bob_mlp", bob_res, cls_ok),
        ):
            q = [r.timings["queue_ms"] for r in results]
            c = [r.timings["compute_ms"] for r in results]
            rows.append(
                (
                    tenant,
                    model,
                    f"{ok}/{len(results)}",
                    statistics.median(q),
                    statistics.median(c),
                    sum(r.timings["switch"] for r in results),
                )
            )
        print(f"\n   {'tenant':<7}{'model':<12}{'equal':>9}{'queue p50 ms':>14}{'compute p50 ms':>16}{'switches':>10}")
        for tenant, model, ok, q50, c50, sw in rows:
            print(f"   {tenant:<7}{model:<12}{ok:>9}{q50:>14.3f}{c50:>16.3f}{sw:>10}")
        total = 2 * args.requests
        print(
            f"\n   {total} requests in {wall:.2f} s = {total / wall:.0f} inferences/s over ipc, "
            "both tenants served together"
        )

        with TenantClient(endpoint) as operator:
            status = operator.status()
            events = operator.events(limit=12)
        print(
            f"\n6. daemon status: {status['slots']} slots, models {status['resident']}, "
            f"switches {status['switches']}, errors {status['errors']}"
        )
        print("   last events:")
        for e in events:
            fields = {k: v for k, v in e.items() if k not in ("ts", "pid", "event", "sha256")}
            print(f"     {e['event']:<16} {json.dumps(fields)[:110]}")
        all_equal = kws_ok == args.requests and cls_ok == args.requests
    finally:
        print("\n7. stopping the daemon with SIGTERM")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        print(f"   daemon exited with status {code}")
    if args.keep:
        print(f"   state kept in {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if not all_equal or code != 0:
        print("DEMO FAILED: some answers differ from direct LiteRT, or the daemon did not stop cleanly")
        return 1
    print("demo OK: two tenants served concurrently, every answer equal to direct LiteRT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
