"""Logged-in mail stores kept between requests, so a phone's next sync does not pay for a back-end login.

One store per user and password, shared by that user's devices and requests
(the store serialises its own commands); closed after ``idle_close`` seconds
without use, and at shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from adapters.errors import BackendUnavailable
from adapters.imap import ImapMailStore
from adapters.interfaces import Credentials, UserRecord

from .backends import Backends


@dataclass
class _Held:
    store: ImapMailStore
    stack: AsyncExitStack
    used: float


class MailSessions:
    def __init__(self, backends: Backends, idle_close: float) -> None:
        self.backends = backends
        self.idle_close = idle_close
        self._held: dict[tuple[str, bytes], _Held] = {}
        self._opening: dict[tuple[str, bytes], asyncio.Future] = {}
        self._sweeper: asyncio.Task | None = None

    async def store(self, user: UserRecord, backend: str | None, creds: Credentials,
                    client_ip: str | None = None) -> ImapMailStore:
        """The user's logged-in store on ``backend`` (their routed IMAP back end)."""
        if not backend:
            raise BackendUnavailable(f"{user.address} has no IMAP back end")
        # The password is part of the key (hashed: no secret is kept beyond the store's own copy), so a
        # changed password never rides on a session opened with the old one.
        key = (user.address, hashlib.sha256(creds.password.encode()).digest())
        held = self._held.get(key)
        if held is not None:
            held.used = time.monotonic()
            return held.store
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._open(key, backend, creds, client_ip))
            self._opening[key] = pending
            pending.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(pending)

    async def _open(self, key: tuple[str, bytes], backend: str, creds: Credentials,
                    client_ip: str | None) -> ImapMailStore:
        store = self.backends.mail_store(backend, creds, client_ip)
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
            for key, held in list(self._held.items()):
                if now - held.used > self.idle_close:
                    del self._held[key]
                    await _quietly_close(held.stack)

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
