"""When and how the clients retry a refused request: :class:`RetryPolicy`, off unless asked for.

Only two refusals are retried, ``QUEUE_FULL`` (the daemon's queue for the tenant or device was full:
the request was not queued) and ``UNAVAILABLE`` (the daemon is draining to stop; a supervisor may
be restarting it), and only for operations that change nothing on the daemon: inference and the
reads (:data:`RETRIED_OPS`). Submitting, removing, pipeline and policy changes and key reloads are
never retried, so a retry can never apply a change twice (an ``UNAVAILABLE`` can come after a
request ran, when the daemon stopped while it ran). Neither is a timeout retried: a request
without a reply may still run.

The wait before retry ``n`` (0-based) is "full jitter": uniform in ``[0, min(max_delay_s,
base_delay_s * 2**n)]``, so clients refused together do not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tenantwire.errors import ErrorCode
from tenantwire.protocol import Op

# Operations a retry cannot duplicate: inference (no durable effect) and reads.
RETRIED_OPS: frozenset[str] = frozenset(
    op.value
    for op in (
        Op.INFER,
        Op.PING,
        Op.STATUS,
        Op.LIST_MODELS,
        Op.LIST_PIPELINES,
        Op.EVENTS,
        Op.POLICY_SHOW,
        Op.METRICS,
    )
)
RETRIED_CODES: frozenset[str] = frozenset({ErrorCode.QUEUE_FULL.value, ErrorCode.UNAVAILABLE.value})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``QUEUE_FULL``/``UNAVAILABLE`` up to ``retries`` times after the first try, waiting a
    jittered, exponentially growing delay before each. ``RetryPolicy(0)`` never retries."""

    retries: int = 3
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0
    codes: frozenset[str] = RETRIED_CODES
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if not 0 < self.base_delay_s <= self.max_delay_s:
            raise ValueError(f"need 0 < base_delay_s <= max_delay_s, not {self.base_delay_s} and {self.max_delay_s}")
        unknown = set(self.codes) - RETRIED_CODES
        if unknown:
            raise ValueError(f"only {sorted(RETRIED_CODES)} may be retried, not {sorted(unknown)}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        return self.rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2.0**retry))

    def should_retry(self, op: str, code: str | None, retry: int) -> bool:
        """Whether a request of ``op`` refused with ``code`` gets retry number ``retry``."""
        return retry < self.retries and op in RETRIED_OPS and code in self.codes


def as_policy(retry: RetryPolicy | int | None) -> RetryPolicy | None:
    """A client's ``retry=`` argument: a policy, a number of retries (default delays), or None."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise TypeError(f"retry must be a RetryPolicy, a number of retries or None, not {retry!r}")
    return RetryPolicy(retries=retry)
