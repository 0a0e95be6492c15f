"""Probe slots are shared fairly (reliability issue item 6): a tenant whose probes failed waits
behind those whose did not, and an established tenant goes before unknown ones."""

from __future__ import annotations

import asyncio

from tenantd.submission import ProbeSlots


async def _order(slots: ProbeSlots, tenants: list[str]) -> list[str]:
    """Occupy the one slot, queue ``tenants`` in that order, release: who got it in which order."""
    order: list[str] = []
    hold = asyncio.Event()

    async def holder() -> None:
        async with slots.turn("holder") as turn:
            turn.ok = True
            await hold.wait()

    async def waiter(tenant: str) -> None:
        async with slots.turn(tenant) as turn:
            order.append(tenant)
            turn.ok = True

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)  # the holder takes the slot
    waiting = []
    for tenant in tenants:
        waiting.append(asyncio.create_task(waiter(tenant)))
        await asyncio.sleep(0)  # each queues in turn: arrival order is the list's
    hold.set()
    await asyncio.gather(first, *waiting)
    return order


async def _fail(slots: ProbeSlots, tenant: str) -> None:
    async with slots.turn(tenant):
        pass  # turn.ok stays False: a probe that failed


def test_failed_tenants_go_last_and_established_ones_first() -> None:
    async def main() -> list[str]:
        slots = ProbeSlots(1)
        await _fail(slots, "hostile")
        async with slots.turn("established") as turn:
            turn.ok = True
        return await _order(slots, ["hostile", "newcomer", "established"])

    assert asyncio.run(main()) == ["established", "newcomer", "hostile"]


def test_equals_go_in_arrival_order_and_a_free_slot_is_taken_at_once() -> None:
    async def main() -> list[str]:
        slots = ProbeSlots(1)
        return await _order(slots, ["a", "b", "c"])

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def main() -> list[str]:
        slots = ProbeSlots(1)
        order: list[str] = []
        hold = asyncio.Event()

        async def holder() -> None:
            async with slots.turn("holder"):
                await hold.wait()

        async def waiter(tenant: str) -> None:
            async with slots.turn(tenant):
                order.append(tenant)

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        gone = asyncio.create_task(waiter("gone"))
        await asyncio.sleep(0)
        stays = asyncio.create_task(waiter("stays"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        hold.set()
        await asyncio.gather(h, stays)
        async with slots.turn("after"):  # the slot came back: nothing leaked
            order.append("after")
        return order

    assert asyncio.run(main()) == ["stays", "after"]
