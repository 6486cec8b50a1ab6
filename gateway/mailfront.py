"""The IMAP and POP3 front doors: accept, PROXY header, TLS, connection limits, the pre-login dialogue.

A listener that may receive PROXY protocol headers, or that starts with TLS,
runs its own accept loop, so that the header can be read off the bare socket
(peeked, then consumed to the byte) before TLS or any stream exists. A plain
listener without PROXY senders is an ordinary asyncio server: the event loop
accepts and the greeting goes out one loop turn later. The pre-login dialogue is a pure core (``gateway.imap.preauth``,
``gateway.pop3.preauth``); when it hands over a login, the protocol's
``LoginHandler`` checks it and takes the connection over (IMAP: a byte relay to
the back end; POP3: the maildrop translated through the MailStore).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from adapters.imap.connect import DetachableWriter

from .config import MailFrontConfig
from .lineproto import FrontLimits, LineCore, LoginRequest, Reply
from .metrics import Metrics
from .proxyproto import ProxyHeaderError, read_proxy_header, trusted

log = logging.getLogger("casgate.session")

READ_SIZE = 16384
READER_LIMIT = 64 * 1024  # a client stream's buffer limit; the cores bound lines and literals themselves


class _Accepted(asyncio.StreamReaderProtocol):
    """A connection accepted by the event loop on a plain listener: streams made here, dialogue in a task."""

    def __init__(self, front: "MailFront", listener: str) -> None:
        self._front, self._listener = front, listener
        self._front_reader = asyncio.StreamReader(limit=READER_LIMIT)
        super().__init__(self._front_reader)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        writer = FrontWriter(transport, self, self._front_reader, loop)  # type: ignore[arg-type]
        peername = transport.get_extra_info("peername")
        peer = _normal_ip(peername[0] if peername else "")
        front = self._front
        session, refused = front._open(self._listener, self._front_reader, writer, peer, peer, False)
        front._start(front._run(session, refused))  # the greeting (or refusal) is already on its way


class FrontWriter(DetachableWriter):
    """The client side's writer: upgrades to TLS as a server and can hand its transport over."""

    async def start_tls_server(self, context: ssl.SSLContext, timeout: float) -> None:
        await self.drain()
        transport = await self._loop.start_tls(self._transport, self._protocol, context, server_side=True,
                                               ssl_handshake_timeout=timeout)
        self._transport = transport
        self._protocol._replace_writer(self)


@dataclass
class ClientSession:
    """One client connection as the login handlers see it."""

    listener: str
    client_ip: str
    reader: asyncio.StreamReader
    writer: FrontWriter
    tls: bool
    core: LineCore
    user: str = ""
    end: str = "closed"
    handed_off: bool = False
    opened: float = field(default_factory=time.monotonic)
    release: Callable[[], None] = lambda: None  # frees this connection's place in the limits; call once


    def pending_input(self) -> bytes:
        """Everything the client sent that nobody has acted on yet: the core's leftovers and unread stream bytes."""
        data = self.core.take_pending()
        buffered = self.reader._buffer  # asyncio keeps unread bytes here; they belong to the next owner
        if buffered:
            data += bytes(buffered)
            buffered.clear()
        return data


#: Checks a login and, on success, serves the rest of the session. Returns False when the login failed
#: with ``session.end`` set to the reason for ``core.login_failed``; True when the session is finished
#: or handed over (``session.handed_off``: the connection lives on elsewhere).
LoginHandler = Callable[[ClientSession, LoginRequest], Awaitable[bool]]
CoreFactory = Callable[[bool, FrontLimits, bool], LineCore]  # (tls_active, limits, allow_plaintext)


async def checked_login(session: ClientSession, request: LoginRequest, login: Callable[[], Awaitable]):
    """Run ``login`` (an auth-service check that opens the user's back end); on failure set ``session.end`` to
    the core's login_failed reason ("auth" after the back-off, or "unavailable") and return None."""
    from adapters.errors import AuthenticationFailed, BackendUnavailable
    from .services.auth import LoginThrottled
    try:
        return await login()
    except LoginThrottled as exc:
        await asyncio.sleep(min(exc.retry_after, 5))  # answer no faster than the back-off allows
        session.end = "auth"
    except AuthenticationFailed:
        session.end = "auth"
    except BackendUnavailable as exc:
        log.warning("back end unavailable", extra={"event": "backend-unavailable", "client": session.client_ip,
                                                    "user": request.username[:200], "error": str(exc)[:200]})
        session.end = "unavailable"
    return None


def _normal_ip(ip: str) -> str:
    if ":" not in ip:  # IPv4 as the kernel prints it: already normal (the slow parse below is for IPv6)
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def _is_loopback(ip: str) -> bool:
    if ":" not in ip:
        return ip.startswith("127.")  # 127.0.0.0/8, for an address _normal_ip passed through
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class MailFront:
    """One protocol's listeners (plain and implicit TLS) and the limits they share."""

    def __init__(self, settings: MailFrontConfig, make_core: CoreFactory, on_login: LoginHandler,
                 ssl_context: ssl.SSLContext, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.make_core = make_core
        self.on_login = on_login
        self.ssl_context = ssl_context
        self.metrics = metrics
        self.limits = FrontLimits(settings.max_line, settings.max_literal, settings.max_commands_before_login,
                                  settings.max_auth_attempts)
        self.proxies = [ipaddress.ip_network(n, strict=False) for n in settings.proxy_protocol_from]
        self.active = 0
        self.per_ip: dict[str, int] = {}
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self._accepting: list[asyncio.Task] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._gauges: dict[str, tuple] = {}  # listener -> its labelled metrics, looked up once

    async def listen(self, name: str, host: str, port: int, implicit_tls: bool) -> int:
        """Open a listening socket and start accepting; returns the bound port."""
        sock = socket.create_server((host, port), backlog=1024, reuse_port=False,
                                    family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        if implicit_tls or self.proxies:
            self._sockets.append(sock)
            self._accepting.append(asyncio.ensure_future(self._accept(name, sock, implicit_tls)))
        else:
            loop = asyncio.get_running_loop()
            self._servers.append(await loop.create_server(lambda: _Accepted(self, name), sock=sock, backlog=1024))
        return bound

    def _start(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, name: str, sock: socket.socket, implicit_tls: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except (OSError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) or sock.fileno() < 0:
                    return
                log.warning("accept failed", extra={"event": "accept-error", "listener": name, "error": str(exc)})
                await asyncio.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            self._start(self._connection(name, conn, addr[0], implicit_tls))

    async def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._accepting, *self._tasks, return_exceptions=True)
        self._accepting.clear()
        self._sockets.clear()

    async def _connection(self, name: str, conn: socket.socket, peer: str, implicit_tls: bool) -> None:
        peer = _normal_ip(peer)
        client_ip = peer
        try:
            if self.proxies and trusted(peer, self.proxies):
                info = await read_proxy_header(conn, timeout=self.settings.preauth_timeout)
                client_ip = _normal_ip(info.source) if info.source else peer
            reader, writer = await self._streams(conn, implicit_tls)
        except (ProxyHeaderError, OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("session", extra={"event": "session", "listener": name, "client": client_ip,
                                       "end": f"setup-failed: {type(exc).__name__}: {exc}"[:200]})
            conn.close()
            return
        await self._run(*self._open(name, reader, writer, peer, client_ip, implicit_tls))

    def _open(self, name: str, reader: asyncio.StreamReader, writer: FrontWriter, peer: str, client_ip: str,
              implicit_tls: bool) -> tuple[ClientSession, str | None]:
        """Count the connection in, make its session and write the greeting, or the refusal if over a limit."""
        self.active += 1
        self.per_ip[client_ip] = self.per_ip.get(client_ip, 0) + 1
        gauge, total = self._gauges.get(name) or self._gauges.setdefault(name, (
            self.metrics.connections.labels(name), self.metrics.connections_total.labels(name))
            if self.metrics else (None, None))
        if gauge:
            gauge.inc()
            total.inc()
        allow_plain = self.settings.allow_plaintext_loopback and _is_loopback(peer) and _is_loopback(client_ip)
        core = self.make_core(implicit_tls, self.limits, allow_plain)
        session = ClientSession(name, client_ip, reader, writer, implicit_tls, core)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.active -= 1
            left = self.per_ip.get(client_ip, 1) - 1
            if left:
                self.per_ip[client_ip] = left
            else:
                self.per_ip.pop(client_ip, None)
            if gauge:
                gauge.dec()

        session.release = release
        refused = self._admit_after_count(client_ip)
        if refused:
            session.end = f"too-many-connections ({refused})"
            writer.write(core.refusal(refused))
        else:
            writer.write(core.greeting())
        return session, refused

    async def _run(self, session: ClientSession, refused: str | None) -> None:
        name, client_ip, writer = session.listener, session.client_ip, session.writer
        try:
            await self._dialogue(session, refused)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            session.end = type(exc).__name__
        except asyncio.CancelledError:
            session.end = "shutdown"
        except Exception:  # one broken session must never take the listener down
            log.exception("session failed", extra={"event": "session-error", "listener": name, "client": client_ip})
            session.end = "error"
        finally:
            if not session.handed_off:
                session.release()
                log.info("session", extra={"event": "session", "listener": name, "client": client_ip,
                                           **({"user": session.user} if session.user else {}), "end": session.end,
                                           "seconds": round(time.monotonic() - session.opened, 3)})
                writer.close()

    def _admit_after_count(self, ip: str) -> str | None:
        # Counted already: compare with the limit plus this connection.
        s = self.settings
        if s.max_connections and self.active > s.max_connections:
            return "server"
        if s.max_connections_per_ip and self.per_ip.get(ip, 0) > s.max_connections_per_ip:
            return "address"
        return None

    async def _streams(self, conn: socket.socket, implicit_tls: bool) -> tuple[asyncio.StreamReader, FrontWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READER_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=self.ssl_context if implicit_tls else None,
            ssl_handshake_timeout=min(self.settings.preauth_timeout, 30.0) if implicit_tls else None)
        return reader, FrontWriter(transport, protocol, reader, loop)

    async def _dialogue(self, session: ClientSession, refused: str | None) -> None:
        writer, reader, core = session.writer, session.reader, session.core
        await writer.drain()  # the greeting or refusal written by _open
        if refused:
            return
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self.settings.preauth_timeout)
            except asyncio.TimeoutError:
                session.end = "idle-timeout"
                writer.write(core.timeout_notice())
                return
            if not data:
                session.end = "eof"
                return
            if await self._act(session, core.receive(data)):
                return

    async def _act(self, session: ClientSession, replies: list[Reply]) -> bool:
        """Carry out a core's replies; True when the session is over (or handed over)."""
        writer, core = session.writer, session.core
        queue = list(replies)
        while queue:
            reply = queue.pop(0)
            if reply.data:
                writer.write(reply.data)
            if reply.close:
                session.end = session.end if session.end != "closed" else "logout"
                await writer.drain()
                return True
            if reply.starttls:
                await writer.start_tls_server(self.ssl_context, min(self.settings.preauth_timeout, 30.0))
                session.tls = True
                core.tls_started()
            if reply.login is not None:
                await writer.drain()
                if await self.on_login(session, reply.login):
                    return True
                queue = [core.login_failed(reply.login, session.end)] + core.receive(b"")
                session.end = "closed"
        await writer.drain()
        return False
