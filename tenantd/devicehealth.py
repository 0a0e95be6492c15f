"""Device health: a lost device, retried with backoff until it is back.

When a runtime reports its device gone (:class:`~tenantd.runtimes.DeviceLost`: a stick unplugged,
a driver reset), the daemon keeps running: inference fails fast with DEVICE_UNAVAILABLE, every
other operation keeps working, and a task reopens the device on fresh runtimes, reloading every
model that was loaded, on a doubling wait (first ``retry_s[0]``, at most ``retry_s[1]``). A stick
being re-plugged is back within seconds; one gone for good should not be hammered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenantd.errors import DeviceUnavailable
from tenantd.events import Event, EventLog
from tenantd.executor import Executor
from tenantd.lifecycle import Lifecycle
from tenantd.runtimes import RuntimeFailure, RuntimeNotAvailable

log = logging.getLogger("tenantd")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


class DeviceHealth:
    def __init__(
        self,
        device: str,
        executor: Executor,
        events: EventLog,
        lifecycle: Lifecycle,
        model_path: Callable[[str], Path],
        running: Callable[[], int],
    ) -> None:
        self.device = device
        self._executor = executor
        self._events = events
        self._lifecycle = lifecycle
        self._model_path = model_path
        self._running = running  # how many inferences are on a slot now
        # Set while the device is gone: since, reason, retries.
        self.lost: dict[str, Any] | None = None
        self.retry_s = (RETRY_FIRST_S, RETRY_MAX_S)
        self._retry: asyncio.Task[None] | None = None

    def message(self) -> str:
        lost = self.lost or {}
        return (
            f"device {self.device} is unavailable since {lost.get('since_iso', '?')} "
            f"({lost.get('reason', 'lost')}); the daemon is retrying it"
        )

    def check(self) -> None:
        """Raise DEVICE_UNAVAILABLE while the device is lost."""
        if self.lost is not None:
            details = {k: self.lost[k] for k in ("device", "since", "reason", "retries")}
            raise DeviceUnavailable(self.message(), details)

    def status(self) -> dict[str, Any]:
        return {
            "device_state": "lost" if self.lost is not None else "available",
            "device_lost": None if self.lost is None else {k: self.lost[k] for k in ("since", "reason", "retries")},
        }

    def mark_lost(self, reason: str, model: str | None) -> None:
        """On the loop: the runtime reported the device gone. Mark it, say so once, start retrying."""
        if self.lost is not None:
            return
        now = time.time()
        self.lost = {
            "device": self.device,
            "since": now,
            "since_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "reason": reason,
            "retries": 0,
        }
        log.warning("device %s lost (%s): inference fails until it is back; retrying", self.device, reason)
        self._events.emit(Event.DEVICE_LOST, device=self.device, model=model, reason=reason)
        self._retry = asyncio.create_task(self._retry_until_back(), name="device-retry")

    async def _retry_until_back(self) -> None:
        """Reload every loaded model on a fresh runtime, on a backoff, until it works; then serve again."""
        loop = asyncio.get_running_loop()
        delay, longest = self.retry_s
        while self.lost is not None and not self._lifecycle.draining:
            await asyncio.sleep(delay)
            if self._running():  # let in-flight runs fail or finish before the runtime is replaced
                continue
            lost = self.lost
            lost["retries"] += 1
            try:
                reloaded = await loop.run_in_executor(None, self._executor.reopen_device, self._model_path)
            except (RuntimeFailure, RuntimeNotAvailable, OSError) as exc:
                self._events.emit(
                    Event.DEVICE_RETRY_FAILED, device=self.device, attempt=lost["retries"], reason=str(exc)
                )
                delay = min(delay * 2, longest)
                continue
            down_s = round(time.time() - lost["since"], 3)
            self.lost = None
            log.info("device %s is back after %.1f s; %d model(s) reloaded", self.device, down_s, len(reloaded))
            self._events.emit(
                Event.DEVICE_RECOVERED, device=self.device, down_s=down_s, attempts=lost["retries"], reloaded=reloaded
            )

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
