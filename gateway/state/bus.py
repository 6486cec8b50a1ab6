"""Change notices between the parts of a gateway, and between gateway nodes.

``LocalBus`` hands a message to this process's subscribers; ``RedisBus``
publishes it on Redis pub/sub so every node's subscribers get it (their own
included). Messages are short strings on named channels; a lost message only
delays a notice until the receiver's next own look, so delivery is best effort
and a Redis outage is logged, never raised to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("casgate.bus")


class BusError(RuntimeError):
    """The bus cannot be used (Redis does not answer at start-up)."""

Callback = Callable[[str], None]


class Bus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: str) -> None: ...
    async def subscribe(self, channel: str, callback: Callback) -> Callable[[], Awaitable[None]]:
        """Call ``callback`` for each message on ``channel``; returns the coroutine function that unsubscribes."""


class LocalBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callback]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    async def publish(self, channel: str, message: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            callback(message)

    async def subscribe(self, channel: str, callback: Callback) -> Callable[[], Awaitable[None]]:
        self._subscribers.setdefault(channel, []).append(callback)

        async def unsubscribe() -> None:
            callbacks = self._subscribers.get(channel, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(channel, None)
        return unsubscribe


class RedisBus:
    """Redis pub/sub: one connection for publishing, one subscribed connection read by one task."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._subscribers: dict[str, list[Callback]] = {}
        self._redis = None
        self._pubsub = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        import redis.asyncio as redis
        self._redis = redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=None)
        try:
            await self._redis.ping()
        except Exception as exc:  # noqa: BLE001 - redis raises its own and OS errors alike
            raise BusError(f"the Redis bus at {self.url} does not answer: {type(exc).__name__}: {exc}") from None
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.ensure_future(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, channel: str, message: str) -> None:
        try:
            await self._redis.publish(channel, message)
        except Exception as exc:  # noqa: BLE001 - the bus is best effort; receivers still look by themselves
            log.warning("bus publish failed", extra={"event": "bus", "error": str(exc)[:200]})

    async def subscribe(self, channel: str, callback: Callback) -> Callable[[], Awaitable[None]]:
        first = channel not in self._subscribers
        self._subscribers.setdefault(channel, []).append(callback)
        if first:
            await self._pubsub.subscribe(channel)

        async def unsubscribe() -> None:
            callbacks = self._subscribers.get(channel, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks and self._subscribers.pop(channel, None) is not None:
                try:
                    await self._pubsub.unsubscribe(channel)
                except Exception:  # noqa: BLE001 - a lost connection forgets subscriptions anyway
                    pass
        return unsubscribe

    async def _read(self) -> None:
        while True:
            try:
                if not self._subscribers:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("bus read failed", extra={"event": "bus", "error": str(exc)[:200]})
                await asyncio.sleep(1)
                continue
            if not message or message.get("type") != "message":
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            data = message["data"].decode() if isinstance(message["data"], bytes) else str(message["data"])
            for callback in list(self._subscribers.get(channel, ())):
                try:
                    callback(data)
                except Exception:  # noqa: BLE001 - one subscriber's bug must not silence the others
                    log.exception("bus subscriber failed")


def open_bus(kind: str, url: str = "") -> Bus:
    if kind == "redis":
        return RedisBus(url)
    return LocalBus()
