"""The daemon: one process that owns one device, built from its parts and run until stopped.

This module only assembles and sequences. At start-up it checks the configuration, takes the
state directory's lock, binds the front door (a bad endpoint fails before any model is loaded),
restores the stored models and pipelines, and starts answering. On SIGTERM or SIGINT it stops
taking new work, answers what it accepted (within the policy's drain timeout), and only then
closes its socket. SIGHUP re-reads the keys folder and the policy file (policysource.py says which
policy wins). Under systemd (NOTIFY_SOCKET) it reports ready, reloading and stopping (sdnotify.py).
docs/architecture.md says which part does what.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tenantd import __version__, auth, sdnotify
from tenantd.admission import Admission, AdmissionControl
from tenantd.catalog import Catalog
from tenantd.config import ConfigError, Policy, PolicyInForce, usable_cores
from tenantd.devicehealth import DeviceHealth
from tenantd.devices import MemoryModel, get_profile
from tenantd.devices.detect import DeviceNameError, check_attached, check_device_name, default_profile, detect
from tenantd.devices.twin import DeviceTwin, TwinUnavailable, get_twin
from tenantd.events import Event, EventLog
from tenantd.executor import Executor
from tenantd.frontdoors.grpc import GrpcFrontDoor
from tenantd.frontdoors.http import HttpFrontDoor
from tenantd.frontdoors.kserve import KServe, check_listen, ssl_context, tls_files
from tenantd.frontdoors.zeromq import ZmqFrontDoor, check_auth_mode
from tenantd.inference import InferenceCore
from tenantd.lifecycle import Lifecycle
from tenantd.metrics import Metrics, MetricsServer, parse_listen
from tenantd.operations import DaemonInfo, Operations
from tenantd.pipelines import Pipelines, close_quietly
from tenantd.policysource import PolicySource
from tenantd.residency import Residency
from tenantd.runtimes import device_kind
from tenantd.store import Store
from tenantd.submission import Submission
from tenantd.tokens import TokenRing
from tenantd.worker import WorkerHost
from tenantwire.errors import TenantdError

log = logging.getLogger("tenantd")


@dataclass(frozen=True)
class ServeConfig:
    device: str
    endpoint: str
    state_dir: Path
    policy: Policy
    profile: str | None = None  # overrides the policy's; default: the device's own profile
    # "keys": CurveZMQ keys say who a request is from; "header": the request says (local endpoints
    # only). Default: "header" on ipc://, "keys" on tcp://.
    auth: str | None = None
    metrics: str | None = None  # HOST:PORT to serve /metrics on over HTTP; None: not served
    # The file ``policy`` was read from: SIGHUP reads it again. None: the policy was given as is.
    policy_file: Path | None = None
    policy_file_optional: bool = False  # the default path: a missing file means every default
    # KServe v2 front doors, HOST:PORT (override the policy's http_listen / grpc_listen).
    http: str | None = None
    grpc: str | None = None
    # "cpu": a request holds its slot for this host's compute; "twin": for the emulated device's
    # modelled time (tenantd/devices/twin.py), outputs still computed here.
    timing: str = "cpu"


def device_twin(timing: str, profile: str) -> DeviceTwin | None:
    if timing == "cpu":
        return None
    if timing != "twin":
        raise ConfigError(f"timing must be 'cpu' or 'twin', not {timing!r}")
    try:
        return get_twin(profile)
    except TwinUnavailable as exc:
        raise ConfigError(f"--timing twin: {exc}") from None


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        try:
            check_device_name(config.device)
            check_attached(config.device, detect())
        except DeviceNameError as exc:
            raise ConfigError(str(exc)) from None
        auth_mode = config.auth or ("header" if config.endpoint.startswith("ipc://") else "keys")
        check_auth_mode(auth_mode, config.endpoint)
        metrics_listen = None if config.metrics is None else parse_listen(config.metrics)
        self.config = config
        policy = config.policy
        slots, threads = policy.effective_slots(), policy.effective_threads()
        try:
            own_profile = default_profile(config.device)
            profile = get_profile(config.profile or policy.profile or own_profile)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        if profile.memory_model is MemoryModel.DEDICATED and not (profile.capacity_bytes or policy.capacity_bytes):
            raise ConfigError(f"profile {profile.name!r} has no fixed capacity: set capacity_bytes in the policy")
        # Running on one device while enforcing another's memory model, to plan for it.
        emulated = profile.name != own_profile
        # An EdgeTPU-like cache keeps every admitted model loaded (its parameters are streamed in by
        # the device on a switch); it runs one model at a time, so one slot unless the policy says.
        swap = policy.overcommit == "swap"
        if (swap or profile.memory_model is MemoryModel.CACHE) and policy.slots is None:
            slots = 1
            if policy.threads_per_model is None:  # the cores go to the one slot
                threads = usable_cores()
        if swap and slots != 1:
            raise ConfigError(
                f"swapping models (overcommit = 'swap', or the {profile.name} profile's cache) runs one "
                f"model at a time, as the device does: set slots = 1 (the policy has {slots})"
            )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = lock_state_dir(config.state_dir)
        # A policy set at run time and stored with the state may be in force instead of the file's;
        # both agree on the restart-only fields read above (policysource checks it).
        self.policy_source = PolicySource(config.state_dir, config.policy_file, policy, config.policy_file_optional)
        resolved = self.policy_source.resolve()
        self.policy_source.commit(resolved, policy)
        policy = resolved.policy
        self.policy = PolicyInForce(policy, resolved.source)
        self.profile = profile
        self.emulated = emulated
        self.lifecycle = Lifecycle()
        self.store = Store(config.state_dir)
        self.events = EventLog(config.state_dir, policy.event_log_max_bytes)
        self.events.configure(policy)
        self.catalog = Catalog()
        self.metrics = Metrics(self.catalog, self.policy)
        self.metrics_server = None if metrics_listen is None else MetricsServer(self.metrics, *metrics_listen)
        twin = device_twin(config.timing, profile.name)  # its timing and its memory model (admission)
        worker = None
        if policy.effective_isolation(device_kind(config.device)) == "process":
            if policy.worker_python and not os.access(policy.worker_python, os.X_OK):
                raise ConfigError(f"worker_python {policy.worker_python!r} is not an executable file")
            worker = WorkerHost(
                config.device,
                policy.worker_python,
                policy.worker_watchdog_s,
                policy.worker_memory_limit_bytes,
                emit=self.events.emit,
            )
        self.executor = Executor(config.device, slots, threads, twin, worker)
        memory = Admission(profile, capacity_bytes=policy.capacity_bytes, reserve_bytes=policy.reserve_bytes, twin=twin)
        self.admission = AdmissionControl(memory, self.catalog, self.events, self.policy, self.device_context)
        self.residency = Residency(self.executor, memory, profile, swap, self.events, self.policy)
        self.health = DeviceHealth(
            config.device,
            self.executor,
            self.events,
            self.lifecycle,
            model_path=lambda name: self.store.blob_path(self.catalog.models[name].sha256),
            running=lambda: self.core.scheduler.running,
        )
        self.core = InferenceCore(
            self.catalog, self.residency, self.health, self.lifecycle, self.policy, slots, self.metrics
        )
        self.submission = Submission(
            config.device,
            self.catalog,
            self.admission,
            self.residency,
            self.store,
            self.events,
            self.health,
            self.lifecycle,
            self.policy,
            threads,
        )
        self.pipelines = Pipelines(self.catalog, self.store, self.events, self.core, self.lifecycle, self.policy)
        self.frontdoor = ZmqFrontDoor(
            config.endpoint,
            auth_mode,
            config.state_dir,
            self.policy,
            self.catalog,
            self.core,
            self.pipelines,
            self.events,
            self.metrics,
        )
        self.info = DaemonInfo(config.device, profile.name, emulated, auth_mode, slots, threads)
        self.operations = Operations(
            self.info,
            lambda: self.frontdoor.endpoint,
            self.policy,
            self.catalog,
            self.core,
            self.residency,
            self.admission,
            self.health,
            self.submission,
            self.pipelines,
            self.events,
            self.store,
            self.lifecycle,
            self.metrics,
            reload_keys=self._reload_keys if auth_mode == "keys" else None,
            policy_source=self.policy_source,
        )
        self.frontdoor.operations = self.operations
        self.metrics.set_status(lambda: self.operations.status_map(runtimes=False))
        # Bearer tokens for the KServe front doors under --auth keys; None: the tenantd-tenant header.
        self.tokens = TokenRing.load(config.state_dir) if auth_mode == "keys" else None
        self.kserve = KServe(
            auth_mode,
            self.tokens,
            self.catalog,
            self.core,
            self.pipelines,
            self.operations,
            self.lifecycle,
            self.events,
        )
        http, grpc = config.http or policy.http_listen, config.grpc or policy.grpc_listen
        for listen, flag in ((http, "--http"), (grpc, "--grpc")):
            if listen is not None:
                check_listen(auth_mode, listen, flag)
        tls = tls_files(policy) if http or grpc else None
        self.http = HttpFrontDoor(http, self.kserve, self.policy, ssl_context(tls, policy)) if http else None
        self.grpc = GrpcFrontDoor(grpc, self.kserve, self.policy, tls) if grpc else None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Future[None]] = set()  # SIGHUP's policy reloads, held until done
        self._stop = asyncio.Event()

    @property
    def endpoint(self) -> str:
        return self.frontdoor.endpoint

    @property
    def kserve_doors(self) -> list[HttpFrontDoor | GrpcFrontDoor]:
        return [d for d in (self.http, self.grpc) if d is not None]

    def _reload_keys(self) -> list[str]:
        """Re-read the bearer tokens, then the CurveZMQ keys; a bad folder keeps the old ones."""
        assert self.tokens is not None
        self.tokens.reload()
        return self.frontdoor.reload_keys()

    def device_context(self) -> dict[str, Any]:
        """What events about memory say of the device."""
        return {
            "device": self.config.device,
            "profile": self.profile.name,
            "emulated": self.emulated,
            "models_resident": len(self.residency.loaded_models()),
        }

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when installed), then drain and close."""
        try:
            self.frontdoor.bind()  # first: a bad endpoint fails before any model is loaded
        except ConfigError:
            self._close_state()
            raise
        try:
            if self.metrics_server is not None:
                await self.metrics_server.start()
            for door in self.kserve_doors:
                door.bind()
        except ConfigError:
            for door in self.kserve_doors:
                await door.close()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            self.frontdoor.close()
            self._close_state()
            raise
        self.events.emit(
            Event.START,
            device=self.config.device,
            profile=self.profile.name,
            emulated=self.emulated,
            endpoint=self.endpoint,
            pid=os.getpid(),
            version=__version__,
            policy_source=self.policy.source,
        )
        set_aside = self.store.collect_garbage()
        if set_aside:
            log.warning(
                "%d model file(s) no stored model uses were moved to %s: left by a submission interrupted "
                "before its reply, or by commits lost from a damaged tenantd.db-wal. If a model acknowledged "
                "before a crash is missing, its file is there under its sha256 (%s): submit it again; "
                "otherwise the folder may be emptied",
                len(set_aside),
                self.store.orphan_dir,
                ", ".join(sorted(set_aside)[:5]) + (", ..." if len(set_aside) > 5 else ""),
            )
            self.events.emit(Event.MODEL_FILES_SET_ASIDE, sha256=sorted(set_aside), folder=str(self.store.orphan_dir))
        self.loop = asyncio.get_running_loop()
        self.submission.start()  # the probe host, in the background
        await self.residency.restore(self.store, self.catalog)
        self.pipelines.restore()
        budget = self.admission.report_over_budget()
        if budget.free_bytes < 0:
            log.warning(
                "restored models use %d bytes, over the %s budget of %d: nothing is dropped, new models "
                "will be refused until some are removed",
                budget.used_bytes,
                self.profile.name,
                budget.budget_bytes,
            )
        self.core.start()
        watcher = (
            asyncio.create_task(self.admission.watch_budget(), name="budget-watch")
            if self.profile.memory_model is not MemoryModel.DEDICATED
            else None
        )
        self._log_start()
        for door in self.kserve_doors:
            await door.start()
        if ready is not None:
            ready(self.endpoint)
        sdnotify.ready(f"serving {self.config.device} on {self.endpoint}")
        self.frontdoor.start()
        await self._stop.wait()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await self.health.close()
        await self._shutdown()

    def _log_start(self) -> None:
        # Which runtimes the device has (with a worker: its answer, so this starts it).
        self.submission.runtimes.start()
        keyring = self.frontdoor.keyring
        if keyring is not None:
            log.info(
                "tenants are identified by CurveZMQ keys (%d registered in %s/keys); clients need the server key %s",
                len(keyring),
                self.config.state_dir,
                keyring.server_public_key_file,
            )
        else:
            log.info(
                "tenants are named in each request's header, not authenticated; accepted because %s is a "
                "local-only endpoint (use --auth keys for CurveZMQ)",
                self.endpoint,
            )
        budget = self.admission.memory.budget()
        log.info(
            "device %s, profile %s%s: %s memory, budget %.1f MiB (%.1f MiB in use)",
            self.config.device,
            self.profile.name,
            " (emulated)" if self.emulated else "",
            budget.memory_model,
            budget.budget_bytes / 2**20,
            budget.used_bytes / 2**20,
        )
        log.info(
            "device %s: %d slot(s), %d runtime thread(s) per model, %d model(s) restored",
            self.config.device,
            self.info.slots,
            self.info.threads_per_model,
            len(self.executor.resident),
        )

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        """SIGHUP re-reads the keys folder and the policy file (``systemctl reload``)."""
        sdnotify.reloading()
        if self.frontdoor.keyring is None:
            log.info("SIGHUP: no keys to reload (--auth header)")
        else:
            try:
                identities = self._reload_keys()
            except auth.AuthConfigError as exc:
                log.error("SIGHUP: keys not reloaded, the old ones stay: %s", exc)
            else:
                log.info("SIGHUP: keys reloaded, %d registered", len(identities))
        reload = asyncio.ensure_future(self._reload_policy())
        self._reloads.add(reload)
        reload.add_done_callback(self._reloads.discard)

    async def _reload_policy(self) -> None:
        """The policy file again: applied unless it changes a restart-only field (then nothing
        changes, as with ``policy set``); a runtime policy stays while the file's policy is the same."""
        try:
            try:
                base = self.policy_source.read_file()
            except ConfigError as exc:
                log.error("SIGHUP: policy not reloaded, the one in force stays: %s", exc)
                return
            resolved = self.policy_source.resolve(base)
            if resolved.policy == self.policy() and resolved.source == self.policy.source:
                self.policy_source.commit(resolved, base)
                log.info("SIGHUP: the policy file is unchanged (in force: the %s policy)", resolved.source)
                return
            try:
                self.operations.check_policy(resolved.policy)
            except TenantdError as exc:
                log.error("SIGHUP: policy not reloaded, the one in force stays: %s", exc.message)
                return
            self.policy_source.commit(resolved, base)
            result = await self.operations.apply_policy(resolved.policy, resolved.source)
            changed = ", ".join(result["changed"]) or "nothing"
            log.info("SIGHUP: policy reloaded (in force: the %s policy); changed: %s", resolved.source, changed)
        finally:
            sdnotify.ready("reloaded")

    def _on_signal(self, sig: signal.Signals) -> None:
        sdnotify.stopping()
        log.info("%s received: draining (up to %.0f s), then stopping", sig.name, self.policy().drain_timeout_s)
        self.stop()

    async def _shutdown(self) -> None:
        self.lifecycle.draining = True  # keep receiving, but answer new work with UNAVAILABLE
        timeout = self.policy().drain_timeout_s
        deadline = time.monotonic() + timeout
        dropped = await self.core.scheduler.drain(timeout)
        await self.frontdoor.cancel_tasks(deadline - time.monotonic())
        await self.residency.close()
        await self.submission.close()
        await close_quietly(self.pipelines.uplinks)
        for door in self.kserve_doors:
            await door.close()
        self.frontdoor.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        self.executor.close()
        requests = sum(self.metrics.counts()["requests"].values())
        self.events.emit(Event.STOP, dropped_requests=dropped, requests=requests)
        self._close_state()
        log.info("stopped")

    def _close_state(self) -> None:
        self.events.close()
        self.store.close()
        self._state_lock.close()


def lock_state_dir(state_dir: Path) -> TextIO:
    """Hold an exclusive lock on the state directory for the daemon's lifetime: two daemons
    writing one store and one event log would corrupt each other's view."""
    try:
        handle = (state_dir / "lock").open("a+")
    except OSError as exc:
        raise ConfigError(
            f"cannot use {state_dir / 'lock'} as the state directory's lock: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"state directory {state_dir} is in use by another tenantd (pid {owner})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
