"""The daemon's lifecycle state, shared by everything that takes new work.

``serving`` until a stop is asked for, then ``draining``: requests already accepted are answered,
new work (inference, submissions, pipelines) is refused with UNAVAILABLE, and everything else keeps
answering until the sockets close.
"""

from __future__ import annotations

import time

from tenantd.errors import Unavailable


class Lifecycle:
    def __init__(self) -> None:
        self.started = time.time()
        self.draining = False

    @property
    def state(self) -> str:
        return "draining" if self.draining else "serving"

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the daemon is shutting down")
