"""Reaching an IMAP back end: TLS or STARTTLS, and a lean login check used by the authentication service."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthenticationFailed, BackendUnavailable, InvalidData
from ..interfaces import Credentials

_CAPS = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.I)
_MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class ImapEndpoint:
    """Where an IMAP back end listens and how to secure the connection."""

    host: str
    port: int
    tls: str = "implicit"  # implicit | starttls | none
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 10.0

    def context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()


class _Conn:
    """A minimal line-oriented IMAP client: enough to greet, secure, log in and leave."""

    def __init__(self, reader: asyncio.StreamReader, writer: DetachableWriter) -> None:
        self.reader, self.writer = reader, writer
        self.caps: frozenset[str] = frozenset()
        self._tag = 0

    async def line(self) -> bytes:
        data = await self.reader.readuntil(b"\r\n")
        if len(data) > _MAX_LINE:
            raise InvalidData("IMAP server sent an over-long line")
        return data[:-2]

    def _note_caps(self, line: bytes) -> None:
        if m := _CAPS.search(line):
            self.caps = frozenset(m.group(1).decode("ascii", "replace").upper().split())
        elif line.upper().startswith(b"* CAPABILITY "):
            self.caps = frozenset(line[13:].decode("ascii", "replace").upper().split())

    def send(self, text: bytes) -> bytes:
        """Queue a command without waiting; its answer is skipped by the next ``command``."""
        self._tag += 1
        tag = b"c%d" % self._tag
        self.writer.write(tag + b" " + text + b"\r\n")
        return tag

    async def command(self, text: bytes, continuation: bytes | None = None) -> tuple[bytes, bytes]:
        """Send a command; return (status word, tagged line)."""
        tag = self.send(text)
        await self.writer.drain()
        while True:
            line = await self.line()
            if line.startswith(b"+") and continuation is not None:
                self.writer.write(continuation + b"\r\n")
                await self.writer.drain()
                continuation = None
                continue
            if line.startswith(b"+"):
                self.writer.write(b"*\r\n")  # cancel an exchange we did not expect
                continue
            self._note_caps(line)
            if line.startswith(tag + b" "):
                status = line[len(tag) + 1:].split(b" ", 1)[0].upper()
                return status, line

    def close(self) -> None:
        self.writer.close()


class DetachableWriter(asyncio.StreamWriter):
    """A StreamWriter whose transport can be handed to another protocol.

    A plain StreamWriter closes its transport when it is garbage-collected;
    after ``detach`` this one leaves the transport to its new owner.
    """

    _detached = False

    def detach(self) -> asyncio.Transport:
        self._detached = True
        return self.transport  # type: ignore[return-value]

    def __del__(self) -> None:
        if not self._detached:
            super().__del__()


async def open_stream(host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                      limit: int = _MAX_LINE) -> tuple[asyncio.StreamReader, DetachableWriter]:
    """Like asyncio.open_connection, with a writer whose transport can later be detached."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl_context,
                                                server_hostname=host if ssl_context else None)
    return reader, DetachableWriter(transport, protocol, reader, loop)


async def _open(ep: ImapEndpoint) -> _Conn:
    ctx = ep.context() if ep.tls == "implicit" else None
    reader, writer = await open_stream(ep.host, ep.port, ctx)
    conn = _Conn(reader, writer)
    greeting = await conn.line()
    if not greeting.upper().startswith(b"* OK"):
        conn.close()
        raise BackendUnavailable(f"IMAP server greeted with {greeting[:80]!r}")
    conn._note_caps(greeting)
    if ep.tls == "starttls":
        status, line = await conn.command(b"STARTTLS")
        if status != b"OK":
            conn.close()
            raise BackendUnavailable("IMAP server refused STARTTLS")
        await writer.start_tls(ep.context(), server_hostname=ep.host)
        conn.caps = frozenset()
    if not conn.caps:
        await conn.command(b"CAPABILITY")
    return conn


def originating_ip(client_ip: str | None) -> str | None:
    """The client's address, normalised, for an RFC 2971 ID "x-originating-ip" field.

    Back ends trust that field from the gateway; without it every failed login
    through the gateway would count against the gateway's own address in the
    back end's brute-force penalty.
    """
    try:
        return str(ipaddress.ip_address(client_ip)) if client_ip else None
    except ValueError:
        return None


class SparePool:
    """Back-end connections opened, secured and greeted ahead of the logins that will use them.

    A login through the gateway must otherwise wait for a TCP connect, the back
    end's greeting and, with TLS, a handshake before it can even send the
    credentials. Each time a spare is taken (or was wanted and missing), the
    pool opens another for the next login, so while logins keep coming each
    finds one ready. A quiet gateway holds nothing: a spare older than
    ``max_age`` is logged out and closed, and only a login brings a new one.
    ``spares`` = 0 turns the pool off.
    """

    def __init__(self, spares: int = 1, max_age: float = 20.0,
                 on_take: Callable[[bool], None] | None = None) -> None:
        self.spares = spares
        self.on_take = on_take  # told True for a hit, False for a miss
        self.max_age = max_age
        self._ready: dict[ImapEndpoint, list[tuple[_Conn, asyncio.TimerHandle]]] = {}
        self._opening: dict[ImapEndpoint, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self.hits = self.misses = 0

    def take(self, ep: ImapEndpoint) -> _Conn | None:
        """A live spare for ``ep``, or None; either way another is started for the next login."""
        if self.spares <= 0:
            return None
        found = None
        ready = self._ready.get(ep, [])
        while ready and found is None:
            conn, timer = ready.pop()
            timer.cancel()
            if _usable(conn):
                found = conn
            else:
                conn.close()
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        if self.on_take is not None:
            self.on_take(found is not None)
        self._refill(ep)
        return found

    def held(self, ep: ImapEndpoint) -> int:
        return len(self._ready.get(ep, ()))

    def _refill(self, ep: ImapEndpoint) -> None:
        wanted = self.spares - len(self._ready.get(ep, ())) - self._opening.get(ep, 0)
        for _ in range(wanted):
            self._opening[ep] = self._opening.get(ep, 0) + 1
            task = asyncio.ensure_future(self._open_spare(ep))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open_spare(self, ep: ImapEndpoint) -> None:
        try:
            conn = await asyncio.wait_for(_open(ep), ep.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ssl.SSLError, BackendUnavailable, InvalidData):
            return  # the login that needs it connects itself and reports the failure
        finally:
            self._opening[ep] -= 1
        timer = asyncio.get_running_loop().call_later(self.max_age, self._expire, ep, conn)
        self._ready.setdefault(ep, []).append((conn, timer))

    def _expire(self, ep: ImapEndpoint, conn: _Conn) -> None:
        ready = self._ready.get(ep, [])
        for i, (held, _) in enumerate(ready):
            if held is conn:
                del ready[i]
                break
        _leave(conn)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for ready in self._ready.values():
            for conn, timer in ready:
                timer.cancel()
                _leave(conn)
        self._ready.clear()


def _usable(conn: _Conn) -> bool:
    """Still connected, and the server has said nothing since its greeting (a BYE, say)."""
    return not (conn.reader.at_eof() or conn.writer.is_closing() or conn.reader._buffer
                or conn.reader.exception() is not None)


def _leave(conn: _Conn) -> None:
    """Log out politely (the back end logs a clean disconnect, not an aborted one) and close."""
    if not conn.writer.is_closing():
        conn.writer.write(b"z LOGOUT\r\n")
    conn.close()


@dataclass
class BackendSession:
    """An IMAP connection logged in for one user, ready to be relayed or used."""

    reader: asyncio.StreamReader
    writer: DetachableWriter
    caps: frozenset[str]
    ok_line: bytes  # the tagged OK answering the login, tag included

    def close(self) -> None:
        self.writer.close()


async def open_session(ep: ImapEndpoint, creds: Credentials, client_ip: str | None = None,
                       authzid: str = "", spares: SparePool | None = None) -> BackendSession:
    """Connect, secure and log in; return the authenticated connection.

    ``authzid`` logs in as that user with ``creds`` of a master account (SASL
    PLAIN authorization identity). Raises AuthenticationFailed for refused
    credentials and BackendUnavailable when the server cannot be reached or
    answers with a temporary failure. With ``spares``, a connection already
    greeted is used when one is ready.
    """
    try:
        return await asyncio.wait_for(_open_session(ep, creds, client_ip, authzid, spares), ep.timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ssl.SSLError) as exc:
        raise BackendUnavailable(f"IMAP back end {ep.host}:{ep.port}: {type(exc).__name__}") from None


async def _open_session(ep: ImapEndpoint, creds: Credentials, client_ip: str | None, authzid: str,
                        spares: SparePool | None) -> BackendSession:
    conn = spares.take(ep) if spares is not None else None
    if conn is not None:
        try:
            return await _log_in(conn, creds, client_ip, authzid)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the spare died unseen (the back end restarted, say): a fresh connection decides
    return await _log_in(await _open(ep), creds, client_ip, authzid)


async def _log_in(conn: _Conn, creds: Credentials, client_ip: str | None, authzid: str) -> BackendSession:
    try:
        if "LOGINDISABLED" in conn.caps and "AUTH=PLAIN" not in conn.caps:
            raise BackendUnavailable("IMAP back end disables LOGIN on this connection (configure TLS)")
        blob = base64.b64encode(authzid.encode() + b"\0" + creds.username.encode() + b"\0" + creds.password.encode())
        # SASL PLAIN avoids every quoting question that LOGIN's strings raise. ID and a SASL-IR
        # login go out in one write: one round trip to the back end instead of two.
        if (ip := originating_ip(client_ip)) and "ID" in conn.caps:
            conn.send(b'ID ("x-originating-ip" "%s")' % ip.encode())
        if "SASL-IR" in conn.caps:
            status, line = await conn.command(b"AUTHENTICATE PLAIN " + blob)
        else:
            status, line = await conn.command(b"AUTHENTICATE PLAIN", continuation=blob)
        if status != b"OK":
            text = line.upper()
            if b"[UNAVAILABLE]" in text or b"[SERVERBUG]" in text:
                raise BackendUnavailable("IMAP back end could not check the login now")
            raise AuthenticationFailed("the IMAP back end refused the credentials")
        if not _CAPS.search(line):
            conn.caps = frozenset()
            await conn.command(b"CAPABILITY")
        return BackendSession(conn.reader, conn.writer, conn.caps, line)
    except BaseException:
        conn.close()
        raise


async def check_login(ep: ImapEndpoint, creds: Credentials, client_ip: str | None = None) -> frozenset[str]:
    """Log in to the back end and out again; return its post-login capabilities.

    Raises AuthenticationFailed for refused credentials and BackendUnavailable
    when the server cannot be reached or answers with a temporary failure.
    """
    session = await open_session(ep, creds, client_ip)
    try:
        writer = session.writer
        writer.write(b"z LOGOUT\r\n")
        await asyncio.wait_for(writer.drain(), 2)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        session.close()
    return session.caps
