"""``tenantctl``: the operator's and tenant's command line for a running tenantd.

    tenantctl --endpoint ipc:///run/tenantd.sock status
    tenantctl models [--tenant T]
    tenantctl events [--limit N] [--event KIND]
    tenantctl submit FILE --name N --tenant T [--runtime R] [--replace]
    tenantctl remove N --tenant T
    tenantctl policy show | policy set FILE     (set: operator only)

``--json`` prints the daemon's raw answer instead of a table. Exit status: 0 on success, 1 when
the daemon refused the request (its error code is printed), 3 when no reply came in time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenantclient.client import ModelInfo, TenantClient
from tenantclient.errors import RequestTimeout, TenantError
from tenantd import auth

DEFAULT_ENDPOINT = os.environ.get("TENANTD_ENDPOINT", "ipc:///tmp/tenantd.sock")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _specs(specs: Sequence[Any]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


def _print_models(models: list[ModelInfo]) -> None:
    if not models:
        print("no models")
        return
    rows = [
        (
            m.name,
            m.owner,
            m.runtime,
            "yes" if m.resident else "no",
            _mib(m.footprint_bytes),
            f"{m.load_ms:.1f}",
            _specs(m.inputs),
            _specs(m.outputs),
        )
        for m in models
    ]
    print(_table(["NAME", "OWNER", "RUNTIME", "RESIDENT", "FOOTPRINT", "LOAD MS", "INPUTS", "OUTPUTS"], rows))


def _print_status(status: dict[str, Any]) -> None:
    keys = [
        "version",
        "device",
        "endpoint",
        "pid",
        "uptime_s",
        "state",
        "auth",
        "slots",
        "threads_per_model",
        "queued",
        "running",
        "models",
        "switches",
    ]
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key.ljust(width)}  {status.get(key)}")
    for key in ("resident", "tenants", "runtimes"):
        print(f"{key.ljust(width)}  {', '.join(status.get(key) or []) or '-'}")
    for key in ("queue_depths", "requests", "errors"):
        value = status.get(key) or {}
        print(f"{key.ljust(width)}  {', '.join(f'{k}={v}' for k, v in value.items()) or '-'}")
    for damaged in status.get("damaged_models") or []:  # absent from daemons older than the list
        print(f"DAMAGED  model {damaged['model']} of tenant {damaged['tenant']}: {damaged['reason']}")
    memory = status.get("memory")
    if memory:
        emulated = " (emulated on this device)" if memory["emulated"] else ""
        print(
            f"\nmemory: profile {memory['profile']}{emulated}, {memory['memory_model']} memory, "
            f"overcommit {memory['overcommit']}"
        )
        for key in ("capacity_bytes", "reserve_bytes", "host_other_bytes", "budget_bytes", "used_bytes", "free_bytes"):
            print(f"  {key.removesuffix('_bytes').ljust(10)}  {_mib(memory[key]):>12}")
        overheads = ", ".join(f"{k} {_mib(v)}" for k, v in memory["runtime_overhead_bytes"].items()) or "-"
        print(f"  {'runtimes'.ljust(10)}  {overheads}")
        print(f"  {'models'.ljust(10)}  {memory['models_admitted']} admitted")
        refusal = memory.get("last_refusal")
        if refusal:
            print(f"  last refused: {refusal['reason']} (tenant {refusal['tenant']})")
    residency = status.get("residency")
    if residency:
        mode = f"swapping by {residency['swapping']}" if residency["swapping"] else "every model stays loaded"
        mean = residency["mean_switch_overhead_ms"]
        print(f"\nresidency: {mode}; loaded: {', '.join(residency['loaded']) or '-'}")
        print(
            f"  switches {residency['switches']}, reloads {residency['reloads']}, evictions {residency['evictions']}, "
            f"mean switch overhead {'-' if mean is None else f'{mean:.2f} ms'}"
        )


def _print_events(events: list[dict[str, Any]]) -> None:
    for record in events:
        ts = datetime.datetime.fromtimestamp(record.pop("ts", 0)).isoformat(timespec="milliseconds")
        kind = record.pop("event", "?")
        record.pop("pid", None)
        fields = " ".join(f"{k}={json.dumps(v) if isinstance(v, str | dict | list) else v}" for k, v in record.items())
        print(f"{ts}  {kind:<16} {fields}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantctl", description="Control and use a running tenantd daemon.")
    parser.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"daemon endpoint (env TENANTD_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply (default 30)")
    parser.add_argument(
        "--key",
        default=os.environ.get("TENANTD_KEY"),
        help="your secret key file (NAME.key_secret) for a daemon run with --auth keys (env TENANTD_KEY)",
    )
    parser.add_argument(
        "--server-key",
        default=os.environ.get("TENANTD_SERVER_KEY"),
        help="the daemon's public key file (STATE_DIR/keys/server.key) (env TENANTD_SERVER_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's raw answer as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="the daemon's device, slots, queues, models and counters")
    commands.add_parser("metrics", help="the same figures in the Prometheus text format")
    models = commands.add_parser("models", help="list models (all, or one tenant's)")
    models.add_argument("--tenant", help="only this tenant's models")
    events = commands.add_parser("events", help="print the daemon's event log, oldest first")
    events.add_argument("--limit", type=int, default=50, help="how many of the latest events (default 50)")
    events.add_argument("--event", help="only events of this kind, e.g. switch, model.refused")
    submit = commands.add_parser("submit", help="upload a model file for a tenant")
    submit.add_argument("file", type=Path, help="model file, e.g. model.tflite")
    submit.add_argument("--name", required=True, help="model name (unique on this daemon)")
    submit.add_argument("--tenant", required=True, help="tenant that will own the model")
    submit.add_argument("--runtime", help="runtime to use (default: chosen from the file suffix)")
    submit.add_argument("--replace", action="store_true", help="replace the tenant's model of the same name")
    policy = commands.add_parser("policy", help="show the policy in force, or apply a new one (operator)")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    policy_commands.add_parser("show", help="print the policy in force")
    policy_set = policy_commands.add_parser("set", help="apply a policy file without restarting the daemon")
    policy_set.add_argument("file", type=Path, help="policy TOML file (see policies/)")
    keys = commands.add_parser("keys", help="issue, list and withdraw CurveZMQ keys (operator, on the daemon's host)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    for verb, text in (("add", "issue a key; prints where the secret key file is"), ("remove", "withdraw a key")):
        sub = keys_commands.add_parser(verb, help=text)
        sub.add_argument("name", help="tenant (or operator) name")
        sub.add_argument("--operator", action="store_true", help="an operator key, not a tenant's")
        sub.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
    keys_list = keys_commands.add_parser("list", help="list registered keys")
    keys_list.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
    keys_commands.add_parser("reload", help="make the running daemon apply the keys folder (operator key)")
    remove = commands.add_parser("remove", help="remove a tenant's model")
    remove.add_argument("name", help="model name")
    remove.add_argument("--tenant", required=True, help="tenant that owns the model")

    pipelines = commands.add_parser("pipelines", help="list pipelines (all, or one tenant's)")
    pipelines.add_argument("--tenant", help="only this tenant's")
    pipeline = commands.add_parser("pipeline", help="define or remove a tenant's edge-to-cloud pipeline")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pipe_set = pipeline_commands.add_parser(
        "set",
        help="chain an edge model here to a cloud model through an operator's uplink",
        description="Then 'infer' on NAME runs the edge model, and the cloud model when needed.",
    )
    pipe_set.add_argument("name", help="pipeline name (shares the namespace of model names)")
    pipe_set.add_argument("--tenant", required=True, help="tenant that owns it and the edge model")
    pipe_set.add_argument("--kind", required=True, choices=["split", "cascade"], help="split (head/tail) or cascade")
    pipe_set.add_argument("--edge-model", required=True, help="the head (split) or compact model (cascade) here")
    pipe_set.add_argument("--uplink", required=True, help="an uplink the operator configured ([uplinks.NAME])")
    pipe_set.add_argument("--cloud-model", required=True, help="the model's name on the other daemon")
    pipe_set.add_argument("--encoding", default="none", help="none, zlib, lz4, float16, int8, or e.g. int8+zlib")
    pipe_set.add_argument("--threshold", type=float, help="cascade: forward when the top confidence is below this")
    pipe_set.add_argument("--confidence-output", help="cascade: the edge output holding class scores")
    pipe_set.add_argument(
        "--on-cloud-failure", choices=["error", "edge"], default="error", help="cascade: fall back to the edge answer"
    )
    pipe_set.add_argument("--timeout-ms", type=float, help="longest wait for the cloud stage")
    pipe_set.add_argument("--replace", action="store_true", help="redefine an existing pipeline")
    pipe_remove = pipeline_commands.add_parser("remove", help="remove a pipeline (its models stay)")
    pipe_remove.add_argument("name", help="pipeline name")
    pipe_remove.add_argument("--tenant", required=True, help="tenant that owns it")
    return parser


def _pipeline_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": args.kind,
        "edge_model": args.edge_model,
        "uplink": args.uplink,
        "cloud_model": args.cloud_model,
        "encoding": args.encoding,
    }
    for key in ("threshold", "confidence_output", "timeout_ms"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.on_cloud_failure != "error":
        spec["on_cloud_failure"] = args.on_cloud_failure
    return spec


def _print_pipelines(found: list[dict[str, Any]]) -> None:
    if not found:
        print("no pipelines")
        return
    print(f"{'name':<16} {'owner':<12} {'kind':<8} {'edge model':<16} {'uplink':<10} {'cloud model':<16} encoding")
    for p in found:
        extra = f" threshold {p['threshold']}" if p.get("threshold") is not None else ""
        print(
            f"{p['name']:<16} {p['owner']:<12} {p['kind']:<8} {p['edge_model']:<16} {p['uplink']:<10} "
            f"{p['cloud_model']:<16} {p['encoding']}{extra}"
        )


def run_keys(args: argparse.Namespace) -> Any:
    """Key management works on the state directory's files; the daemon applies them on reload."""
    role = "operator" if getattr(args, "operator", False) else "tenant"
    if args.keys_command == "add":
        secret = auth.add_tenant(args.state_dir, args.name, role)
        result = {"name": args.name, "role": role, "secret_key_file": str(secret)}
        if not args.json:
            print(f"issued a {role} key for {args.name}: give them {secret} (keep it secret), and the server key")
            print(f"{auth.KeyRing.load(args.state_dir).server_public_key_file}; then run 'tenantctl keys reload'")
        return result
    if args.keys_command == "remove":
        auth.remove(args.state_dir, args.name, role)
        if not args.json:
            print(f"withdrew the {role} key of {args.name}; run 'tenantctl keys reload' to apply it")
        return {"removed": args.name, "role": role}
    identities = [str(i) for i in auth.KeyRing.load(args.state_dir).identities()]
    if not args.json:
        print("\n".join(identities) or "no keys registered")
    return identities


def run(args: argparse.Namespace) -> Any:
    if args.command == "keys" and args.keys_command != "reload":
        return run_keys(args)
    tenant = getattr(args, "tenant", None)
    curve = {"key_file": args.key, "server_key": args.server_key} if args.key or args.server_key else {}
    with TenantClient(args.endpoint, tenant=tenant, timeout=args.timeout, **curve) as client:
        if args.command == "keys":
            identities = client.reload_keys()
            return identities if args.json else print("keys reloaded: " + (", ".join(identities) or "none"))
        if args.command == "status":
            status = client.status()
            return status if args.json else _print_status(status)
        if args.command == "metrics":
            text = client.metrics()
            return {"text": text} if args.json else print(text, end="")
        if args.command == "models":
            found = client.list_models()
            return [m.__dict__ for m in found] if args.json else _print_models(found)
        if args.command == "events":
            events = client.events(limit=args.limit, event=args.event)
            return events if args.json else _print_events(events)
        if args.command == "submit":
            if not args.file.is_file():
                raise SystemExit(f"tenantctl: {args.file} is not a file")
            info = client.submit_model(args.file, args.name, runtime=args.runtime, replace=args.replace)
            if args.json:
                return info.__dict__
            print(
                f"submitted {info.name} for tenant {info.owner}: runtime {info.runtime}, "
                f"footprint {_mib(info.footprint_bytes)}, load {info.load_ms:.1f} ms"
            )
            _print_models([info])
            return None
        if args.command == "policy" and args.policy_command == "show":
            shown = client.policy_show()
            if args.json:
                return shown
            for key, value in shown["policy"].items():
                print(f"{key} = {value!r}")
            print(f"# restart-only: {', '.join(shown['restart_only'])}")
            return None
        if args.command == "policy":
            if not args.file.is_file():
                raise SystemExit(f"tenantctl: {args.file} is not a file")
            applied = client.policy_set(args.file.read_text())
            if args.json:
                return applied
            print(f"policy applied; changed: {', '.join(applied['changed']) or 'nothing'}")
            for note in applied["consequences"]:
                print(f"  note: {note}")
            return None
        if args.command == "pipelines":
            listed = client.list_pipelines()
            return listed if args.json else _print_pipelines(listed)
        if args.command == "pipeline" and args.pipeline_command == "set":
            defined = client.set_pipeline(args.name, _pipeline_spec(args), replace=args.replace)
            return defined if args.json else print(f"pipeline {defined['name']} set for tenant {defined['owner']}")
        if args.command == "pipeline":
            client.remove_pipeline(args.name)
            return {"removed": args.name} if args.json else print(f"removed pipeline {args.name}")
        if args.command == "remove":
            client.remove_model(args.name)
            return {"removed": args.name} if args.json else print(f"removed {args.name}")
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except RequestTimeout as exc:
        print(f"tenantctl: {exc.message}", file=sys.stderr)
        return 3
    except TenantError as exc:
        print(f"tenantctl: {exc}", file=sys.stderr)
        return 1
    except (auth.AuthConfigError, ValueError) as exc:
        print(f"tenantctl: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
