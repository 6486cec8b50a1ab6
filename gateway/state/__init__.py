"""State store: device partnerships, sync state, sessions and expiring counters, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Clock",
    "Device",
    "DeviceStatus",
    "Session",
    "StateStore",
    "SyncState",
    "open_store",
]

log = logging.getLogger(__name__)

# Seconds since the epoch. Expiry is decided by the node's clock rather than the
# database's so that tests can move time, and so SQLite and PostgreSQL agree.
Clock = Callable[[], float]


class DeviceStatus(StrEnum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"
    QUARANTINED = "quarantined"
    WIPE_PENDING = "wipe_pending"
    WIPED = "wiped"


@dataclass(frozen=True)
class Device:
    """One ActiveSync partnership; timestamps are epoch seconds."""

    user: str
    device_id: str
    device_type: str = ""
    user_agent: str = ""
    model: str = ""
    os: str = ""
    policy_key: int = 0
    status: DeviceStatus = DeviceStatus.ALLOWED
    first_seen: float = 0.0
    last_sync: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncState:
    user: str
    device_id: str
    collection_id: str
    sync_key: str
    blob: bytes
    created: float


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    data: dict[str, Any]
    created: float
    last_seen: float
    idle_timeout: float

    @property
    def expires(self) -> float:
        return self.last_seen + self.idle_timeout


@runtime_checkable
class StateStore(Protocol):
    """What every back end offers; all of it survives a restart and is shared by every node."""

    async def start(self) -> None:
        """Open connections and create tables if missing; safe to call twice or from two nodes at once."""

    async def close(self) -> None: ...

    async def upsert_device(self, device: Device) -> Device:
        """Insert or replace a partnership, keeping the first_seen of an existing one; returns what was stored."""

    async def get_device(self, user: str, device_id: str) -> Device | None: ...

    async def list_devices(self, user: str) -> list[Device]:
        """The user's partnerships ordered by device_id."""

    async def delete_device(self, user: str, device_id: str) -> bool:
        """Remove a partnership and all of its sync state; False if there was none."""

    async def put_sync_state(
        self, user: str, device_id: str, collection_id: str, sync_key: str, blob: bytes,
        *, keep: int | None = None,
    ) -> None:
        """Store a state; it becomes the newest even if the key existed. With keep, prune in the same transaction."""

    async def get_sync_state(self, user: str, device_id: str, collection_id: str, sync_key: str) -> bytes | None: ...

    async def latest_sync_state(self, user: str, device_id: str, collection_id: str) -> SyncState | None: ...

    async def sync_keys(self, user: str, device_id: str, collection_id: str) -> list[str]:
        """Stored keys of one collection, newest first."""

    async def prune_sync_states(self, user: str, device_id: str, collection_id: str, keep: int) -> int:
        """Delete all but the newest keep states of one collection; returns how many went."""

    async def delete_sync_state(
        self, user: str, device_id: str, collection_id: str | None = None, sync_key: str | None = None,
    ) -> int:
        """Delete one key, one collection (sync_key None) or the whole device (both None)."""

    async def create_session(self, user: str, data: dict[str, Any], idle_timeout: float) -> Session: ...

    async def get_session(self, session_id: str) -> Session | None:
        """The live session, or None if unknown or idle for longer than its timeout."""

    async def touch_session(self, session_id: str, data: dict[str, Any] | None = None) -> Session | None:
        """Restart the idle clock (and replace data if given); None if the session is gone."""

    async def delete_session(self, session_id: str) -> bool: ...

    async def kv_set(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store value, expiring ttl seconds from now (never if None). Keys are text without NUL."""

    async def kv_get(self, ns: str, key: str) -> bytes | None: ...

    async def kv_delete(self, ns: str, key: str) -> bool: ...

    async def kv_incr(self, ns: str, key: str, ttl: float | None = None) -> int:
        """Add one atomically and return the new count. A fresh counter expires ttl after its first
        increment; later increments keep that deadline, so a failure window does not slide."""

    async def purge_expired(self) -> int:
        """Delete expired sessions and kv entries; returns how many rows went."""


def open_store(
    backend: str,
    *,
    path: str = "",
    dsn: str = "",
    schema: str = "",
    clock: Clock = time.time,
    purge_interval: float | None = 300.0,
) -> StateStore:
    """Build a store (not yet started). path is for sqlite (":memory:" when empty), dsn and schema for postgresql."""
    if backend == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(path or ":memory:", clock=clock, purge_interval=purge_interval)
    if backend == "postgresql":
        from .postgres import PostgresStore

        if not dsn:
            raise ValueError("state backend 'postgresql' needs a dsn")
        return PostgresStore(dsn, schema=schema, clock=clock, purge_interval=purge_interval)
    raise ValueError(f"unknown state backend {backend!r} (expected 'sqlite' or 'postgresql')")


async def purge_periodically(store: StateStore, interval: float) -> None:
    """Purge every interval seconds until cancelled; a failed pass must not end the loop."""
    while True:
        await asyncio.sleep(interval)
        try:
            await store.purge_expired()
        except Exception:
            log.exception("state store purge failed; retrying in %.0fs", interval)
