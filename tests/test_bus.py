"""The bus between gateway parts and nodes: in-process, and Redis pub/sub on the Redis at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.state.bus import BusError, LocalBus, RedisBus


async def _received(bus_a, bus_b, channel: str) -> list[str]:
    got: list[str] = []
    arrived = asyncio.Event()

    def callback(message: str) -> None:
        got.append(message)
        arrived.set()
    unsubscribe = await bus_b.subscribe(channel, callback)
    await asyncio.sleep(0.1)
    await bus_a.publish(channel, "INBOX")
    await asyncio.wait_for(arrived.wait(), 3)
    await unsubscribe()
    await bus_a.publish(channel, "after")
    await asyncio.sleep(0.2)
    return got


async def test_local_bus_delivers_in_process_until_unsubscribed():
    bus = LocalBus()
    assert await _received(bus, bus, "c") == ["INBOX"]


async def test_redis_bus_carries_messages_between_nodes():
    a, b = RedisBus("redis://127.0.0.1:6379/0"), RedisBus("redis://127.0.0.1:6379/0")
    await a.start()
    await b.start()
    try:
        assert await _received(a, b, "casgate:test:" + uuid.uuid4().hex) == ["INBOX"]
    finally:
        await a.close()
        await b.close()


async def test_redis_bus_that_cannot_connect_says_so_at_start():
    bus = RedisBus("redis://127.0.0.1:1/0")
    with pytest.raises(BusError, match="does not answer"):
        await bus.start()
    await bus.close()
