"""``tenantd``: the daemon's command line. ``tenantd serve`` runs one daemon for one device;
``tenantd devices`` lists the devices attached to this host and the runtimes that serve them;
``tenantd keys add|remove|list`` issues, withdraws and lists CurveZMQ keys in a state directory.

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
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tenantd import __version__, auth
from tenantd.config import ConfigError, load_policy
from tenantd.daemon import Daemon, ServeConfig
from tenantd.devices import PROFILES
from tenantd.devices.detect import detect, format_table, pick_auto
from tenantd.store import StoreUnusable

log = logging.getLogger("tenantd")

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


def _serve(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except ConfigError as exc:
        print(f"tenantd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
                timing=args.timing,
            )
        )
        daemon.install_signal_handlers()

        def ready(endpoint: str) -> None:
            emulated = " emulated=true" if daemon.emulated else ""
            print(
                f"tenantd ready endpoint={endpoint} device={args.device}{auto} profile={daemon.profile.name}"
                f"{emulated} slots={daemon.info.slots} timing={args.timing}",
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
    secret = auth.add_tenant(args.state_dir, args.name, role)
    server_key = auth.KeyRing.load(args.state_dir).server_public_key_file
    text = (
        f"issued a {role} key for {args.name}: give them {secret} (keep it secret), and the server key\n"
        f"{server_key}; then run 'tenantctl keys reload'"
    )
    return {"name": args.name, "role": role, "secret_key_file": str(secret)}, text


def _keys_remove(args: argparse.Namespace) -> tuple[object, str]:
    role = "operator" if args.operator else "tenant"
    auth.remove(args.state_dir, args.name, role)
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
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="own a device and serve tenants' models over ZeroMQ",
        # Wrapped here: the raw formatter that keeps the exit-status list as written keeps this too.
        description=textwrap.fill(
            "Own one device and serve tenants' models over a ZeroMQ ROUTER socket. "
            "Prints 'tenantd ready endpoint=... device=...' on stdout when serving; stops cleanly on "
            "SIGINT/SIGTERM after answering accepted requests.",
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
        required=True,
        help="ZeroMQ endpoint to bind: ipc:///path/sock or tcp://127.0.0.1:PORT (PORT may be '*')",
    )
    serve.add_argument("--state-dir", type=Path, required=True, help="directory for the model store and event log")
    serve.add_argument("--policy", type=Path, help="operator policy TOML file (see policies/default.toml)")
    serve.add_argument(
        "--auth",
        choices=["keys", "header"],
        help="who a request is from: 'keys' (CurveZMQ keys registered in STATE_DIR/keys) or 'header' "
        "(the request names its tenant; ipc:// and loopback only). Default: header on ipc://, keys on tcp://",
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
        "status as twin_cpu_slower). Twins: edgetpu, ncs2, jetson-nano, jetson-tx2, rpi3",
    )
    serve.set_defaults(func=_serve)
    devices = commands.add_parser(
        "devices",
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
        help="issue, list and withdraw CurveZMQ keys in a daemon's state directory (on the daemon's host)",
        description="Work on STATE_DIR/keys; a running daemon applies a change on 'tenantctl keys reload' "
        "(operator key) or SIGHUP.",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    for verb, text, action in (
        ("add", "issue a key; prints where the secret key file is", _keys_add),
        ("remove", "withdraw a key", _keys_remove),
    ):
        sub = keys_commands.add_parser(verb, help=text)
        sub.add_argument("name", help="tenant (or operator) name")
        sub.add_argument("--operator", action="store_true", help="an operator key, not a tenant's")
        sub.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(func=_keys(action))
    keys_list = keys_commands.add_parser("list", help="list registered keys")
    keys_list.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
    keys_list.add_argument("--json", action="store_true", help="print the result as JSON")
    keys_list.set_defaults(func=_keys(_keys_list))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result
