"""A cancelled AsyncTenantClient call is cancelled, even when its reply arrives in the same turn of
the event loop. On Python 3.11, ``asyncio.wait_for`` swallowed such a cancellation: the caller went
on to its next call, which against a killed daemon waited out its whole timeout (the crash-consistency
test hung this way once probes became fast enough for replies to race its cancellations)."""

from __future__ import annotations

import asyncio

import pytest

from tenantclient import AsyncTenantClient
from tenantd.daemon import Daemon


def test_a_call_cancelled_as_its_reply_arrives_stays_cancelled(endpoint: str, daemon: Daemon) -> None:
    async def run() -> None:
        async with AsyncTenantClient(endpoint, tenant="alice") as client:
            await client.ping()  # connected
            went_on = asyncio.Event()

            async def caller() -> None:
                await client.ping()
                went_on.set()  # reached only when the cancellation was lost
                await asyncio.Event().wait()

            task = asyncio.create_task(caller())
            while not client._pending:  # the request is out: hook its reply
                await asyncio.sleep(0)
            (reply,) = client._pending.values()
            # Runs right after the reply is set, before the caller's task resumes.
            reply.add_done_callback(lambda _: task.cancel())
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 60)
            assert not went_on.is_set()

    asyncio.run(run())
