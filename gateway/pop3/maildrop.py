"""The POP3 TRANSACTION and UPDATE states (RFC 1939) over one folder of a MailStore, and the maildrop lock.

Message numbers are fixed when the session opens; DELE only marks, and
QUIT is the one point where marked messages are expunged on the back end.
Bodies stream from the store through ``DotStuffer`` one chunk at a time,
each written and drained before the next is read.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Awaitable, Callable

from adapters.errors import BackendError, BackendUnavailable, NotFound

from .dotstuff import DotStuffer
from .preauth import capa_reply, capabilities

log = logging.getLogger("casgate.pop3")

_UNAVAILABLE = b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n"
_STORE_ERROR = b"-ERR [SYS/TEMP] mail store error, try again later\r\n"
_LIST_BATCH = 1024  # listing lines written per drain


class _Aborted(Exception):
    """A back-end failure in the middle of a multi-line reply: its framing cannot be repaired."""


class _Stalled(Exception):
    """The client stopped reading what we send for longer than the idle timeout."""


class Pop3Maildrop:
    """One authenticated POP3 session over ``folder`` of a MailStore.

    The shell calls ``open`` after a successful login (a back-end error there
    propagates, to be answered as ``login_failed(..., "unavailable")``), sends
    the line it returns, then hands the streams to ``serve``. Connection
    errors from the streams propagate; like EOF they delete nothing.
    """

    def __init__(self, store, *, folder: str = "INBOX", max_line: int = 512, chunk_size: int = 65536,
                 on_update: Callable[[], Awaitable[None]] | None = None, read_ahead: int = 0) -> None:
        self.store = store
        # After a RETR, the next message is fetched (already dot-stuffed) while the client reads this one,
        # if it is at most this many octets; 0 turns that off. Larger messages always stream.
        self.read_ahead = read_ahead
        self._ahead: tuple[int, asyncio.Task[bytes | None]] | None = None
        self.on_update = on_update  # run after QUIT's expunge, before its +OK: where RFC 1939 releases the lock
        self.folder = folder
        self.max_line = max_line
        self.chunk_size = chunk_size
        self.uidvalidity = 0
        # The message table, indexed by message number - 1: two flat arrays and a flag per message.
        self._uids = array("I")
        self._sizes = array("Q")
        self._deleted = bytearray()
        self._live = 0
        self._live_octets = 0
        self._idle_timeout = 600.0

    async def open(self) -> bytes:
        status = await self.store.status(self.folder)
        messages = sorted(await self.store.list_messages(self.folder), key=lambda m: m.uid)
        self.uidvalidity = status.uidvalidity
        self._uids = array("I", (m.uid for m in messages))
        self._sizes = array("Q", (max(m.size, 0) for m in messages))
        self._deleted = bytearray(len(messages))
        self._live = len(messages)
        self._live_octets = sum(self._sizes)
        return b"+OK maildrop has %d messages (%d octets)\r\n" % (self._live, self._live_octets)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes = b"",
                    idle_timeout: float = 600.0) -> str:
        """Answer commands until QUIT, EOF, the idle timeout or a fatal error; returns why it ended.

        The idle timeout also bounds how long one write may wait for a client that stopped reading
        ("write-timeout"), so a stuck client cannot hold the session and its maildrop lock for ever.
        """
        self._idle_timeout = idle_timeout
        try:
            return await self._serve(reader, writer, pending, idle_timeout)
        finally:
            await self._settle_ahead()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes,
                     idle_timeout: float) -> str:
        buf = pending
        while True:
            line, sep, rest = buf.partition(b"\n")
            if sep and len(line) <= self.max_line + 1:  # + 1: the CR
                buf = rest
                try:
                    end = await self._command(line.rstrip(b"\r"), writer)
                except _Stalled:
                    return "write-timeout"
                if end:
                    return end
                continue
            if len(line) > self.max_line + 1:
                try:
                    await self._send(writer, b"-ERR line too long\r\n")
                except _Stalled:
                    return "write-timeout"
                return "line-too-long"
            try:
                data = await asyncio.wait_for(reader.read(8192), idle_timeout)
            except asyncio.TimeoutError:
                return "idle-timeout"
            if not data:
                return "eof"
            buf += data

    async def _command(self, line: bytes, writer: asyncio.StreamWriter) -> str | None:
        words = line.split()
        entry = _COMMANDS.get(words[0].upper()) if words else None
        if entry is None:
            await self._send(writer, b"-ERR unknown command or not valid after login\r\n")
            return None
        handler, min_args, max_args = entry
        args = words[1:]
        if not min_args <= len(args) <= max_args:
            await self._send(writer, b"-ERR syntax error\r\n")
            return None
        try:
            return await handler(self, writer, args)
        except _Aborted:
            return "backend-error"
        except BackendUnavailable as exc:
            log.warning("pop3 back end unavailable: %s", exc, extra={"event": "pop3-backend"})
            await self._send(writer, _UNAVAILABLE)
            return "backend-error"
        except BackendError as exc:
            log.warning("pop3 back end failed: %s", exc, extra={"event": "pop3-backend"})
            await self._send(writer, _STORE_ERROR)
            return "backend-error"

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        # A slow client holds us here instead of growing the transport's buffer.
        try:
            await asyncio.wait_for(writer.drain(), self._idle_timeout)
        except asyncio.TimeoutError:
            raise _Stalled from None

    def _number(self, arg: bytes) -> int | bytes:
        """The table index of a message-number argument, or the -ERR line refusing it."""
        if not arg.isdigit() or len(arg) > 10:
            return b"-ERR invalid message number\r\n"
        n = int(arg)
        if not 1 <= n <= len(self._uids):
            return b"-ERR no such message\r\n"
        if self._deleted[n - 1]:
            return b"-ERR message %d already deleted\r\n" % n
        return n - 1

    async def _listing(self, writer: asyncio.StreamWriter, args: list[bytes],
                       entry: Callable[[int], bytes]) -> None:
        if args:
            i = self._number(args[0])
            await self._send(writer, i if isinstance(i, bytes) else b"+OK " + entry(i))
            return
        out = [b"+OK %d messages (%d octets)\r\n" % (self._live, self._live_octets)]
        deleted = self._deleted
        for i in range(len(self._uids)):
            if not deleted[i]:
                out.append(entry(i))
                if len(out) >= _LIST_BATCH:
                    await self._send(writer, b"".join(out))
                    out = []
        out.append(b".\r\n")
        await self._send(writer, b"".join(out))

    async def _stream(self, writer: asyncio.StreamWriter, i: int, head: bytes, stuffer: DotStuffer) -> None:
        """Send message ``i`` as a multi-line reply; "+OK" goes out with the first chunk, once the store has one."""
        messages = self.store.stream_message(self.folder, self._uids[i], self.chunk_size)
        started = False
        try:
            try:
                async for chunk in messages:
                    data = stuffer.feed(chunk)
                    if not started:
                        data, started = head + data, True
                    if data:
                        await self._send(writer, data)
                    if stuffer.done:
                        break
            except NotFound:
                if started:
                    raise _Aborted from None
                await self._send(writer, b"-ERR message was removed\r\n")
                return
            except BackendError as exc:
                if started:
                    log.warning("pop3 message stream broke: %s", exc, extra={"event": "pop3-backend"})
                    raise _Aborted from exc
                raise
        finally:
            await messages.aclose()
        await self._send(writer, (b"" if started else head) + stuffer.finish())

    # --- commands: each returns None to go on, or why the session ends ----------------------------------

    async def _stat(self, writer, args):
        await self._send(writer, b"+OK %d %d\r\n" % (self._live, self._live_octets))

    async def _list(self, writer, args):
        await self._listing(writer, args, lambda i: b"%d %d\r\n" % (i + 1, self._sizes[i]))

    async def _uidl(self, writer, args):
        # "uidvalidity.uid" stays the same across sessions and gateway nodes, and changes if the folder is rebuilt.
        await self._listing(writer, args, lambda i: b"%d %d.%d\r\n" % (i + 1, self.uidvalidity, self._uids[i]))

    async def _retr(self, writer, args):
        i = self._number(args[0])
        if isinstance(i, bytes):
            return await self._send(writer, i)
        head = b"+OK %d octets\r\n" % self._sizes[i]
        ready = await self._settle_ahead(i)
        if ready is None:
            await self._stream(writer, i, head, DotStuffer())
            self._start_ahead(i + 1)
        else:
            self._start_ahead(i + 1)  # first: the next fetch overlaps this write's drain
            await self._send(writer, head + ready)

    # --- read-ahead: one small message fetched while the client reads the previous one -------------------

    def _start_ahead(self, i: int) -> None:
        if not self.read_ahead:
            return
        while i < len(self._uids) and self._deleted[i]:
            i += 1
        if i < len(self._uids) and self._sizes[i] <= self.read_ahead:
            self._ahead = (i, asyncio.ensure_future(self._fetch_stuffed(i)))

    async def _fetch_stuffed(self, i: int) -> bytes | None:
        """Message ``i`` as a RETR body (stuffed, with the final "."), or None if it is not worth keeping."""
        stuffer, parts, size = DotStuffer(), [], 0
        messages = self.store.stream_message(self.folder, self._uids[i], self.chunk_size)
        try:
            async for chunk in messages:
                size += len(chunk)
                if size > self.read_ahead + self.chunk_size:  # bigger than listed: let RETR stream it
                    return None
                parts.append(stuffer.feed(chunk))
        finally:
            await messages.aclose()
        parts.append(stuffer.finish())
        return b"".join(parts)

    async def _settle_ahead(self, want: int = -1) -> bytes | None:
        """Wait for the read-ahead (the store serves one request at a time) and return it if it is message ``want``.

        It is awaited, not cancelled: cancelling mid-literal would cost the back-end connection. Any
        failure is forgotten here; the RETR that streams the message instead meets and reports it.
        """
        if self._ahead is None:
            return None
        i, task = self._ahead
        self._ahead = None
        try:
            data = await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return None
        except Exception as exc:
            log.debug("pop3 read-ahead failed: %s", exc, extra={"event": "pop3-backend"})
            return None
        return data if i == want and not self._deleted[i] else None

    async def _top(self, writer, args):
        i = self._number(args[0])
        if isinstance(i, bytes):
            return await self._send(writer, i)
        if not args[1].isdigit() or len(args[1]) > 10:
            return await self._send(writer, b"-ERR invalid line count\r\n")
        await self._settle_ahead()
        await self._stream(writer, i, b"+OK top of message follows\r\n", DotStuffer(int(args[1])))

    async def _dele(self, writer, args):
        i = self._number(args[0])
        if isinstance(i, bytes):
            return await self._send(writer, i)
        self._deleted[i] = 1
        self._live -= 1
        self._live_octets -= self._sizes[i]
        await self._send(writer, b"+OK message %d deleted\r\n" % (i + 1))

    async def _rset(self, writer, args):
        self._deleted = bytearray(len(self._uids))
        self._live, self._live_octets = len(self._uids), sum(self._sizes)
        await self._send(writer, b"+OK maildrop has %d messages (%d octets)\r\n" % (self._live, self._live_octets))

    async def _noop(self, writer, args):
        await self._send(writer, b"+OK\r\n")

    async def _capa(self, writer, args):
        await self._send(writer, capa_reply(capabilities()))

    async def _quit(self, writer, args):
        await self._settle_ahead()
        doomed = [uid for uid, gone in zip(self._uids, self._deleted) if gone]
        if doomed:
            try:
                await self.store.expunge(self.folder, doomed)
            except BackendError as exc:
                log.warning("pop3 expunge failed: %s", exc, extra={"event": "pop3-backend"})
                await self._send(writer, b"-ERR [SYS/TEMP] some deleted messages not removed\r\n")
                return "backend-error"
        if self.on_update is not None:
            # A client that saw +OK may reconnect at once (or the node may stop): the lock must already be free.
            await self.on_update()
        await self._send(writer, b"+OK casgate signing off (%d messages deleted)\r\n" % len(doomed))
        return "quit"


Handler = Callable[[Pop3Maildrop, asyncio.StreamWriter, list[bytes]], Awaitable[str | None]]

# Command -> (handler, fewest arguments, most arguments); anything else is -ERR.
_COMMANDS: dict[bytes, tuple[Handler, int, int]] = {
    b"STAT": (Pop3Maildrop._stat, 0, 0),
    b"LIST": (Pop3Maildrop._list, 0, 1),
    b"UIDL": (Pop3Maildrop._uidl, 0, 1),
    b"RETR": (Pop3Maildrop._retr, 1, 1),
    b"TOP": (Pop3Maildrop._top, 2, 2),
    b"DELE": (Pop3Maildrop._dele, 1, 1),
    b"RSET": (Pop3Maildrop._rset, 0, 0),
    b"NOOP": (Pop3Maildrop._noop, 0, 0),
    b"QUIT": (Pop3Maildrop._quit, 0, 0),
    b"CAPA": (Pop3Maildrop._capa, 0, 0),
}


class MaildropLocks:
    """One POP3 session per maildrop (RFC 1939 exclusive-access lock, RFC 2449 [IN-USE]), across all nodes.

    A user is held in an in-process set (so a second session on this node is
    refused without a round trip) and as a counter in the shared state store:
    the first ``kv_incr`` returns 1 and wins, any other node sees more. The
    counter expires ``ttl`` seconds after it was last renewed, so a node that
    crashed while holding locks does not lock those users out for good. While
    a node holds locks, one task renews them all every third of the ttl, so a
    long session keeps its lock. Pass a canonical login (the directory's), not
    what the client typed.
    """

    NAMESPACE = "pop3-lock"

    def __init__(self, state_store, ttl: float = 900) -> None:
        self.state = state_store
        self.ttl = ttl
        self._held: set[str] = set()
        self._renewer: asyncio.Task | None = None

    async def acquire(self, user: str) -> bool:
        key = user.casefold()
        if key in self._held:
            return False
        self._held.add(key)  # before the await: a concurrent acquire on this node must already see it
        try:
            won = await self.state.kv_incr(self.NAMESPACE, key, self.ttl) == 1
        except BaseException:
            self._held.discard(key)
            raise
        if not won:
            self._held.discard(key)
        elif self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_while_held())
        return won

    async def renew(self) -> None:
        """Push every lock this node holds ``ttl`` seconds into the future (the counter goes back to 1,
        which only a holder may do: refused attempts elsewhere have already been answered)."""
        for key in list(self._held):
            if key not in self._held:  # released while an earlier one was being renewed
                continue
            try:
                await self.state.kv_set(self.NAMESPACE, key, b"1", self.ttl)
                if key not in self._held:  # released meanwhile: its delete may have gone first
                    await self.state.kv_delete(self.NAMESPACE, key)
            except Exception:
                log.warning("pop3 lock of %s not renewed; retrying", key, exc_info=True,
                            extra={"event": "pop3-lock"})

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self.ttl / 3)
            await self.renew()

    async def release(self, user: str) -> None:
        """Give the lock back; if the state store cannot be reached the counter's ttl frees it later."""
        key = user.casefold()
        if key not in self._held:
            return
        self._held.discard(key)  # first: a renewal must not bring it back
        try:
            # Shielded: a shutdown that cancels the session must not cancel the release half-way.
            await asyncio.shield(self.state.kv_delete(self.NAMESPACE, key))
        except Exception:
            log.warning("pop3 lock of %s not released; it expires by itself", user, exc_info=True,
                        extra={"event": "pop3-lock"})
