"""``tenantctl``: the operator's and tenant's command line for a running tenantd.

    tenantctl --endpoint ipc:///run/tenantd.sock status
    tenantctl ping                               (is the daemon there; round trip)
    tenantctl infer MODEL FILE.npy|FILE.npz --tenant T [--out OUT.npz]
    tenantctl models [--tenant T]
    tenantctl events [--limit N] [--event KIND]
    tenantctl submit FILE --name N --tenant T [--runtime R] [--replace] [--compiler-log FILE]
    tenantctl remove N --tenant T
    tenantctl policy show | policy set FILE     (set: operator only)
    tenantctl keys reload                       (operator only)
    tenantctl pipelines [--tenant T] | pipeline set NAME ... | pipeline remove NAME --tenant T

Every command is a request to the daemon over the wire; issuing and withdrawing keys works on
the daemon's files instead, so it is ``tenantd keys add|remove|list`` on the daemon's host.

Each command is one small class in :data:`COMMANDS`: its path, its arguments, the client call,
and its text and JSON output; its docstring is its help. ``--json`` prints the daemon's raw
answer instead of text. The global options (``--endpoint``, ``--json``, ``--timeout``, ``--retries``,
``--key``, ``--server-key``) go before or after the command. Exit status: 0 on success (also when
the reader of the output went away, as ``| head`` does), 1 when the daemon refused the request (its
error code is printed) or refused this client's keys at the handshake, 2 on a usage error, 3 when
no reply came in time.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import shlex
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from tenantclient.client import InferResult, ModelInfo, TenantClient
from tenantclient.errors import AlreadyExists, RequestTimeout, TenantError
from tenantclient.retry import RetryPolicy
from tenantwire import paths

T = TypeVar("T")

# The socket tenantd serve binds by default (tenantwire.paths): TENANTD_ENDPOINT, else the system
# or this user's daemon.
DEFAULT_ENDPOINT = paths.client_endpoint()


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
    for key in ("queue_depths", "batches", "requests", "errors"):  # batches: calls per batch size above 1
        value = status.get(key) or {}
        print(f"{key.ljust(width)}  {', '.join(f'{k}={v}' for k, v in value.items()) or '-'}")
    instances = (status.get("residency") or {}).get("instances") or {}  # absent from older daemons
    print(f"{'instances'.ljust(width)}  {', '.join(f'{k}={v}' for k, v in instances.items()) or '-'}")
    for damaged in status.get("damaged_models") or []:  # absent from daemons older than the list
        print(f"DAMAGED  model {damaged['model']} of tenant {damaged['tenant']}: {damaged['reason']}")
    memory = status.get("memory")
    if memory:
        emulated = " (emulated on this device)" if memory["emulated"] else ""
        print(
            f"\nmemory: profile {memory['profile']}{emulated}, {memory['memory_model']} memory, "
            f"overcommit {memory['overcommit']}"
        )
        # budget_source is absent from older daemons: theirs is always measured.
        twin = memory.get("budget_source", "measured") == "twin"
        source = "the device twin's memory model (modelled)" if twin else "measured on this host"
        note = f": {memory['budget_note']}" if memory.get("budget_note") else ""
        print(f"  {'budget'.ljust(10)}  {source}{note}")
        for key in ("capacity_bytes", "reserve_bytes", "host_other_bytes", "budget_bytes", "used_bytes", "free_bytes"):
            print(f"  {key.removesuffix('_bytes').ljust(10)}  {_mib(memory[key]):>12}")
        overheads = ", ".join(f"{k} {_mib(v)}" for k, v in memory["runtime_overhead_bytes"].items()) or "-"
        print(f"  {'runtimes'.ljust(10)}  {overheads}")
        print(f"  {'models'.ljust(10)}  {memory['models_admitted']} admitted")
        extra = ", ".join(f"{k} {_mib(v)}" for k, v in (memory.get("instance_bytes") or {}).items())
        print(f"  {'instances'.ljust(10)}  {extra or '-'} (charged for instances past the first)")
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


class UsageError(Exception):
    """The command line asks for something tenantctl does not do (exit status 2)."""


class Command(ABC):
    """One tenantctl command. The class docstring is its help: the first line in the command
    list, the rest (if any) as the command's description."""

    path: tuple[str, ...]  # ("status",), or ("policy", "show") for a command in a group

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's own arguments (the global ones are in :func:`build_parser`); none by default."""
        return None

    @abstractmethod
    def run(self, args: argparse.Namespace) -> Any:
        """Do the command; print its text, or return what ``--json`` prints."""

    def help(self) -> tuple[str, str | None]:
        first, _, rest = inspect.cleandoc(self.__doc__ or "").partition("\n")
        return first, rest.strip() or None

    def hint(self, error: TenantError) -> str | None:
        """What to do about ``error`` in this command's flags, printed after it; none by default."""
        return None


class ClientCommand(Command, Generic[T]):
    """A command that is one request to the daemon."""

    @abstractmethod
    def call(self, client: TenantClient, args: argparse.Namespace) -> T:
        """Ask the daemon; the result goes to :meth:`text` or :meth:`json`."""

    @abstractmethod
    def text(self, result: T, args: argparse.Namespace) -> None:
        """Print the result for a person."""

    def json(self, result: T) -> Any:
        """The result for ``--json``: by default the daemon's answer as it came."""
        return result

    def run(self, args: argparse.Namespace) -> Any:
        # --tenant, where a command has it, names whom the request is for (with keys, the key decides).
        tenant = getattr(args, "tenant", None)
        curve = {"key_file": args.key, "server_key": args.server_key} if args.key or args.server_key else {}
        retry = RetryPolicy(retries=args.retries) if args.retries else None
        with TenantClient(args.endpoint, tenant=tenant, timeout=args.timeout, retry=retry, **curve) as client:
            result = self.call(client, args)
        if args.json:
            return self.json(result)
        self.text(result, args)
        return None


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"tenantctl: {path} is not a file")
    return path


# ------------------------------------------------------------------------------- commands


class Status(ClientCommand[dict[str, Any]]):
    """the daemon's device, slots, queues, models and counters"""

    path = ("status",)

    def call(self, client: TenantClient, args: argparse.Namespace) -> dict[str, Any]:
        return client.status()

    def text(self, result: dict[str, Any], args: argparse.Namespace) -> None:
        _print_status(result)


class Ping(ClientCommand[dict[str, Any]]):
    """is the daemon there: its version, and the round trip"""

    path = ("ping",)

    def call(self, client: TenantClient, args: argparse.Namespace) -> dict[str, Any]:
        started = time.perf_counter()
        answer = client.ping()
        return {**answer, "round_trip_ms": (time.perf_counter() - started) * 1e3}

    def text(self, result: dict[str, Any], args: argparse.Namespace) -> None:
        print(
            f"pong from {args.endpoint}: tenantd {result.get('version')}, protocol {result.get('protocol')}, "
            f"{result['round_trip_ms']:.2f} ms"
        )


def _read_inputs(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy file is the one input of a single-input model; a .npz file holds inputs by name."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise UsageError(f"{path}: inputs are a .npy file (one array) or a .npz file (arrays by input name)")
    try:
        loaded = np.load(_existing_file(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a numpy {suffix} file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {name: loaded[name] for name in loaded.files}


class Infer(ClientCommand[InferResult]):
    """run a model on inputs from a .npy or .npz file: outputs' shapes and dtypes, and timings

    A .npy file is the input of a single-input model; a .npz file holds the inputs by name
    (numpy.savez(FILE, NAME=array, ...)). --out writes the outputs to a .npz file by name.
    """

    path = ("infer",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="model (or pipeline) name")
        parser.add_argument("inputs", type=Path, help="FILE.npy (one input) or FILE.npz (inputs by name)")
        parser.add_argument("--tenant", help="tenant that owns the model (with keys, the key decides)")
        parser.add_argument("--deadline-ms", type=float, help="drop the request if it cannot start within this")
        parser.add_argument("--out", type=Path, help="write the outputs to this .npz file")

    def call(self, client: TenantClient, args: argparse.Namespace) -> InferResult:
        if args.out is not None and args.out.suffix.lower() != ".npz":
            raise UsageError(f"--out {args.out}: outputs are written as a .npz file")
        inputs = _read_inputs(args.inputs)
        started = time.perf_counter()
        result = client.infer_detailed(args.model, inputs, deadline_ms=args.deadline_ms)
        result.timings["round_trip_ms"] = (time.perf_counter() - started) * 1e3
        if args.out is not None:
            savez: Any = np.savez  # its stubs read a ** mapping as its allow_pickle flag
            savez(args.out, **result.outputs)
        return result

    def text(self, result: InferResult, args: argparse.Namespace) -> None:
        rows = [(name, str(a.dtype), list(a.shape)) for name, a in result.outputs.items()]
        print(_table(["OUTPUT", "DTYPE", "SHAPE"], rows))
        times = result.timings
        shown = [
            f"{k.removesuffix('_ms').replace('_', ' ')} {times[k]:.3f} ms"
            for k in _TIMINGS
            if isinstance(times.get(k), int | float)
        ]
        print("timings: " + ", ".join(shown))
        if args.out is not None:
            print(f"outputs written to {args.out}")

    def json(self, result: InferResult) -> Any:
        outputs = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in result.outputs.items()}
        return {"outputs": outputs, "timings": result.timings}


_TIMINGS = ("queue_ms", "switch_ms", "compute_ms", "total_ms", "round_trip_ms")


class Metrics(ClientCommand[str]):
    """the daemon's Prometheus metrics, as 'tenantd serve --metrics' serves them over HTTP"""

    path = ("metrics",)

    def call(self, client: TenantClient, args: argparse.Namespace) -> str:
        return client.metrics()

    def text(self, result: str, args: argparse.Namespace) -> None:
        print(result, end="")

    def json(self, result: str) -> Any:
        return {"text": result}


class Models(ClientCommand[list[ModelInfo]]):
    """list models (all, or one tenant's)"""

    path = ("models",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tenant", help="only this tenant's models")

    def call(self, client: TenantClient, args: argparse.Namespace) -> list[ModelInfo]:
        return client.list_models()

    def text(self, result: list[ModelInfo], args: argparse.Namespace) -> None:
        _print_models(result)

    def json(self, result: list[ModelInfo]) -> Any:
        return [m.__dict__ for m in result]


class Events(ClientCommand[list[dict[str, Any]]]):
    """print the daemon's event log, oldest first"""

    path = ("events",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=50, help="how many of the latest events (default 50)")
        parser.add_argument("--event", help="only events of this kind, e.g. switch, model.refused")

    def call(self, client: TenantClient, args: argparse.Namespace) -> list[dict[str, Any]]:
        return client.events(limit=args.limit, event=args.event)

    def text(self, result: list[dict[str, Any]], args: argparse.Namespace) -> None:
        _print_events(result)


class Submit(ClientCommand[ModelInfo]):
    """upload a model file for a tenant"""

    path = ("submit",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="model file, e.g. model.tflite")
        parser.add_argument("--name", required=True, help="model name (unique on this daemon)")
        parser.add_argument("--tenant", required=True, help="tenant that will own the model")
        parser.add_argument("--runtime", help="runtime to use (default: chosen from the file suffix)")
        parser.add_argument("--replace", action="store_true", help="replace the tenant's model of the same name")
        parser.add_argument(
            "--compiler-log",
            type=Path,
            metavar="FILE",
            help="EdgeTPU models: a file holding what edgetpu_compiler printed on its standard output "
            "(not its *_edgetpu.log), so the daemon knows the model's on-chip and streamed parameter bytes; "
            "without it they are estimated from the file",
        )

    def call(self, client: TenantClient, args: argparse.Namespace) -> ModelInfo:
        model = _existing_file(args.file)
        log = _existing_file(args.compiler_log).read_text(errors="replace") if args.compiler_log else None
        return client.submit_model(model, args.name, runtime=args.runtime, replace=args.replace, compiler_log=log)

    def hint(self, error: TenantError) -> str | None:
        return "add --replace to replace it" if isinstance(error, AlreadyExists) else None

    def text(self, result: ModelInfo, args: argparse.Namespace) -> None:
        print(
            f"submitted {result.name} for tenant {result.owner}: runtime {result.runtime}, "
            f"footprint {_mib(result.footprint_bytes)}, load {result.load_ms:.1f} ms"
        )
        _print_models([result])

    def json(self, result: ModelInfo) -> Any:
        return result.__dict__


class Remove(ClientCommand[str]):
    """remove a tenant's model"""

    path = ("remove",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="model name")
        parser.add_argument("--tenant", required=True, help="tenant that owns the model")

    def call(self, client: TenantClient, args: argparse.Namespace) -> str:
        client.remove_model(args.name)
        return str(args.name)

    def text(self, result: str, args: argparse.Namespace) -> None:
        print(f"removed {result}")

    def json(self, result: str) -> Any:
        return {"removed": result}


class PolicyShow(ClientCommand[dict[str, Any]]):
    """print the policy in force"""

    path = ("policy", "show")

    def call(self, client: TenantClient, args: argparse.Namespace) -> dict[str, Any]:
        return client.policy_show()

    def text(self, result: dict[str, Any], args: argparse.Namespace) -> None:
        """As a policy file: what it prints, ``policy set`` accepts (fields left unset are comments)."""
        print(policy_toml(result["policy"]), end="")
        print(f"# restart-only: {', '.join(result['restart_only'])}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} as TOML")


def policy_toml(policy: dict[str, Any]) -> str:
    """The policy map ``policy_show`` returns, as the TOML of a policy file."""
    lines = []
    tables = {k: v for k, v in policy.items() if isinstance(v, dict)}
    for key, value in policy.items():
        if key in tables:
            continue
        lines.append(f"# {key}: unset (the default applies)" if value is None else f"{key} = {_toml_value(value)}")
    for group, entries in tables.items():
        for name, fields in entries.items():
            lines.append(f"\n[{group}.{json.dumps(name)}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items() if v is not None and not isinstance(v, dict)]
            # A table inside (a tenant's per-model batching): [tenants."alice".models."cnn"].
            for sub, inner in ((k, v) for k, v in fields.items() if isinstance(v, dict)):
                for inner_name, inner_fields in inner.items():
                    lines.append(f"\n[{group}.{json.dumps(name)}.{sub}.{json.dumps(inner_name)}]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in inner_fields.items() if v is not None]
    return "\n".join(lines) + "\n"


class PolicySet(ClientCommand[dict[str, Any]]):
    """apply a policy file without restarting the daemon"""

    path = ("policy", "set")

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="policy TOML file (see policies/)")

    def call(self, client: TenantClient, args: argparse.Namespace) -> dict[str, Any]:
        return client.policy_set(_existing_file(args.file).read_text())

    def text(self, result: dict[str, Any], args: argparse.Namespace) -> None:
        print(f"policy applied; changed: {', '.join(result['changed']) or 'nothing'}")
        for note in result["consequences"]:
            print(f"  note: {note}")


class KeysReload(ClientCommand[list[str]]):
    """make the running daemon apply the keys folder (operator key)"""

    path = ("keys", "reload")

    def call(self, client: TenantClient, args: argparse.Namespace) -> list[str]:
        return client.reload_keys()

    def text(self, result: list[str], args: argparse.Namespace) -> None:
        print("keys reloaded: " + (", ".join(result) or "none"))


class KeysOnTheDaemonHost(Command):
    """Issuing, withdrawing and listing keys work on the daemon's state directory, not over the
    wire, so they are the daemon's CLI's: this says so, with the command to run there. It still
    takes the arguments it used to, to turn them into that command."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.path = ("keys", verb)

    def help(self) -> tuple[str, str | None]:
        return f"moved: 'tenantd keys {self.verb}', on the daemon's host", None

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.verb != "list":
            parser.add_argument("name", nargs="?", help="tenant (or operator) name")
            parser.add_argument("--operator", action="store_true", help="an operator key, not a tenant's")
        parser.add_argument("--state-dir", type=Path, help="the daemon's state directory")

    def run(self, args: argparse.Namespace) -> Any:
        command = ["tenantd", "keys", self.verb]
        if self.verb != "list":
            command += [args.name or "NAME", *(["--operator"] if args.operator else [])]
        command += ["--state-dir", str(args.state_dir or "STATE_DIR"), *(["--json"] if args.json else [])]
        raise UsageError(f"keys {self.verb} works on the daemon's files; on its host, run: {shlex.join(command)}")


class Pipelines(ClientCommand[list[dict[str, Any]]]):
    """list pipelines (all, or one tenant's)"""

    path = ("pipelines",)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tenant", help="only this tenant's")

    def call(self, client: TenantClient, args: argparse.Namespace) -> list[dict[str, Any]]:
        return client.list_pipelines()

    def text(self, result: list[dict[str, Any]], args: argparse.Namespace) -> None:
        _print_pipelines(result)


class PipelineSet(ClientCommand[dict[str, Any]]):
    """chain an edge model here to a cloud model through an operator's uplink

    Then 'infer' on NAME runs the edge model, and the cloud model when needed.
    """

    path = ("pipeline", "set")

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="pipeline name (shares the namespace of model names)")
        parser.add_argument("--tenant", required=True, help="tenant that owns it and the edge model")
        parser.add_argument("--kind", required=True, choices=["split", "cascade"], help="split (head/tail) or cascade")
        parser.add_argument("--edge-model", required=True, help="the head (split) or compact model (cascade) here")
        parser.add_argument("--uplink", required=True, help="an uplink the operator configured ([uplinks.NAME])")
        parser.add_argument("--cloud-model", required=True, help="the model's name on the other daemon")
        parser.add_argument("--encoding", default="none", help="none, zlib, lz4, float16, int8, or e.g. int8+zlib")
        parser.add_argument("--threshold", type=float, help="cascade: forward when the top confidence is below this")
        parser.add_argument("--confidence-output", help="cascade: the edge output holding class scores")
        parser.add_argument(
            "--on-cloud-failure",
            choices=["error", "edge"],
            default="error",
            help="cascade: fall back to the edge answer",
        )
        parser.add_argument("--timeout-ms", type=float, help="longest wait for the cloud stage")
        parser.add_argument("--replace", action="store_true", help="redefine an existing pipeline")

    def call(self, client: TenantClient, args: argparse.Namespace) -> dict[str, Any]:
        return client.set_pipeline(args.name, _pipeline_spec(args), replace=args.replace)

    def hint(self, error: TenantError) -> str | None:
        return "add --replace to redefine it" if isinstance(error, AlreadyExists) else None

    def text(self, result: dict[str, Any], args: argparse.Namespace) -> None:
        print(f"pipeline {result['name']} set for tenant {result['owner']}")


class PipelineRemove(ClientCommand[str]):
    """remove a pipeline (its models stay)"""

    path = ("pipeline", "remove")

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="pipeline name")
        parser.add_argument("--tenant", required=True, help="tenant that owns it")

    def call(self, client: TenantClient, args: argparse.Namespace) -> str:
        client.remove_pipeline(args.name)
        return str(args.name)

    def text(self, result: str, args: argparse.Namespace) -> None:
        print(f"removed pipeline {result}")

    def json(self, result: str) -> Any:
        return {"removed": result}


# In the order of the help; a group (policy, keys, pipeline) is listed where its first command is.
COMMANDS: tuple[Command, ...] = (
    Status(),
    Ping(),
    Infer(),
    Metrics(),
    Models(),
    Events(),
    Submit(),
    PolicyShow(),
    PolicySet(),
    KeysReload(),
    KeysOnTheDaemonHost("add"),
    KeysOnTheDaemonHost("remove"),
    KeysOnTheDaemonHost("list"),
    Remove(),
    Pipelines(),
    PipelineSet(),
    PipelineRemove(),
)

GROUPS = {
    "policy": "show the policy in force, or apply a new one (operator)",
    "keys": "make the daemon reload its keys (operator); 'tenantd keys' issues them",
    "pipeline": "define or remove a tenant's edge-to-cloud pipeline",
}


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options of every command. On the top parser with their defaults; on each command's
    parser again without (argparse.SUPPRESS), so that they may come after the command too and one
    given before it is not reset there."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--endpoint",
        default=default(DEFAULT_ENDPOINT),
        help=f"daemon endpoint (env TENANTD_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--timeout", type=float, default=default(30.0), help="seconds to wait for a reply (default 30)")
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=default(0),
        help="retry QUEUE_FULL/UNAVAILABLE this many times, with jittered backoff (inference and reads "
        "only; default 0)",
    )
    parser.add_argument(
        "--key",
        default=default(os.environ.get("TENANTD_KEY")),
        help="your secret key file (NAME.key_secret) for a daemon run with --auth keys (env TENANTD_KEY)",
    )
    parser.add_argument(
        "--server-key",
        default=default(os.environ.get("TENANTD_SERVER_KEY")),
        help="the daemon's public key file (STATE_DIR/keys/server.key) (env TENANTD_SERVER_KEY)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the daemon's raw answer as JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantctl", description="Control and use a running tenantd daemon.")
    _global_options(parser, defaults=True)
    anywhere = argparse.ArgumentParser(add_help=False)
    _global_options(anywhere, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        *group, name = command.path
        parent = commands
        if group:
            (title,) = group
            if title not in groups:
                grouped = commands.add_parser(title, help=GROUPS[title], parents=[anywhere])
                groups[title] = grouped.add_subparsers(dest=f"{title}_command", required=True)
            parent = groups[title]
        text, description = command.help()
        sub = parent.add_parser(name, help=text, description=description, parents=[anywhere])
        command.arguments(sub)
        sub.set_defaults(handler=command)
    return parser


def _refusal(command: Command, error: TenantError) -> str:
    """The daemon's refusal for a person, with the command's hint in its flags' words."""
    hint = command.hint(error)
    return f"tenantctl: {error}" + (f"; {hint}" if hint else "")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value.__dict__ if hasattr(value, "__dict__") else str(value)


def _run(args: argparse.Namespace) -> int:
    command: Command = args.handler
    try:
        result = command.run(args)
    except RequestTimeout as exc:
        print(f"tenantctl: {exc.message}", file=sys.stderr)
        return 3
    except TenantError as exc:
        print(_refusal(command, exc), file=sys.stderr)
        return 1
    except (UsageError, ValueError) as exc:  # ValueError: e.g. a key file that is not one
        print(f"tenantctl: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows here at the latest
    except BrokenPipeError:
        # The reader stopped reading (``tenantctl events | head``): that is its choice, not a
        # failure. Point stdout at /dev/null so the interpreter's own flush at exit is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return status


if __name__ == "__main__":
    raise SystemExit(main())
