"""tenantclient: the tenant-side library for tenantd.

``AsyncTenantClient`` (asyncio) and the synchronous ``TenantClient`` (same requests and errors,
blocking I/O) submit models and run inference on a tenantd daemon over ZeroMQ; errors come back as
typed exceptions from :mod:`tenantclient.errors`; :class:`RetryPolicy` retries a full queue.
"""

from tenantclient.client import AsyncTenantClient, InferResult, ModelInfo, TenantClient
from tenantclient.errors import RequestTimeout, TenantError
from tenantclient.retry import RetryPolicy

__all__ = [
    "AsyncTenantClient",
    "InferResult",
    "ModelInfo",
    "RequestTimeout",
    "RetryPolicy",
    "TenantClient",
    "TenantError",
]
