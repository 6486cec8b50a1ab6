"""Logged-in stores kept between requests, so a phone's next sync does not pay for a back-end login.

One mail store per user and password, shared by that user's devices and requests
(the store serialises its own commands), and likewise one CalDAV and one CardDAV
store; each is closed after ``idle_close`` seconds without use, and at shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from typing import Any

from adapters.dav import CalDavCalendarStore, CardDavContactStore
from adapters.errors import BackendUnavailable
from adapters.imap import ImapMailStore
from adapters.interfaces import Credentials, UserRecord

from ..memtrim import give_back
from .backends import Backends


@dataclass
class _Held:
    store: Any
    stack: AsyncExitStack
    used: float


class MailSessions:
    def __init__(self, backends: Backends, idle_close: float) -> None:
        self.backends = backends
        self.idle_close = idle_close
        self._held: dict[tuple[str, str, bytes], _Held] = {}
        self._opening: dict[tuple[str, str, bytes], asyncio.Future] = {}
        self._sweeper: asyncio.Task | None = None

    async def store(self, user: UserRecord, backend: str | None, creds: Credentials,
                    client_ip: str | None = None) -> ImapMailStore:
        """The user's logged-in store on ``backend`` (their routed IMAP back end)."""
        return await self._get("imap", user, backend, creds, client_ip)

    async def calendars(self, user: UserRecord, backend: str | None, creds: Credentials) -> CalDavCalendarStore:
        """The user's CalDAV store on ``backend`` (their routed caldav back end)."""
        return await self._get("caldav", user, backend, creds, None)

    async def contacts(self, user: UserRecord, backend: str | None, creds: Credentials) -> CardDavContactStore:
        """The user's CardDAV store on ``backend`` (their routed carddav back end)."""
        return await self._get("carddav", user, backend, creds, None)

    async def _get(self, role: str, user: UserRecord, backend: str | None, creds: Credentials,
                   client_ip: str | None) -> Any:
        if not backend:
            raise BackendUnavailable(f"{user.address} has no {role} back end")
        # The password is part of the key (hashed: no secret is kept beyond the store's own copy), so a
        # changed password never rides on a session opened with the old one.
        key = (role, user.address, hashlib.sha256(f"{backend}\0{creds.password}".encode()).digest())
        held = self._held.get(key)
        if held is not None:
            held.used = time.monotonic()
            return held.store
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._open(key, role, backend, creds, client_ip))
            self._opening[key] = pending
            pending.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(pending)

    async def _open(self, key: tuple[str, str, bytes], role: str, backend: str, creds: Credentials,
                    client_ip: str | None) -> Any:
        if role == "imap":
            store = self.backends.mail_store(backend, creds, client_ip)
        elif role == "caldav":
            store = self.backends.calendar_store(backend, creds)
        else:
            store = self.backends.contact_store(backend, creds)
        stack = AsyncExitStack()
        await store.start(stack)
        self._held[key] = _Held(store, stack, time.monotonic())
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return store

    async def _sweep(self) -> None:
        while self._held:
            await asyncio.sleep(min(30.0, self.idle_close / 2))
            now = time.monotonic()
            closed = 0
            for key, held in list(self._held.items()):
                if now - held.used > self.idle_close:
                    del self._held[key]
                    await _quietly_close(held.stack)
                    closed += 1
            if closed:
                give_back()  # what those sessions held (TLS buffers above all) is free now: let the system have it

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        held, self._held = list(self._held.values()), {}
        for h in held:
            await _quietly_close(h.stack)


async def _quietly_close(stack: AsyncExitStack) -> None:
    try:
        await asyncio.wait_for(stack.aclose(), 5)
    except Exception:  # noqa: BLE001 - a back end that is gone cannot be logged out of
        pass
