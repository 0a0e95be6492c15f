"""The daemon: one process that owns one device, built from its parts and run until stopped.

This module only assembles and sequences. At start-up it checks the configuration, takes the
state directory's lock, binds the front door (a bad endpoint fails before any model is loaded),
restores the stored models and pipelines, and starts answering. On SIGTERM or SIGINT it stops
taking new work, answers what it accepted (within the policy's drain timeout), and only then
closes its socket. SIGHUP re-reads the keys folder. docs/architecture.md says which part does what.
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

from tenantd import __version__, auth
from tenantd.admission import Admission, AdmissionControl
from tenantd.catalog import Catalog
from tenantd.config import ConfigError, Policy, PolicyInForce, usable_cores
from tenantd.devicehealth import DeviceHealth
from tenantd.devices import MemoryModel, get_profile
from tenantd.devices.detect import DeviceNameError, check_attached, check_device_name, default_profile, detect
from tenantd.events import Event, EventLog
from tenantd.executor import Executor
from tenantd.frontdoors.zeromq import ZmqFrontDoor, check_auth_mode
from tenantd.inference import InferenceCore
from tenantd.lifecycle import Lifecycle
from tenantd.metrics import Counters
from tenantd.operations import DaemonInfo, Operations
from tenantd.pipelines import Pipelines, close_quietly
from tenantd.residency import Residency
from tenantd.store import Store
from tenantd.submission import Submission

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


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        try:
            check_device_name(config.device)
            check_attached(config.device, detect())
        except DeviceNameError as exc:
            raise ConfigError(str(exc)) from None
        auth_mode = config.auth or ("header" if config.endpoint.startswith("ipc://") else "keys")
        check_auth_mode(auth_mode, config.endpoint)
        self.config = config
        self.policy = PolicyInForce(config.policy)
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
        swap = policy.overcommit == "swap" or profile.memory_model is MemoryModel.CACHE
        if swap and policy.slots is None:
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
        self.profile = profile
        self.emulated = emulated
        self.lifecycle = Lifecycle()
        self.counters = Counters()
        self.store = Store(config.state_dir)
        self.events = EventLog(config.state_dir, policy.event_log_max_bytes)
        self.catalog = Catalog()
        self.executor = Executor(config.device, slots, threads)
        memory = Admission(profile, capacity_bytes=policy.capacity_bytes, reserve_bytes=policy.reserve_bytes)
        self.admission = AdmissionControl(memory, self.catalog, self.events, self.policy, self.device_context)
        self.residency = Residency(self.executor, memory, profile, swap, self.events)
        self.health = DeviceHealth(
            config.device,
            self.executor,
            self.events,
            self.lifecycle,
            model_path=lambda name: self.store.blob_path(self.catalog.models[name].sha256),
            running=lambda: self.core.scheduler.running,
        )
        self.core = InferenceCore(self.catalog, self.residency, self.health, self.lifecycle, self.policy, slots)
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
            self.counters,
        )
        self.info = DaemonInfo(config.device, profile.name, emulated, auth_mode, slots, threads)
        self.frontdoor.operations = Operations(
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
            self.counters,
            reload_keys=self.frontdoor.reload_keys if auth_mode == "keys" else None,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()

    @property
    def endpoint(self) -> str:
        return self.frontdoor.endpoint

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
        self.events.emit(
            Event.START,
            device=self.config.device,
            profile=self.profile.name,
            emulated=self.emulated,
            endpoint=self.endpoint,
            pid=os.getpid(),
            version=__version__,
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
        if ready is not None:
            ready(self.endpoint)
        self.frontdoor.start()
        await self._stop.wait()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await self.health.close()
        await self._shutdown()

    def _log_start(self) -> None:
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
        """SIGHUP re-reads the keys folder: how the first operator key added after start-up counts."""
        if self.frontdoor.keyring is None:
            log.info("SIGHUP: nothing to reload (--auth header)")
            return
        try:
            identities = self.frontdoor.reload_keys()
        except auth.AuthConfigError as exc:
            log.error("SIGHUP: keys not reloaded, the old ones stay: %s", exc)
            return
        log.info("SIGHUP: keys reloaded, %d registered", len(identities))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: draining (up to %.0f s), then stopping", sig.name, self.policy().drain_timeout_s)
        self.stop()

    async def _shutdown(self) -> None:
        self.lifecycle.draining = True  # keep receiving, but answer new work with UNAVAILABLE
        timeout = self.policy().drain_timeout_s
        deadline = time.monotonic() + timeout
        dropped = await self.core.scheduler.drain(timeout)
        await self.frontdoor.cancel_tasks(deadline - time.monotonic())
        await self.submission.close()
        await close_quietly(self.pipelines.uplinks)
        self.frontdoor.close()
        self.executor.close()
        self.events.emit(Event.STOP, dropped_requests=dropped, requests=sum(self.counters.requests.values()))
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
