"""MailStore over IMAP: folders, status, listing, fetch (whole or streamed), append, flags, expunge."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.errors
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from email.header import decode_header, make_header

from ..errors import BackendError, BackendUnavailable, InvalidData, NotFound
from ..interfaces import Credentials, Envelope, Folder, FolderStatus, MessageSummary
from .connect import ImapEndpoint
from .wire import (Answer, Data, ImapConnection, Literal, astring, decode_mailbox, flag_list, internal_date,
                   mailbox, number)

_SPECIAL = {"\\SENT", "\\DRAFTS", "\\TRASH", "\\JUNK", "\\ARCHIVE", "\\ALL", "\\FLAGGED"}
_FETCH_SUMMARY = b"UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)"
_UID_IN_HEAD = re.compile(rb"[( ]UID (\d{1,20})\b", re.I)


def _uid_set(uids: Sequence[int]) -> bytes:
    """``1:3,7,9:10``: runs of consecutive UIDs as ranges, so a long selection stays one short line."""
    ordered = sorted(set(uids))
    if ordered[0] < 1:
        raise InvalidData("IMAP UIDs start at 1")
    runs: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:] + [0]:
        if uid != prev + 1:
            runs.append(str(start) if start == prev else f"{start}:{prev}")
            start = uid
        prev = uid
    return ",".join(runs).encode()


def _names(value: object) -> tuple[str, ...]:
    return tuple(x.decode("utf-8", "replace") for x in value if type(x) is bytes) if type(value) is tuple else ()


def _summary(d: Data) -> MessageSummary | None:
    a = d.attrs()
    if b"UID" not in a:
        return None
    date = a.get(b"INTERNALDATE")
    return MessageSummary(number(a[b"UID"]), number(a.get(b"RFC822.SIZE", b"0")), _names(a.get(b"FLAGS")),
                          date.decode("ascii", "replace") if type(date) is bytes else None)


def _envelope(d: Data) -> Envelope | None:
    a = d.attrs()
    env = a.get(b"ENVELOPE")
    if b"UID" not in a or d.number is None:
        return None
    env = env if type(env) is tuple and len(env) >= 3 else (None, None, None)
    name, address = _first_address(env[2])
    date = a.get(b"INTERNALDATE")
    return Envelope(d.number, number(a[b"UID"]), _names(a.get(b"FLAGS")),
                    date.decode("ascii", "replace") if type(date) is bytes else None,
                    number(a.get(b"RFC822.SIZE", b"0")), _header_text(env[1]), name, address,
                    env[0].decode("ascii", "replace") if type(env[0]) is bytes else None)


def _first_address(addresses: object) -> tuple[str, str]:
    """(display name, address) of the first of an ENVELOPE address list ((name adl mailbox host) ...)."""
    if type(addresses) is not tuple or not addresses or type(addresses[0]) is not tuple or len(addresses[0]) < 4:
        return "", ""
    name, _, box, host = addresses[0][:4]
    address = "@".join(p.decode("utf-8", "replace") for p in (box, host) if type(p) is bytes)
    return _header_text(name), address


def _header_text(value: object) -> str:
    """A header value as a reader sees it: RFC 2047 encoded words decoded, raw 8-bit read as UTF-8."""
    if type(value) is not bytes:
        return ""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text


def _expand(uid_set: str) -> list[int]:
    out: list[int] = []
    for part in uid_set.split(","):
        low, _, high = part.partition(":")
        a, b = int(low), int(high or low)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


def _copyuid(answer: Answer) -> dict[int, int]:
    """Old UID -> new UID from a COPYUID response code (tagged, or untagged OK as MOVE sends it)."""
    args = answer.code("COPYUID")
    if not args or len(args) != 3:
        return {}
    try:
        old, new = _expand(args[1]), _expand(args[2])
    except ValueError:
        return {}
    return dict(zip(old, new)) if len(old) == len(new) and len(old) < 1_000_000 else {}


def _body_in(answer: Answer, folder: str, uid: int) -> bytes:
    for d in answer.data("FETCH"):
        a = d.attrs()
        if b"BODY[]" in a and number(a.get(b"UID", b"%d" % uid)) == uid:
            body = a[b"BODY[]"]
            if body is not None and type(body) is not bytes:
                raise InvalidData(f"IMAP server sent a malformed body for message {uid}")
            return body or b""
    raise NotFound(f"message {uid} not in {folder}")


def _body_of(uid: int):
    """Which literal stream_message streams: the BODY[] of a FETCH response for ``uid``."""
    def want(segments: list) -> bool:
        if not segments[-1].rstrip(b" ").upper().endswith(b"BODY[]") or b" FETCH " not in segments[0].upper():
            return False
        m = _UID_IN_HEAD.search(b" ".join(s for s in segments[0::2]))
        return m is None or int(m.group(1)) == uid
    return want


class ImapMailStore:
    """One authenticated IMAP session for one user; after a lost connection the next call logs in again."""

    def __init__(self, endpoint: ImapEndpoint, credentials: Credentials, client_ip: str | None = None) -> None:
        self.endpoint = endpoint
        self.client_ip = client_ip
        self.credentials = credentials
        self._conn: ImapConnection | None = None
        self._lock = asyncio.Lock()       # held across SELECT and the commands that rely on it
        self._reconnect = asyncio.Lock()
        self._streaming_to: asyncio.Task | None = None  # the task a message is being streamed to
        self._stream_closed = asyncio.Event()

    @property
    def capabilities(self) -> frozenset[str]:
        return self._conn.capabilities if self._conn is not None else frozenset()

    async def start(self, stack: AsyncExitStack) -> None:
        self._conn = await self._connect()
        stack.push_async_callback(self._logout)

    async def _connect(self) -> ImapConnection:
        conn = await ImapConnection.open(self.endpoint)
        try:
            await conn.login(self.credentials.username, self.credentials.password, client_ip=self.client_ip)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _logout(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.logout()

    async def _own_stream_closed(self) -> None:
        """Wait for a stream this very task consumes to be closed.

        A stream keeps the session until it ends. Its consumer may have
        abandoned it (the event loop closes it soon), or may be asking from
        inside its own loop, which would wait forever: that ends in an error.
        """
        if self._streaming_to is None or self._streaming_to is not asyncio.current_task():
            return
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                await self._stream_closed.wait()
        except TimeoutError:
            raise BackendError("this IMAP session is still streaming a message to the caller") from None

    @asynccontextmanager
    async def _exclusive(self, folder: str | None) -> AsyncIterator[ImapConnection]:
        """The session, kept for the caller alone, with ``folder`` selected unless that is None."""
        await self._own_stream_closed()
        async with self._lock:
            conn = await self._session()
            if folder is not None and conn.selected != folder:
                conn.selected = None  # a failed SELECT leaves no mailbox selected
                await conn.command(b"SELECT", mailbox(folder))
                conn.selected = folder
            yield conn

    async def _session(self) -> ImapConnection:
        await self._own_stream_closed()
        conn = self._conn
        if conn is None:
            raise BackendUnavailable("IMAP session not started")
        if conn.broken:
            async with self._reconnect:
                if self._conn is conn:  # nobody reconnected while we waited
                    self._conn = await self._connect()
                elif self._conn is None:
                    raise BackendUnavailable("IMAP session closed")
            conn = self._conn
        return conn

    async def select(self, folder: str) -> FolderStatus:
        """Select ``folder`` afresh and return its counters as the SELECT (and an unseen count) gave them."""
        async with self._exclusive(None) as conn:
            conn.selected = None
            # (CONDSTORE) is what makes a server report HIGHESTMODSEQ on SELECT (RFC 7162 3.1.8).
            condstore = (b"(CONDSTORE)",) if "CONDSTORE" in conn.capabilities else ()
            answer = await conn.command(b"SELECT", mailbox(folder), *condstore)
            conn.selected = folder
            if "ESEARCH" in conn.capabilities:
                found = await conn.command(b"SEARCH RETURN (COUNT) UNSEEN")
                unseen = next((number(d.items[i + 1]) for d in found.data("ESEARCH")
                               for i, x in enumerate(d.items[:-1]) if type(x) is bytes and x.upper() == b"COUNT"), 0)
            else:
                unseen = (await self._status(conn, folder, b"UNSEEN")).get("UNSEEN", 0)
        exists = [d.number for d in answer.data("EXISTS") if d.number is not None]

        def code(name: str) -> int | None:
            args = answer.code(name)
            return number(args[0].encode()) if args else None

        return FolderStatus(exists[-1] if exists else 0, unseen, code("UIDNEXT") or 0, code("UIDVALIDITY") or 0,
                            code("HIGHESTMODSEQ"))

    async def list_folders(self) -> list[Folder]:
        answer = await (await self._session()).command(b'LIST "" "*"')
        folders = []
        for d in answer.data("LIST"):
            if len(d.items) < 3 or type(d.items[2]) is not bytes:
                continue
            flags = _names(d.items[0])
            if {f.upper() for f in flags} & {"\\NOSELECT", "\\NONEXISTENT"}:
                continue
            special = next((f for f in flags if f.upper() in _SPECIAL), None)
            delim = d.items[1].decode("utf-8", "replace") if type(d.items[1]) is bytes else "/"
            folders.append(Folder(decode_mailbox(d.items[2]), delim, special, flags))
        return folders

    async def _status(self, conn: ImapConnection, folder: str, items: bytes) -> dict[str, int]:
        answer = await conn.command(b"STATUS", mailbox(folder), b"(" + items + b")")
        return {k.decode(): number(v) for d in answer.data("STATUS") for k, v in d.attrs().items()}

    async def status(self, folder: str) -> FolderStatus:
        conn = await self._session()
        if conn.selected == folder:
            # STATUS on the selected mailbox may answer from this session's view of it (RFC 3501 6.3.10
            # advises against it); a NOOP first brings that view up to date with other sessions' changes.
            async with self._exclusive(None) as conn:
                await conn.command(b"NOOP")
        items = b"MESSAGES UNSEEN UIDNEXT UIDVALIDITY"
        if "CONDSTORE" in conn.capabilities:
            items += b" HIGHESTMODSEQ"
        v = await self._status(conn, folder, items)
        return FolderStatus(v.get("MESSAGES", 0), v.get("UNSEEN", 0), v.get("UIDNEXT", 0), v.get("UIDVALIDITY", 0),
                            v.get("HIGHESTMODSEQ"))

    async def list_messages(self, folder: str) -> list[MessageSummary]:
        async with self._exclusive(folder) as conn:
            if conn.selected == folder:
                # A session that selected the folder earlier sees other sessions' new messages only after
                # the server has told it of them; a NOOP makes it do so now.
                await conn.command(b"NOOP")
            answer = await conn.command(_FETCH_SUMMARY)
        out = [s for d in answer.data("FETCH") if (s := _summary(d)) is not None]
        out.sort(key=lambda m: m.uid)
        return out

    async def page(self, folder: str, skip: int, limit: int) -> tuple[int, list[Envelope]]:
        """(messages in ``folder``, the ``limit`` messages after the ``skip`` newest by arrival, newest first):
        one page of a message list, fetched by sequence number, so its cost does not grow with the folder."""
        async with self._exclusive(None) as conn:
            conn.selected = None
            answer = await conn.command(b"SELECT", mailbox(folder))
            conn.selected = folder
            exists = [d.number for d in answer.data("EXISTS") if d.number is not None]
            total = exists[-1] if exists else 0
            high = total - max(0, skip)
            if high < 1 or limit < 1:
                return total, []
            low = max(1, high - limit + 1)
            fetched = await conn.command(b"FETCH %d:%d (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)" % (low, high))
        out = [e for d in fetched.data("FETCH") if (e := _envelope(d)) is not None]
        out.sort(key=lambda e: -e.seq)
        return total, out

    async def fetch_message(self, folder: str, uid: int) -> bytes:
        if uid < 1:
            raise NotFound(f"message {uid} not in {folder}")
        async with self._exclusive(folder) as conn:
            answer = await conn.command(b"UID FETCH %d BODY.PEEK[]" % uid)
        return _body_in(answer, folder, uid)

    async def fetch_messages(self, folder: str, uids: Sequence[int]) -> list[tuple[MessageSummary, bytes]]:
        """Several whole messages with their summaries in one command, in UID order; gone ones are left out."""
        if not uids:
            return []
        async with self._exclusive(folder) as conn:
            answer = await conn.command(b"UID FETCH", _uid_set(uids),
                                        b"(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[])")
        out = []
        for d in answer.data("FETCH"):
            summary = _summary(d)
            body = d.attrs().get(b"BODY[]")
            if summary is None or (body is not None and type(body) is not bytes):
                continue
            out.append((summary, body or b""))
        out.sort(key=lambda item: item[0].uid)
        return out

    async def changed_since(self, folder: str, modseq: int) -> tuple[list[int], list[MessageSummary]]:
        """Every UID in the folder now, and the messages whose flags changed (or that arrived) after
        ``modseq`` (RFC 7162 CHANGEDSINCE): what a sync needs without listing every message's flags."""
        async with self._exclusive(folder) as conn:
            await conn.command(b"NOOP")
            if "ESEARCH" in conn.capabilities:
                found = await conn.command(b"UID SEARCH RETURN (ALL) ALL")
                uids: list[int] = []
                for d in found.data("ESEARCH"):
                    words = [x for x in d.items if type(x) is bytes]
                    for i, word in enumerate(words[:-1]):
                        if word.upper() == b"ALL":
                            uids = _expand(words[i + 1].decode("ascii", "replace"))
            else:
                found = await conn.command(b"UID SEARCH ALL")
                uids = [number(x) for d in found.data("SEARCH") for x in d.items if type(x) is bytes and x.isdigit()]
            answer = await conn.command(b"UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE) (CHANGEDSINCE %d)"
                                        % modseq)
        changed = [s for d in answer.data("FETCH") if (s := _summary(d)) is not None]
        return sorted(uids), changed

    async def thread_headers(self, folder: str) -> list[tuple[int, bytes]]:
        """(UID, Message-ID/References/In-Reply-To/Subject header block) of every message in the folder."""
        async with self._exclusive(folder) as conn:
            answer = await conn.command(b"UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS "
                                        b"(MESSAGE-ID REFERENCES IN-REPLY-TO SUBJECT)])")
        out = []
        for d in answer.data("FETCH"):
            a = d.attrs()
            block = next((v for k, v in a.items() if k.startswith(b"BODY[HEADER.FIELDS")), None)
            if b"UID" in a and (block is None or type(block) is bytes):
                out.append((number(a[b"UID"]), block or b""))
        return out

    async def search(self, folder: str, text: str = "", since: dt.date | None = None,
                     before: dt.date | None = None) -> list[MessageSummary]:
        """Messages whose headers or body contain ``text`` (IMAP SEARCH TEXT, UTF-8), received on or after
        ``since`` and before ``before``, with their summaries, newest first."""
        criteria: list[bytes | Literal] = [b"UID SEARCH CHARSET UTF-8"]
        if text:
            criteria += [b"TEXT", astring(text.encode("utf-8"))]
        if since is not None:
            criteria += [b"SINCE", since.strftime("%d-%b-%Y").encode()]
        if before is not None:
            criteria += [b"BEFORE", before.strftime("%d-%b-%Y").encode()]
        if len(criteria) == 1:
            criteria.append(b"ALL")
        async with self._exclusive(folder) as conn:
            await conn.command(b"NOOP")
            found = await conn.command(*criteria)
            uids = [number(x) for d in found.data("SEARCH") for x in d.items if type(x) is bytes and x.isdigit()]
            if not uids:
                return []
            answer = await conn.command(b"UID FETCH", _uid_set(uids), b"(UID RFC822.SIZE FLAGS INTERNALDATE)")
        out = [s for d in answer.data("FETCH") if (s := _summary(d)) is not None]
        out.sort(key=lambda m: m.uid, reverse=True)
        return out

    async def fetch_flags(self, folder: str, uid: int) -> tuple[str, ...]:
        """One message's flags; NotFound if it is gone."""
        async with self._exclusive(folder) as conn:
            answer = await conn.command(b"UID FETCH %d (UID FLAGS)" % uid)
        for d in answer.data("FETCH"):
            a = d.attrs()
            if number(a.get(b"UID", b"0")) == uid:
                return _names(a.get(b"FLAGS"))
        raise NotFound(f"message {uid} not in {folder}")

    async def move(self, folder: str, uids: Sequence[int], target: str) -> dict[int, int]:
        """Move messages to ``target``; returns old UID -> new UID where the server says (RFC 6851/4315)."""
        if not uids:
            return {}
        async with self._exclusive(folder) as conn:
            if "MOVE" in conn.capabilities:
                answer = await conn.command(b"UID MOVE", _uid_set(uids), mailbox(target))
            else:
                answer = await conn.command(b"UID COPY", _uid_set(uids), mailbox(target))
                await conn.command(b"UID STORE", _uid_set(uids), b"+FLAGS.SILENT", b"(\\Deleted)")
                if "UIDPLUS" in conn.capabilities:
                    await conn.command(b"UID EXPUNGE", _uid_set(uids))
        return _copyuid(answer)

    async def stream_message(self, folder: str, uid: int, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """The raw message, ``chunk_size`` octets at most a chunk, straight off the socket.

        The session serves nothing else until the stream ends or is closed;
        what a consumer leaves unread is drained then (or the connection is
        dropped and the next call reconnects).
        """
        if chunk_size < 1:
            raise InvalidData("chunk_size must be positive")
        if uid < 1:
            raise NotFound(f"message {uid} not in {folder}")
        async with self._exclusive(folder) as conn:
            self._streaming_to = asyncio.current_task()
            self._stream_closed.clear()
            try:
                async with conn.literal(b"UID FETCH %d BODY.PEEK[]" % uid, want=_body_of(uid)) as body:
                    if type(body) is Answer:  # no literal: a server may send a small body as a quoted string
                        whole = _body_in(body, folder, uid)
                        for i in range(0, len(whole), chunk_size):
                            yield whole[i:i + chunk_size]
                        return
                    async for chunk in body.chunks(chunk_size):
                        yield chunk
            finally:
                self._streaming_to = None
                self._stream_closed.set()

    async def append(self, folder: str, message: bytes, flags: Sequence[str] = (),
                     when: dt.datetime | None = None) -> int | None:
        args: list[bytes | Literal] = [b"APPEND", mailbox(folder)]
        if flags:
            args.append(flag_list(flags))
        if when is not None:
            args.append(internal_date(when))
        args.append(Literal(message))
        answer = await (await self._session()).command(*args)
        uid = answer.code("APPENDUID")
        return number(uid[1].encode()) if uid and len(uid) == 2 else None

    async def set_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str], add: bool = True) -> None:
        if not uids or not flags:
            return
        async with self._exclusive(folder) as conn:
            await conn.command(b"UID STORE", _uid_set(uids), b"+FLAGS.SILENT" if add else b"-FLAGS.SILENT",
                               flag_list(flags))

    async def expunge(self, folder: str, uids: Sequence[int]) -> None:
        if not uids:
            return
        async with self._exclusive(folder) as conn:
            await conn.command(b"UID STORE", _uid_set(uids), b"+FLAGS.SILENT", b"(\\Deleted)")
            if "UIDPLUS" in conn.capabilities:
                await conn.command(b"UID EXPUNGE", _uid_set(uids))
            else:
                await conn.command(b"EXPUNGE")

    async def create_folder(self, name: str) -> None:
        await (await self._session()).command(b"CREATE", mailbox(name))

    async def rename_folder(self, old: str, new: str) -> None:
        async with self._exclusive(None) as conn:
            if conn.selected is not None and (conn.selected == old or conn.selected.startswith(old)):
                await conn.command(b"UNSELECT" if "UNSELECT" in conn.capabilities else b"CLOSE")
                conn.selected = None
            await conn.command(b"RENAME", mailbox(old), mailbox(new))

    async def delete_folder(self, name: str) -> None:
        async with self._exclusive(None) as conn:
            if conn.selected == name:
                await conn.command(b"UNSELECT" if "UNSELECT" in conn.capabilities else b"CLOSE")
                conn.selected = None
            await conn.command(b"DELETE", mailbox(name))
