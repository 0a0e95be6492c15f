"""``tenantd``: the daemon's command line. ``tenantd serve`` runs one daemon for one device;
``tenantd devices`` lists the devices attached to this host and the runtimes that serve them;
``tenantd keys add|remove|list|token`` issues, withdraws and lists CurveZMQ keys (and the bearer
tokens of the KServe front doors) in a state directory.

Everything here works on this host (its devices, a daemon's files); what a client asks of a
running daemon over the wire is ``tenantctl``'s.

The daemon prints exactly one line to stdout, beginning ``tenantd ready``, once it is serving;
everything else (logs) goes to stderr. Scripts and tests wait for that line, never for a delay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tenantd import __version__, auth, logs, tokens
from tenantd.config import ConfigError, load_policy
from tenantd.daemon import Daemon, ServeConfig
from tenantd.devices import PROFILES
from tenantd.devices.detect import detect, format_table, pick_auto
from tenantd.store import StoreUnusable
from tenantwire import paths

log = logging.getLogger("tenantd")
STATE_DIR_HELP = "the daemon's state directory (default as for 'tenantd serve': %(default)s)"

# Exit statuses of ``tenantd serve`` besides 0 (stopped cleanly), as its --help lists them.
EXIT_CONFIG = 2  # the policy, endpoint, device or state directory is wrong or in use
EXIT_STORE = 3  # the model store cannot be used safely (tenantd.store.StoreUnusable); nothing was changed
SERVE_EXIT_STATUS = f"""exit status:
  0  stopped cleanly (SIGINT/SIGTERM)
  1  an unexpected failure (with a traceback)
  {EXIT_CONFIG}  a configuration error: the policy, endpoint or device is wrong, or the state directory is in
     use by another tenantd
  {EXIT_STORE}  the model store in STATE_DIR cannot be used safely: tenantd.db is missing or empty while model
     files exist under STATE_DIR/blobs, unreadable, damaged, or of another schema version. The one-line
     message says which and how to recover (restore tenantd.db from a backup, or move tenantd.db and
     blobs/ aside to start an empty store); nothing was changed or deleted."""


def policy_examples() -> Path | None:
    """Where the example policies (``policies/``) are: in the installed package, or the source tree."""
    package = Path(__file__).resolve().parent
    for folder in (package / "policies", package.parent / "policies"):
        if (folder / "default.toml").is_file():
            return folder
    return None


def _serve(args: argparse.Namespace) -> int:
    # The default policy file may be absent (every default is in force then); one named is required.
    optional = args.policy is None and not os.environ.get("TENANTD_POLICY")
    policy_file = args.policy or paths.default_policy()
    # Only the default socket's folder is created: a named endpoint whose folder is missing is a typo.
    default_endpoint = args.endpoint is None and not os.environ.get("TENANTD_ENDPOINT")
    args.endpoint = args.endpoint or paths.default_endpoint()
    args.state_dir = args.state_dir or paths.default_state_dir()
    try:
        policy = load_policy(None if optional and not policy_file.exists() else policy_file)
        if default_endpoint:
            _make_socket_dir(args.endpoint)
    except ConfigError as exc:
        print(f"tenantd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if optional and not policy_file.exists():
        log.info("no policy file at %s: every default is in force (examples: %s)", policy_file, policy_examples())
    auto = ""
    if args.device == "auto":
        chosen, why = pick_auto(detect())
        args.device = chosen.device
        auto = " auto=true"
        log.info("--device auto: %s", why)

    async def run() -> None:
        daemon = Daemon(
            ServeConfig(
                device=args.device,
                endpoint=args.endpoint,
                state_dir=args.state_dir,
                policy=policy,
                profile=args.profile,
                auth=args.auth,
                metrics=args.metrics,
                policy_file=policy_file,
                policy_file_optional=optional,
                http=args.http,
                grpc=args.grpc,
                timing=args.timing,
            )
        )
        daemon.install_signal_handlers()

        def ready(endpoint: str) -> None:
            emulated = " emulated=true" if daemon.emulated else ""
            metrics = f" metrics={daemon.metrics_server.address}" if daemon.metrics_server else ""
            doors = "".join(f" {n}={d.bound}" for n, d in (("http", daemon.http), ("grpc", daemon.grpc)) if d)
            print(
                f"tenantd ready endpoint={endpoint} device={args.device}{auto} profile={daemon.profile.name}"
                f"{emulated} slots={daemon.info.slots} timing={args.timing}{metrics}{doors}",
                flush=True,
            )

        await daemon.serve(ready)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"tenantd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreUnusable as exc:
        print(f"tenantd: {exc}", file=sys.stderr)
        return EXIT_STORE
    return 0


def _make_socket_dir(endpoint: str) -> None:
    """Create the default socket's folder (``/run/tenantd`` without systemd, or this user's)."""
    socket_path = paths.ipc_path(endpoint)
    if socket_path is None or socket_path.parent.exists():
        return
    try:
        socket_path.parent.mkdir(mode=0o750, parents=True)
    except OSError as exc:
        why = exc.strerror or exc
        raise ConfigError(f"cannot create {socket_path.parent} for the socket {endpoint}: {why}") from None


def _devices(args: argparse.Namespace) -> int:
    found = detect(args.root)
    if args.json:
        chosen, why = pick_auto(found)
        print(
            json.dumps({"devices": [d.to_json() for d in found], "auto": chosen.device, "auto_reason": why}, indent=2)
        )
    else:
        print(format_table(found))
        print(f"--device auto: {pick_auto(found)[1]}")
    return 0


# Key management works on the state directory's files, so it runs on the daemon's host; a running
# daemon applies a change on `tenantctl keys reload` (a wire operation, operator key) or SIGHUP.
# Each action returns its JSON result and its text.


def _keys_add(args: argparse.Namespace) -> tuple[object, str]:
    role = "operator" if args.operator else "tenant"
    try:
        secret = auth.add_tenant(args.state_dir, args.name, role)
    except auth.KeyExists:
        remove = f"tenantd keys remove {args.name}{' --operator' if args.operator else ''} --state-dir {args.state_dir}"
        raise auth.AuthConfigError(
            f"{role} {args.name!r} already has a key; 'keys add' never replaces one: to issue a new key, "
            f"withdraw the old one first ({remove}), then add it again"
        ) from None
    token = tokens.issue_token(args.state_dir, args.name, role)
    server_key = auth.KeyRing.load(args.state_dir).server_public_key_file
    later = "" if server_key.exists() else " (written when the daemon first starts with keys)"
    text = (
        f"issued {'an' if args.operator else 'a'} {role} key for {args.name}: give them {secret} (keep it secret), "
        f"and the server key\n{server_key}{later}; for the HTTP/gRPC front doors, the bearer token in {token} "
        "(secret too); then run 'tenantctl keys reload'"
    )
    return {"name": args.name, "role": role, "secret_key_file": str(secret), "token_file": str(token)}, text


def _keys_token(args: argparse.Namespace) -> tuple[object, str]:
    role = "operator" if args.operator else "tenant"
    if args.name not in {i.name for i in auth.KeyRing.load(args.state_dir).identities() if i.role == role}:
        raise auth.AuthConfigError(f"no {role} named {args.name!r} is registered: 'tenantd keys add' it first")
    token = tokens.issue_token(args.state_dir, args.name, role)
    text = f"issued a new bearer token for {role} {args.name} in {token}; the old one works until a keys reload"
    return {"name": args.name, "role": role, "token_file": str(token)}, text


def _keys_remove(args: argparse.Namespace) -> tuple[object, str]:
    role = "operator" if args.operator else "tenant"
    auth.remove(args.state_dir, args.name, role)
    tokens.remove_token(args.state_dir, args.name, role)
    text = f"withdrew the {role} key of {args.name}; run 'tenantctl keys reload' to apply it"
    return {"removed": args.name, "role": role}, text


def _keys_list(args: argparse.Namespace) -> tuple[object, str]:
    identities = [str(i) for i in auth.KeyRing.load(args.state_dir).identities()]
    return identities, "\n".join(identities) or "no keys registered"


def _keys(action: Callable[[argparse.Namespace], tuple[object, str]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            result, text = action(args)
        except auth.AuthConfigError as exc:
            print(f"tenantd: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2) if args.json else text)
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantd", description="Multi-tenant inference daemon for one accelerator.")
    parser.add_argument("--version", action="version", version=f"tenantd {__version__}")
    # Accepted before or after the subcommand: the subcommands' copies leave an unset flag alone.
    for target, default in ((parser, None), (common := argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)):
        target.add_argument(
            "--log-level",
            type=str.upper,
            default=os.environ.get("TENANTD_LOG_LEVEL", "INFO") if default is None else default,
            choices=logs.LEVELS,
            help="log level (env TENANTD_LOG_LEVEL; default INFO)",
        )
        target.add_argument(
            "--log-format",
            default=os.environ.get("TENANTD_LOG_FORMAT", "text") if default is None else default,
            choices=logs.FORMATS,
            help="logs on stderr as text, or as one JSON object a line with the fields ts, level, logger, msg "
            "and extras such as event, tenant, model (env TENANTD_LOG_FORMAT; default text)",
        )
    commands = parser.add_subparsers(dest="command", required=True)
    examples = policy_examples()
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="own a device and serve tenants' models over ZeroMQ",
        # Wrapped here: the raw formatter that keeps the exit-status list as written keeps this too.
        description=textwrap.fill(
            "Own one device and serve tenants' models over a ZeroMQ ROUTER socket. "
            "Prints 'tenantd ready endpoint=... device=...' on stdout when serving (with http=URL and "
            "grpc=URL when those front doors are on); stops cleanly on "
            "SIGINT/SIGTERM after answering accepted requests. The device's runtime runs in a worker "
            'process the daemon supervises (policy: isolation = "process", the default; a crashed or '
            "hung worker is restarted and its models reloaded; worker_python picks its interpreter: "
            "Python 3.6 or newer with numpy and the vendor runtime, whose runtimes are then the device's "
            "whatever the daemon's own Python has; make oldpython builds 3.9 with "
            "tflite-runtime 2.14 and OpenVINO 2022.3), "
            'or in the daemon itself with isolation = "inline".',
            79,
        ),
        epilog=SERVE_EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--device",
        default="cpu",
        help="device to own: cpu, edgetpu:usb:N, edgetpu:pci:N, ncs2:N, cuda:N, npu, gpu:N, or auto (the best "
        "attached device with its runtime installed; see 'tenantd devices'). Default: cpu",
    )
    serve.add_argument(
        "--endpoint",
        help="ZeroMQ endpoint to bind: ipc:///path/sock or tcp://127.0.0.1:PORT (PORT may be '*'). Default: env "
        f"TENANTD_ENDPOINT, else ipc://$RUNTIME_DIRECTORY/tenantd.sock under systemd, else ipc://{paths.SYSTEM_SOCKET} "
        "as root, else ipc://$XDG_RUNTIME_DIR/tenantd/tenantd.sock; here: "
        f"{paths.default_endpoint()}",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="directory for the model store, event logs, keys and a policy set at run time. Default: env "
        f"TENANTD_STATE_DIR, else $STATE_DIRECTORY under systemd, else {paths.SYSTEM_STATE_DIR} as root, else "
        f"$XDG_STATE_HOME/tenantd; here: {paths.default_state_dir()}",
    )
    serve.add_argument(
        "--policy",
        type=Path,
        help="operator policy TOML file; SIGHUP re-reads it. Default: env TENANTD_POLICY, else "
        f"$CONFIGURATION_DIRECTORY/policy.toml under systemd, else {paths.SYSTEM_POLICY} as root, else "
        "$XDG_CONFIG_HOME/tenantd/policy.toml (a missing default file means every default); here: "
        f"{paths.default_policy()}. Example policies, one per device kind: {examples or 'not installed'}",
    )
    serve.add_argument(
        "--auth",
        choices=["keys", "header"],
        help="who a request is from: 'keys' (CurveZMQ keys registered in STATE_DIR/keys) or 'header' "
        "(the request names its tenant; ipc:// and loopback only). Default: header on ipc://, keys on tcp://",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (classic text, or OpenMetrics "
        "when asked for); a bare PORT binds 127.0.0.1, PORT 0 a free port. Unauthenticated, as Prometheus "
        "expects: they name every tenant and model, so bind loopback unless the network is trusted. Default: off",
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve KServe v2 (Open Inference Protocol) over HTTP/REST here (PORT 0: any free port); "
        "default: the policy's http_listen, else off. Tenants send 'Authorization: Bearer TOKEN' (--auth keys; "
        "'tenantd keys add' issues tokens) or a tenantd-tenant header (--auth header, loopback only); TLS when "
        "the policy sets tls_cert_file and tls_key_file",
    )
    serve.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help="also serve KServe v2 over gRPC (inference.GRPCInferenceService) here; default: the policy's "
        "grpc_listen, else off. Same identity and TLS as --http, in the call's metadata",
    )
    serve.add_argument(
        "--profile",
        help="device profile whose memory model and budget admission enforces (default: the device's own); "
        f"running one device under another's profile emulates it. Known: {', '.join(PROFILES)}",
    )
    serve.add_argument(
        "--timing",
        choices=["cpu", "twin"],
        default="cpu",
        help="how long a request holds the device: 'cpu' (this host's compute, the default) or 'twin' (the emulated "
        "profile's calibrated device twin: outputs are computed here, the slot is held for the modelled service "
        "time, plus the switch when the model changes; runs the host was slower than the device are counted in "
        "status as twin_cpu_slower; admission charges each model the twin's modelled memory against the twin's "
        "budget, as experiments.plan does, status showing budget_source twin). Twins: edgetpu, ncs2, jetson-nano, "
        "jetson-tx2, rpi3",
    )
    serve.set_defaults(func=_serve)
    devices = commands.add_parser(
        "devices",
        parents=[common],
        help="list the devices attached to this host and the runtimes that serve them",
        description="Detect the CPU, Coral EdgeTPUs (USB and PCIe), Intel NCS2 sticks, a Jetson and NVIDIA GPUs, "
        "and say for each which runtime serves it and whether that runtime is installed.",
    )
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    devices.add_argument(
        "--root", type=Path, default=Path("/"), help="read /sys, /proc, /dev and /etc under this directory (tests)"
    )
    devices.set_defaults(func=_devices)
    keys = commands.add_parser(
        "keys",
        parents=[common],
        help="issue, list and withdraw CurveZMQ keys and bearer tokens in a daemon's state directory (on its host)",
        description="Work on STATE_DIR/keys; a running daemon applies a change on 'tenantctl keys reload' "
        "(operator key) or SIGHUP. Exit status: 0 done; 2 refused (the name already has a key, has none, "
        "or is not a valid name; the keys folder is invalid), with a one-line reason.",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    for verb, text, action in (
        ("add", "issue a key and a bearer token; prints where their files are", _keys_add),
        ("remove", "withdraw a key and its bearer token", _keys_remove),
        ("token", "issue a new bearer token for a registered key (replacing its old one)", _keys_token),
    ):
        sub = keys_commands.add_parser(verb, help=text, parents=[common])
        sub.add_argument("name", help="tenant (or operator) name")
        sub.add_argument("--operator", action="store_true", help="an operator key, not a tenant's")
        sub.add_argument("--state-dir", type=Path, default=paths.default_state_dir(), help=STATE_DIR_HELP)
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(func=_keys(action))
    keys_list = keys_commands.add_parser("list", help="list registered keys", parents=[common])
    keys_list.add_argument("--state-dir", type=Path, default=paths.default_state_dir(), help=STATE_DIR_HELP)
    keys_list.add_argument("--json", action="store_true", help="print the result as JSON")
    keys_list.set_defaults(func=_keys(_keys_list))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    result: int = args.func(args)
    return result
