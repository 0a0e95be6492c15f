"""The one place that measures memory: this process's resident set and the host's DRAM.

Footprints (the probe's and the daemon's own load), the shared budget of a Jetson-like device and
the experiments all read memory through these two functions, so they agree on what a byte is.
"""

from __future__ import annotations

import psutil


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of host DRAM."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of this process (or of process ``pid``: a device worker): what the probe and
    the daemon measure footprints with."""
    return int(psutil.Process(pid).memory_info().rss)
