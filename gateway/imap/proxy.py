"""IMAP after login: log the user in to their back end, then relay bytes both ways without parsing them.

The relay is two small asyncio protocols swapped onto the two transports, so an
idle proxied session costs two transports and three small objects: no task, no
coroutine, no buffer. Each direction stops reading when the other side's send
buffer is full (backpressure both ways), so a slow reader never makes the
gateway buffer more than one high-water mark per direction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from adapters.imap.connect import BackendSession, SparePool, open_session
from adapters.interfaces import Credentials, UserRecord

from ..context import GatewayContext
from ..lineproto import LoginRequest
from ..mailfront import ClientSession, checked_login

log = logging.getLogger("casgate.session")

HIGH_WATER = 256 * 1024
_CAPS = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.I)


class _Side(asyncio.Protocol):
    """Receives on one transport and writes to the other."""

    __slots__ = ("relay", "peer", "upstream")

    def __init__(self, relay: "Relay", peer: asyncio.Transport, upstream: bool) -> None:
        self.relay = relay
        self.peer = peer
        self.upstream = upstream  # True: this side reads the client and writes to the back end

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.idle = 0
        if self.upstream:
            relay.bytes_up += len(data)
        else:
            relay.bytes_down += len(data)
        self.peer.write(data)

    def eof_received(self) -> bool:
        self.relay.close("eof" if self.upstream else "backend-eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close("closed" if self.upstream else "backend-closed")

    # Called for this side's own transport: its send buffer is full, so stop reading what fills it.
    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class Relay:
    """One proxied session: the client's transport joined to the back end's."""

    __slots__ = ("client", "backend", "session", "idle", "bytes_up", "bytes_down", "ended", "owner", "__weakref__")

    def __init__(self, session: ClientSession, backend: asyncio.Transport, owner: "ImapProxy") -> None:
        self.session = session
        self.client: asyncio.Transport = session.writer.detach()
        self.backend = backend
        self.owner = owner
        self.idle = 0
        self.bytes_up = self.bytes_down = 0
        self.ended = False

    def start(self, first_to_client: bytes, first_to_backend: bytes) -> None:
        for transport in (self.client, self.backend):
            transport.set_write_buffer_limits(high=HIGH_WATER)
        self.client.set_protocol(_Side(self, self.backend, upstream=True))
        self.backend.set_protocol(_Side(self, self.client, upstream=False))
        if first_to_client:
            self.client.write(first_to_client)
        if first_to_backend:
            self.bytes_up += len(first_to_backend)
            self.backend.write(first_to_backend)
        for transport in (self.client, self.backend):
            if not transport.is_reading():  # the stream layer may have paused it under load
                transport.resume_reading()

    def close(self, reason: str, notice: bytes = b"") -> None:
        if self.ended:
            return
        self.ended = True
        if notice and not self.client.is_closing():
            self.client.write(notice)
        self.client.close()
        self.backend.close()
        self.owner.relays.discard(self)
        s = self.session
        s.release()
        log.info("session", extra={"event": "session", "listener": s.listener, "client": s.client_ip, "user": s.user,
                                   "end": reason, "bytes_in": self.bytes_up, "bytes_out": self.bytes_down,
                                   "seconds": round(time.monotonic() - s.opened, 3)})


class ImapProxy:
    """The IMAP login handler: checks the login by making it at the back end, then relays."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.idle_timeout = ctx.config.imap.idle_timeout
        counted = {True: ctx.metrics.imap_spares.labels("hit"), False: ctx.metrics.imap_spares.labels("miss")}
        self.spares = SparePool(ctx.config.imap.backend_spares, ctx.config.imap.backend_spare_age,
                                on_take=lambda hit: counted[hit].inc())
        self.relays: set[Relay] = set()
        self._sweeper: asyncio.Task | None = None

    async def login(self, session: ClientSession, request: LoginRequest) -> bool:
        opened = await checked_login(session, request, lambda: self._login(session, request))
        if opened is None:
            return False
        user, backend = opened
        session.user = user.address
        self._hand_over(session, request, backend)
        return True

    async def _login(self, session: ClientSession, request: LoginRequest) -> tuple[UserRecord, BackendSession]:
        auth, backends = self.ctx.auth, self.ctx.backends
        found = self.ctx.directory.find(request.username)
        name = self.ctx.directory.route(found, "imap") if found else None
        master = backends.get(name) if name else None
        if master is not None and master.master_login:
            # The user's own password is checked (and cached) first; the session then uses the master account.
            result = await auth.authenticate(request.username, request.password, session.client_ip)
            creds = Credentials(master.master_login, master.master_secret(self.ctx.config))
            opened = await open_session(backends.imap_endpoint(name), creds, session.client_ip,
                                        authzid=result.user.login, spares=self.spares)
            return result.user, opened

        async def attempt(user: UserRecord, backend: str, creds: Credentials) -> BackendSession:
            return await open_session(backends.imap_endpoint(backend), creds, session.client_ip, spares=self.spares)

        return await auth.login_with(request.username, request.password, session.client_ip, attempt)

    def _hand_over(self, session: ClientSession, request: LoginRequest, backend: BackendSession) -> None:
        m = _CAPS.search(backend.ok_line)
        caps = m.group(1) if m else " ".join(sorted(backend.caps)).encode()
        ok = request.tag + b" OK [CAPABILITY " + caps + b"] Logged in\r\n"
        to_client = ok
        buffered = backend.reader._buffer  # anything the back end sent after its OK (unsolicited untagged data)
        if buffered:
            to_client += bytes(buffered)
            buffered.clear()
        to_backend = session.pending_input()
        relay = Relay(session, backend.writer.detach(), self)
        session.handed_off = True
        self.relays.add(relay)
        relay.start(to_client, to_backend)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Close relays silent in both directions for longer than the idle timeout (RFC 3501: 30 minutes)."""
        interval = min(30.0, self.idle_timeout / 2)
        limit = max(1, int(self.idle_timeout / interval + 0.999))
        while self.relays:
            await asyncio.sleep(interval)
            for relay in list(self.relays):
                relay.idle += 1
                if relay.idle > limit:
                    relay.close("idle-timeout", b"* BYE autologout: idle for too long\r\n")

    def close_all(self) -> None:
        for relay in list(self.relays):
            relay.close("shutdown", b"* BYE casgate is shutting down\r\n")
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.spares.close()
