"""A lean asyncio IMAP4rev1 client: responses parsed without recursion, literals read exactly or streamed.

The pure part (``parse_response``, the response events, mailbox-name and
date encoding) takes bytes and returns values; ``ResponseReader`` frames
responses off an ``asyncio.StreamReader``; ``ImapConnection`` sends commands
one at a time and turns every failure into an ``adapters.errors`` exception.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..errors import (AuthenticationFailed, BackendError, BackendUnavailable, Conflict, InvalidData, NotFound,
                      PermissionDenied, QuotaExceeded)
from .connect import ImapEndpoint, originating_ip

MAX_LINE = 64 * 1024            # octets in one response line, literals not counted
MAX_LITERAL = 512 * 1024 * 1024  # octets in one literal read into memory
MAX_DEPTH = 64                  # nested parentheses in one response
DRAIN_LIMIT = 4 * 1024 * 1024   # an abandoned streamed literal larger than this drops the connection instead

_STATUS_WORDS = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})
# One token a match, told apart by its first octet: a quoted string, a parenthesis, an atom
# (BODY[HEADER.FIELDS (A B)]<0> is one), or any other single octet, which is junk. Spaces separate.
_ATOM_CHAR = rb'[^\x00-\x20()"{\[\x7f]'
_TOKEN = re.compile(rb'"[^"\\\r\n]*+(?:\\.[^"\\\r\n]*+)*+"|[()]|' + _ATOM_CHAR + rb'++(?:\[[^\]\r\n]*+\]'
                    + _ATOM_CHAR + rb'*+)*+|[^ ]', re.S)
_NOT_ATOM = frozenset(b'()"{[\x7f' + bytes(range(32)))
_ESCAPED = re.compile(rb"\\(.)", re.S)
_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}\Z")
_KIND = re.compile(rb"[A-Z][A-Z0-9.\-]*")
_KINDS: dict[bytes, str] = {}  # response kinds seen, as sent -> validated upper-case name
_MUTF7_RUN = re.compile(r"&([A-Za-z0-9+,]*)-")
_FLAG = re.compile(r"\\?[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")  # RFC 3501 ATOM-CHAR
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Status:
    """A status response: a tagged completion (OK/NO/BAD) or an untagged OK/NO/BAD/BYE/PREAUTH."""

    tag: bytes
    kind: str
    code: str | None  # the response code without brackets, e.g. "APPENDUID 1700000000 42"
    text: str

    @property
    def code_name(self) -> str:
        return self.code.split(" ", 1)[0].upper() if self.code else ""


@dataclass(frozen=True, slots=True)
class Data:
    """An untagged data response, e.g. ``* 3 FETCH (...)`` or ``* LIST () "/" INBOX``.

    ``items`` holds what follows the kind: atoms and strings as bytes, NIL as
    None, parenthesised lists as tuples (a literal streamed elsewhere reads as None).
    """

    kind: str
    number: int | None
    items: tuple

    def attrs(self) -> dict[bytes, object]:
        """The last item, a list of name-value pairs (FETCH, STATUS), as a dict keyed by upper-case name."""
        pairs = self.items[-1] if self.items and type(self.items[-1]) is tuple else ()
        return {k.upper(): v for k, v in zip(pairs[0::2], pairs[1::2]) if type(k) is bytes}


@dataclass(frozen=True, slots=True)
class Continuation:
    """A command continuation request (``+ ...``)."""

    text: bytes


Response = Status | Data | Continuation


@dataclass(frozen=True, slots=True)
class Literal:
    """A command argument to send as an IMAP literal."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one command got back: its tagged completion and the untagged responses around it."""

    done: Status
    untagged: tuple[Status | Data, ...]

    def data(self, kind: str) -> list[Data]:
        return [r for r in self.untagged if type(r) is Data and r.kind == kind]

    def code(self, name: str) -> list[str] | None:
        """Arguments of the first response code called ``name`` (untagged first, then the completion)."""
        for r in (*self.untagged, self.done):
            if type(r) is Status and r.code_name == name:
                return r.code.split()[1:]
        return None


def _status(tag: bytes, kind: bytes, rest: bytes) -> Status:
    code = None
    if rest.startswith(b"[") and (end := rest.find(b"]")) > 0:
        code = rest[1:end].decode("utf-8", "replace")
        rest = rest[end + 1:].lstrip(b" ")
    return Status(tag, kind.decode(), code, rest.decode("utf-8", "replace"))


def _items(segments: Sequence[bytes | None]) -> tuple:
    """Tokens of text segments (even places) and literals between them (odd places), nested by parentheses."""
    stack: list[list] = []
    cur: list = []
    add = cur.append  # bound once per list: this loop runs for every token of every response
    not_atom = _NOT_ATOM
    for i, seg in enumerate(segments):
        if i & 1:
            add(seg)
            continue
        nil = b"NIL" in seg.upper()  # rare: spares every other atom a case-insensitive comparison
        for t in _TOKEN.findall(seg):
            c = t[0]
            if c not in not_atom:
                add(None if nil and t.upper() == b"NIL" else t)
            elif c == 40:  # (
                if len(stack) >= MAX_DEPTH:
                    raise InvalidData("IMAP response nests parentheses too deeply")
                stack.append(cur)
                cur = []
                add = cur.append
            elif c == 41:  # )
                if not stack:
                    raise InvalidData("IMAP response closes a parenthesis it never opened")
                inner = tuple(cur)
                cur = stack.pop()
                add = cur.append
                add(inner)
            elif c == 34 and len(t) > 1:  # a whole quoted string
                q = t[1:-1]
                add(_ESCAPED.sub(rb"\1", q) if b"\\" in q else q)
            else:
                raise InvalidData(f"IMAP response has an unexpected {t!r}")
    if stack:
        raise InvalidData("IMAP response leaves a parenthesis open")
    return tuple(cur)


def parse_response(segments: Sequence[bytes | None]) -> Response:
    """One framed response (line text, literal, line text, ...) as an event; InvalidData when malformed."""
    first = segments[0]
    if first[:1] == b"+":
        return Continuation(first[2:] if first[1:2] == b" " else first[1:])
    tag, _, rest = first.partition(b" ")
    word, _, tail = rest.partition(b" ")
    upper = word.upper()
    if upper in _STATUS_WORDS and len(segments) == 1 and tag:
        return _status(tag, upper, tail)
    if tag != b"*":
        raise InvalidData(f"IMAP server sent a malformed response: {first[:60]!r}")
    number = None
    if word.isdigit() and len(word) <= 20:
        number = int(word)
        word, _, tail = tail.partition(b" ")
    kind = _KINDS.get(word)
    if kind is None:
        upper = word.upper()
        if not _KIND.fullmatch(upper):
            raise InvalidData(f"IMAP server sent a malformed response: {first[:60]!r}")
        kind = upper.decode()
        if len(_KINDS) < 256:
            _KINDS[word] = kind
    return Data(kind, number, _items([tail, *segments[1:]]) if len(segments) > 1 else _items((tail,)))


def _is_status_line(line: bytes) -> bool:
    """Status and continuation lines carry free text, never literals, whatever they end with."""
    if line[:1] == b"+":
        return True
    parts = line.split(b" ", 2)
    return len(parts) > 1 and parts[1].upper() in _STATUS_WORDS


@dataclass(slots=True)
class OpenLiteral:
    """A literal the reader stopped in front of: the response so far, and the octets still to read."""

    segments: list
    size: int
    remaining: int


class ResponseReader:
    """Frames responses off a stream: lines up to ``max_line``, literals with readexactly, iteratively."""

    def __init__(self, stream: asyncio.StreamReader, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL) -> None:
        self.stream = stream
        self.max_line = max_line
        self.max_literal = max_literal

    async def read(self) -> Response:
        return parse_response(await self.frame())

    async def frame(self, stream_if: Callable[[list], bool] | None = None) -> list | OpenLiteral:
        """The next response as segments; or, when ``stream_if(segments)`` accepts a literal, stop in front of it."""
        line = await self._line()
        if not line.endswith(b"}"):  # the common case: no literal
            return [line]
        return await self._rest([line], stream_if)

    async def read_chunk(self, lit: OpenLiteral, size: int) -> bytes:
        chunk = await self._exact(min(size, lit.remaining))
        lit.remaining -= len(chunk)
        return chunk

    async def finish(self, lit: OpenLiteral) -> list:
        """Skip what is left of an open literal, then read the rest of its response (the literal reads as None)."""
        while lit.remaining:
            await self.read_chunk(lit, 65536)
        lit.segments += [None, await self._line()]
        return await self._rest(lit.segments, None)

    async def _rest(self, segs: list, stream_if: Callable[[list], bool] | None) -> list | OpenLiteral:
        while True:
            line = segs[-1]
            if not line.endswith(b"}") or (m := _LITERAL_END.search(line)) is None:
                return segs
            if len(segs) == 1 and _is_status_line(line):
                return segs
            digits = m.group(1)
            if len(digits) > 12 or int(digits) > self.max_literal:
                raise InvalidData(f"IMAP server announced a literal of {digits[:20].decode()} octets")
            size = int(digits)
            segs[-1] = line[:m.start()]
            if stream_if is not None and stream_if(segs):
                return OpenLiteral(segs, size, size)
            segs.append(await self._exact(size))
            segs.append(await self._line())

    async def _line(self) -> bytes:
        try:
            data = await self.stream.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise BackendUnavailable("IMAP server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise InvalidData("IMAP server sent an over-long line") from None
        if len(data) > self.max_line + 2:
            raise InvalidData("IMAP server sent an over-long line")
        return data[:-2]

    async def _exact(self, n: int) -> bytes:
        try:
            return await self.stream.readexactly(n)
        except asyncio.IncompleteReadError:
            raise BackendUnavailable("IMAP server closed the connection inside a literal") from None


def status_error(status: Status) -> BackendError:
    """The adapters.errors exception for a NO or BAD completion."""
    code = status.code_name
    text = (f"[{status.code}] " if status.code else "") + status.text
    if code in ("NONEXISTENT", "TRYCREATE") or "doesn't exist" in status.text:
        return NotFound(text[:200])
    if code == "OVERQUOTA":
        return QuotaExceeded(text[:200])
    if code == "ALREADYEXISTS":
        return Conflict(text[:200])
    if code == "NOPERM":
        return PermissionDenied(text[:200])
    if code in ("UNAVAILABLE", "SERVERBUG", "INUSE"):
        return BackendUnavailable(text[:200])
    if status.kind == "BAD":
        return InvalidData(text[:200])
    return BackendError(text[:200])


def quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring(value: bytes) -> bytes | Literal:
    """A string argument: quoted where a quoted string can carry it, a literal otherwise."""
    if any(c in value for c in b"\r\n\0") or not value.isascii():
        return Literal(value)
    return quoted(value)


def encode_mailbox(name: str) -> bytes:
    """RFC 3501 modified UTF-7: printable ASCII stands for itself ('&' as '&-'), the rest as '&<base64>-'."""
    out = bytearray()
    run: list[str] = []
    for ch in name + "\x20":  # a trailing printable flushes the last run; it is removed below
        if "\x20" <= ch <= "\x7e":
            if run:
                b64 = base64.b64encode("".join(run).encode("utf-16-be", "surrogatepass"))
                out += b"&" + b64.rstrip(b"=").replace(b"/", b",") + b"-"
                run.clear()
            out += b"&-" if ch == "&" else ch.encode()
        else:
            run.append(ch)
    return bytes(out[:-1])


def decode_mailbox(raw: bytes) -> str:
    """A mailbox name as the server sent it; modified UTF-7 decoded, raw UTF-8 (non-conforming servers) kept."""
    if not raw.isascii():
        return raw.decode("utf-8", "replace")

    def run(m: re.Match) -> str:
        b64 = m.group(1).replace(",", "/")
        if not b64:
            return "&"
        try:
            return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True).decode("utf-16-be")
        except ValueError:
            return m.group(0)

    return _MUTF7_RUN.sub(run, raw.decode("ascii"))


def mailbox(name: str) -> bytes | Literal:
    return astring(encode_mailbox(name))


def flag_list(flags: Sequence[str]) -> bytes:
    """``(\\Seen $Label)``; a flag that is not an IMAP atom is refused, never sent."""
    for f in flags:
        if not _FLAG.fullmatch(f):
            raise InvalidData(f"not a valid IMAP flag: {f[:40]!r}")
    return ("(" + " ".join(flags) + ")").encode()


def internal_date(when: dt.datetime) -> bytes:
    """RFC 3501 date-time, e.g. ``"05-Mar-2024 14:00:00 +0100"``; month names never follow the locale."""
    offset = when.utcoffset()
    if offset is None:
        raise InvalidData("an IMAP internal date needs a time zone")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} {when:%H:%M:%S} '
            f'{sign}{minutes // 60:02d}{minutes % 60:02d}"').encode()


def number(value: object) -> int:
    """A number item of a response; InvalidData when the server sent something else."""
    if type(value) is bytes and value.isdigit() and len(value) <= 20:
        return int(value)
    raise InvalidData(f"IMAP server sent {value!r:.40} where a number belongs")


def _check_args(args: Sequence[bytes | Literal]) -> None:
    for arg in args:
        if type(arg) is not Literal and (b"\r" in arg or b"\n" in arg):
            raise InvalidData("an IMAP command argument may not contain a line break")


class LiteralBody:
    """A literal being streamed off the connection; read it with ``chunks``."""

    def __init__(self, conn: ImapConnection, lit: OpenLiteral) -> None:
        self._conn = conn
        self._lit = lit
        self.size = lit.size

    async def chunks(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """The literal's octets, ``chunk_size`` at a time (the last chunk may be shorter)."""
        while self._lit.remaining:
            async with self._conn._io("reading a literal"):
                chunk = await self._conn._responses.read_chunk(self._lit, chunk_size)
            yield chunk


class ImapConnection:
    """One IMAP connection: one command at a time, unique tags, every failure an adapters.errors exception."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 10.0,
                 peer: str = "IMAP back end") -> None:
        self._responses = ResponseReader(reader)
        self._writer = writer
        self.timeout = timeout
        self.peer = peer
        self.capabilities: frozenset[str] = frozenset()
        self.preauth = False
        self.broken = False
        #: The mailbox selected on this connection, kept by whoever issues SELECT.
        self.selected: str | None = None
        self._lock = asyncio.Lock()
        self._tags = itertools.count(1)

    # -- opening and logging in ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, endpoint: ImapEndpoint) -> ImapConnection:
        """Connect, secure the connection as ``endpoint.tls`` says and read the greeting and capabilities."""
        if endpoint.tls not in ("implicit", "starttls", "none"):
            raise InvalidData(f"unknown IMAP TLS mode {endpoint.tls!r}")
        peer = f"IMAP back end {endpoint.host}:{endpoint.port}"
        writer = None
        try:
            async with asyncio.timeout(endpoint.timeout):
                ctx = endpoint.context() if endpoint.tls == "implicit" else None
                reader, writer = await asyncio.open_connection(
                    endpoint.host, endpoint.port, ssl=ctx, server_hostname=endpoint.host if ctx else None,
                    limit=MAX_LINE + 2)
                conn = cls(reader, writer, endpoint.timeout, peer)
                await conn._greet(endpoint)
                return conn
        except BaseException as exc:
            if writer is not None:
                writer.close()
            if isinstance(exc, (OSError, EOFError)):  # TimeoutError and ssl.SSLError are OSErrors
                raise BackendUnavailable(f"{peer}: {type(exc).__name__}") from None
            raise

    async def _greet(self, endpoint: ImapEndpoint) -> None:
        try:
            greeting = parse_response(await self._responses.frame())
        except InvalidData:
            raise BackendUnavailable(f"{self.peer} does not speak IMAP") from None
        if type(greeting) is not Status or greeting.tag != b"*" or greeting.kind not in ("OK", "PREAUTH"):
            raise BackendUnavailable(f"{self.peer} greeted with {getattr(greeting, 'text', '')[:80]!r}")
        self.preauth = greeting.kind == "PREAUTH"
        self._note_status(greeting)
        if endpoint.tls == "starttls":
            if self.preauth:
                raise BackendUnavailable(f"{self.peer} logged us in before STARTTLS")
            answer = await self.command(b"STARTTLS", check=False)
            if answer.done.kind != "OK":
                raise BackendUnavailable(f"{self.peer} refused STARTTLS")
            # Whatever arrived before the handshake was not protected by it: refuse rather than act on it.
            if len(getattr(self._responses.stream, "_buffer", b"")):
                raise BackendUnavailable(f"{self.peer} sent data after accepting STARTTLS")
            await self._writer.start_tls(endpoint.context(), server_hostname=endpoint.host)
            self.capabilities = frozenset()
        if not self.capabilities:
            await self.command(b"CAPABILITY")

    async def login(self, username: str, password: str, *, authzid: str = "", client_ip: str | None = None) -> None:
        """AUTHENTICATE PLAIN (as ``authzid`` when given, for master-user logins), then refresh capabilities."""
        if self.preauth:
            return
        if (ip := originating_ip(client_ip)) and "ID" in self.capabilities:
            await self.command(b"ID", b'("x-originating-ip" ' + quoted(ip.encode()) + b")", check=False)
        if "LOGINDISABLED" in self.capabilities and "AUTH=PLAIN" not in self.capabilities:
            raise BackendUnavailable(f"{self.peer} disables LOGIN on this connection (configure TLS)")
        if "\0" in username + password + authzid:
            raise AuthenticationFailed("the IMAP back end refused the credentials")
        blob = base64.b64encode(f"{authzid}\0{username}\0{password}".encode())
        done = await self._authenticate(blob, inline="SASL-IR" in self.capabilities)
        if done.kind != "OK":
            if done.code_name in ("UNAVAILABLE", "SERVERBUG"):
                raise BackendUnavailable(f"{self.peer} could not check the login now")
            raise AuthenticationFailed("the IMAP back end refused the credentials")
        if not self._note_status(done):
            await self.command(b"CAPABILITY")

    async def _authenticate(self, blob: bytes, inline: bool) -> Status:
        async with self._lock:
            tag = self._next_tag()
            async with self._io("AUTHENTICATE"):
                self._writer.write(tag + b" AUTHENTICATE PLAIN" + (b" " + blob if inline else b"") + b"\r\n")
                sent = inline
                while True:
                    stop = await self._read_until(tag, [], [], continuation=True)
                    if type(stop) is Status:
                        return stop
                    # A second challenge means the server wants more than PLAIN gives: cancel the exchange.
                    self._writer.write(b"*\r\n" if sent else blob + b"\r\n")
                    sent = True

    # -- commands --------------------------------------------------------------------------------------------

    async def command(self, *args: bytes | Literal, check: bool = True, timeout: float | None = None) -> Answer:
        """Send one command (arguments joined by spaces) and collect its responses.

        With ``check`` a NO or BAD completion raises the matching adapters.errors exception.
        """
        _check_args(args)
        async with self._lock:
            tag = self._next_tag()
            untagged: list[Status | Data] = []
            errors: list[InvalidData] = []
            async with self._io(args[0][:40].decode("ascii", "replace"), timeout):
                done = await self._send(tag, args, untagged, errors)
                if done is None:
                    done = await self._read_until(tag, untagged, errors)
        if errors:
            raise errors[0]
        if check and done.kind != "OK":
            raise status_error(done)
        return Answer(done, tuple(untagged))

    @asynccontextmanager
    async def literal(self, *args: bytes | Literal,
                      want: Callable[[list], bool]) -> AsyncIterator[LiteralBody | Answer]:
        """Send a command and stop in front of the first literal ``want(segments)`` accepts.

        Yields a ``LiteralBody`` to stream, or the command's ``Answer`` when it
        completed without such a literal. Whatever the consumer leaves unread is drained
        on exit (or, past DRAIN_LIMIT or on cancellation, the connection is
        dropped and marked broken), so the next command starts clean.
        """
        _check_args(args)
        async with self._lock:
            tag = self._next_tag()
            untagged: list[Status | Data] = []
            errors: list[InvalidData] = []
            async with self._io("FETCH"):
                stop = await self._send(tag, args, untagged, errors)
                if stop is None:
                    stop = await self._read_until(tag, untagged, errors, want=want)
            if type(stop) is Status:
                if errors:
                    raise errors[0]
                if stop.kind != "OK":
                    raise status_error(stop)
                yield Answer(stop, tuple(untagged))
                return
            try:
                yield LiteralBody(self, stop)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) or stop.remaining > DRAIN_LIMIT:
                    self.close()
                elif not self.broken:
                    try:
                        async with self._io("draining a literal"):
                            await self._finish(tag, stop, untagged, errors)
                    except BackendError:
                        pass  # the connection is marked broken; the consumer's exception is the news
                raise
            async with self._io("FETCH"):
                done = await self._finish(tag, stop, untagged, errors)
        if errors:
            raise errors[0]
        if done.kind != "OK":
            raise status_error(done)

    async def _finish(self, tag: bytes, lit: OpenLiteral, untagged: list, errors: list) -> Status:
        frame = await self._responses.finish(lit)
        self._take(frame, untagged, errors)
        return await self._read_until(tag, untagged, errors)

    async def logout(self) -> None:
        """Say LOGOUT (briefly) and close; never raises. A connection busy streaming is just closed."""
        if not self.broken and not self._lock.locked():
            try:
                await self.command(b"LOGOUT", check=False, timeout=2)
            except BackendError:
                pass
        self.close()

    def close(self) -> None:
        self.broken = True
        self._writer.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _next_tag(self) -> bytes:
        return b"cg%d" % next(self._tags)

    @asynccontextmanager
    async def _io(self, what: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound one exchange in time; any failure inside leaves the connection unusable, so close it."""
        if self.broken:
            raise BackendUnavailable(f"{self.peer}: connection lost earlier")
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                yield
        except BackendError:
            self.close()
            raise
        except (OSError, EOFError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            self.close()
            raise BackendUnavailable(f"{self.peer} failed during {what}: {type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise

    async def _send(self, tag: bytes, args: Sequence[bytes | Literal], untagged: list,
                    errors: list) -> Status | None:
        """Write the command; a synchronising literal waits for the server's go-ahead (or its refusal)."""
        parts = [tag]
        for arg in args:
            parts.append(b" ")
            if type(arg) is not Literal:
                parts.append(arg)
                continue
            size = len(arg.data)
            if "LITERAL+" in self.capabilities or ("LITERAL-" in self.capabilities and size <= 4096):
                parts += [b"{%d+}\r\n" % size, arg.data]
                continue
            parts.append(b"{%d}\r\n" % size)
            self._writer.writelines(parts)
            await self._writer.drain()
            stop = await self._read_until(tag, untagged, errors, continuation=True)
            if type(stop) is Status:
                return stop
            parts = [arg.data]
        parts.append(b"\r\n")
        self._writer.writelines(parts)
        await self._writer.drain()
        return None

    async def _read_until(self, tag: bytes, untagged: list, errors: list, *, continuation: bool = False,
                          want: Callable[[list], bool] | None = None) -> Status | Continuation | OpenLiteral:
        """Collect untagged responses until the completion of ``tag``, a continuation or a wanted literal."""
        while True:
            frame = await self._responses.frame(want)
            if type(frame) is OpenLiteral:
                return frame
            resp = self._take(frame, untagged, errors)
            if resp is None and frame[0].startswith(tag + b" "):
                raise InvalidData(f"{self.peer} sent a malformed completion: {frame[0][:60]!r}")
            if type(resp) is Status and resp.tag != b"*":
                if resp.tag != tag:
                    raise InvalidData(f"{self.peer} completed a command it was not sent")
                return resp
            if type(resp) is Continuation:
                if not continuation:
                    raise InvalidData(f"{self.peer} asked for a continuation nobody expected")
                return resp

    def _take(self, frame: list, untagged: list, errors: list) -> Response | None:
        """Parse one frame; keep untagged responses; a malformed one is remembered, and reading goes on."""
        try:
            resp = parse_response(frame)
        except InvalidData as exc:
            errors.append(exc)
            return None
        if type(resp) is Data:
            untagged.append(resp)
            if resp.kind == "CAPABILITY":
                self.capabilities = frozenset(x.decode("ascii", "replace").upper()
                                              for x in resp.items if type(x) is bytes)
        elif type(resp) is Status and resp.tag == b"*":
            untagged.append(resp)
            self._note_status(resp)
        return resp

    def _note_status(self, status: Status) -> bool:
        if status.code_name != "CAPABILITY":
            return False
        self.capabilities = frozenset(status.code.upper().split()[1:])
        return True


__all__ = [
    "Status", "Data", "Continuation", "Response", "Literal", "Answer", "OpenLiteral", "LiteralBody",
    "ResponseReader", "ImapConnection", "parse_response", "status_error", "quoted", "astring", "mailbox",
    "encode_mailbox", "decode_mailbox", "flag_list", "internal_date", "number",
    "MAX_LINE", "MAX_LITERAL", "MAX_DEPTH", "DRAIN_LIMIT",
]
