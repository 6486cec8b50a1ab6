"""MailStore over IMAP with aioimaplib: folders, status, listing, fetch, append, flags, expunge."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from collections.abc import Sequence
from contextlib import AsyncExitStack

import aioimaplib

from ..errors import AuthenticationFailed, BackendError, BackendUnavailable, InvalidData, NotFound
from ..interfaces import Credentials, Folder, FolderStatus, MessageSummary
from .connect import ImapEndpoint, originating_ip

_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?P<delim>[^"]*)"|NIL) (?P<name>.+)$')
_STATUS_ITEM = re.compile(rb"(MESSAGES|UNSEEN|UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ) (\d+)")
_FETCH_META = re.compile(rb"UID (\d+)|RFC822\.SIZE (\d+)|FLAGS \(([^)]*)\)|INTERNALDATE \"([^\"]*)\"")
_SPECIAL = {"\\SENT", "\\DRAFTS", "\\TRASH", "\\JUNK", "\\ARCHIVE", "\\ALL", "\\FLAGGED"}


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(raw: bytes) -> str:
    s = raw.decode("utf-8", "replace")
    if s.startswith('"') and s.endswith('"'):
        s = s[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return s


class _StartTlsIMAP4(aioimaplib.IMAP4):
    """aioimaplib client that upgrades a plain connection with STARTTLS before handing it over."""

    def __init__(self, host: str, port: int, timeout: float, ssl_context: ssl.SSLContext) -> None:
        self._starttls_ctx = ssl_context
        super().__init__(host, port, timeout=timeout)

    def create_client(self, host, port, loop, conn_lost_cb=None, ssl_context=None) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = aioimaplib.IMAP4ClientProtocol(loop, conn_lost_cb)
        self._client_task = loop.create_task(self._connect(loop, host, port))

    async def _connect(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        greeting = await reader.readuntil(b"\r\n")
        if not greeting.upper().startswith(b"* OK"):
            raise BackendUnavailable("IMAP server did not greet with OK")
        writer.write(b"s0 STARTTLS\r\n")
        while True:
            line = await reader.readuntil(b"\r\n")
            if line.startswith(b"s0 "):
                break
        if not line.upper().startswith(b"S0 OK"):
            raise BackendUnavailable("IMAP server refused STARTTLS")
        transport = writer.transport
        tls_transport = await loop.start_tls(transport, self.protocol, self._starttls_ctx, server_hostname=host)
        # Keep the plain-text writer alive: collecting it would close the transport underneath TLS.
        self._plain_writer = writer
        self.protocol.connection_made(tls_transport)
        # aioimaplib expects a greeting before it asks for capabilities; the real one came before TLS.
        self.protocol.data_received(b"* OK secured with STARTTLS\r\n")


class ImapMailStore:
    """One authenticated IMAP session for one user."""

    def __init__(self, endpoint: ImapEndpoint, credentials: Credentials, client_ip: str | None = None) -> None:
        self.endpoint = endpoint
        self.client_ip = client_ip
        self.credentials = credentials
        self._client: aioimaplib.IMAP4 | None = None
        self._selected: str | None = None
        self._lock = asyncio.Lock()

    @property
    def capabilities(self) -> frozenset[str]:
        if self._client is None:
            return frozenset()
        return frozenset(c.upper() for c in self._client.protocol.capabilities)

    async def start(self, stack: AsyncExitStack) -> None:
        ep = self.endpoint
        try:
            if ep.tls == "implicit":
                client = aioimaplib.IMAP4_SSL(ep.host, ep.port, timeout=ep.timeout, ssl_context=ep.context())
            elif ep.tls == "starttls":
                client = _StartTlsIMAP4(ep.host, ep.port, ep.timeout, ep.context())
            else:
                client = aioimaplib.IMAP4(ep.host, ep.port, timeout=ep.timeout)
            await client.wait_hello_from_server()
            if (ip := originating_ip(self.client_ip)) and "ID" in client.protocol.capabilities:
                await client.protocol.id(**{"x-originating-ip": ip})
            resp = await client.login(self.credentials.username, self.credentials.password)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, aioimaplib.AioImapException) as exc:
            raise BackendUnavailable(f"IMAP back end {ep.host}:{ep.port}: {type(exc).__name__}") from None
        if resp.result != "OK":
            text = b" ".join(resp.lines).upper()
            if b"[UNAVAILABLE]" in text:
                raise BackendUnavailable("IMAP back end could not check the login now")
            raise AuthenticationFailed("the IMAP back end refused the credentials")
        self._client = client
        stack.push_async_callback(self._logout)

    async def _logout(self) -> None:
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.logout(), 2)
            except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException):
                pass
            self._client = None

    async def _run(self, name: str, *args, **kw) -> aioimaplib.Response:
        if self._client is None:
            raise BackendUnavailable("IMAP session not started")
        try:
            resp = await getattr(self._client, name)(*args, **kw)
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise BackendUnavailable(f"IMAP back end failed during {name.upper()}: {type(exc).__name__}") from None
        if resp.result != "OK":
            text = b" ".join(x for x in resp.lines if isinstance(x, (bytes, bytearray))).decode("utf-8", "replace")
            if "NONEXISTENT" in text.upper() or "doesn't exist" in text:
                raise NotFound(text[:200])
            if "OVERQUOTA" in text.upper():
                from ..errors import QuotaExceeded
                raise QuotaExceeded(text[:200])
            if resp.result == "BAD":
                raise InvalidData(text[:200])
            raise BackendError(text[:200])
        return resp

    async def _select(self, folder: str) -> None:
        if self._selected != folder:
            await self._run("select", _quote(folder))
            self._selected = folder

    async def list_folders(self) -> list[Folder]:
        resp = await self._run("list", '""', '"*"')
        folders = []
        for line in resp.lines:
            m = _LIST.match(bytes(line))
            if not m:
                continue
            flags = tuple(m.group("flags").decode().split())
            if "\\Noselect" in flags or "\\NonExistent" in flags:
                continue
            special = next((f for f in flags if f.upper() in _SPECIAL), None)
            delim = (m.group("delim") or b"/").decode()
            folders.append(Folder(_unquote(m.group("name")), delim, special, flags))
        return folders

    async def status(self, folder: str) -> FolderStatus:
        items = "MESSAGES UNSEEN UIDNEXT UIDVALIDITY"
        if "CONDSTORE" in self.capabilities:
            items += " HIGHESTMODSEQ"
        resp = await self._run("status", _quote(folder), f"({items})")
        values = {k.decode(): int(v) for line in resp.lines for k, v in _STATUS_ITEM.findall(bytes(line))}
        return FolderStatus(values.get("MESSAGES", 0), values.get("UNSEEN", 0), values.get("UIDNEXT", 0),
                            values.get("UIDVALIDITY", 0), values.get("HIGHESTMODSEQ"))

    async def list_messages(self, folder: str) -> list[MessageSummary]:
        async with self._lock:
            await self._select(folder)
            resp = await self._run("uid", "fetch", "1:*", "(UID RFC822.SIZE FLAGS INTERNALDATE)")
        out = []
        for line in resp.lines:
            line = bytes(line)
            if b" FETCH " not in line:
                continue
            uid = size = 0
            flags: tuple[str, ...] = ()
            date = None
            for u, s, f, d in _FETCH_META.findall(line):
                uid = int(u) if u else uid
                size = int(s) if s else size
                flags = tuple(f.decode().split()) if f else flags
                date = d.decode() if d else date
            if uid:
                out.append(MessageSummary(uid, size, flags, date))
        return sorted(out, key=lambda m: m.uid)

    async def fetch_message(self, folder: str, uid: int) -> bytes:
        async with self._lock:
            await self._select(folder)
            resp = await self._run("uid", "fetch", str(uid), "BODY.PEEK[]")
        for line in resp.lines:
            if isinstance(line, bytearray):  # aioimaplib hands literals over as bytearray
                return bytes(line)
        raise NotFound(f"message {uid} not in {folder}")

    async def append(self, folder: str, message: bytes, flags: Sequence[str] = (),
                     when: dt.datetime | None = None) -> int | None:
        resp = await self._run("append", message, mailbox=_quote(folder),
                               flags="(" + " ".join(flags) + ")" if flags else None, date=when)
        for line in resp.lines:
            if m := re.search(rb"APPENDUID \d+ (\d+)", bytes(line)):
                return int(m.group(1))
        return None

    async def set_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str], add: bool = True) -> None:
        if not uids:
            return
        async with self._lock:
            await self._select(folder)
            await self._run("uid", "store", ",".join(map(str, uids)),
                            "+FLAGS.SILENT" if add else "-FLAGS.SILENT", "(" + " ".join(flags) + ")")

    async def expunge(self, folder: str, uids: Sequence[int]) -> None:
        if not uids:
            return
        await self.set_flags(folder, uids, ["\\Deleted"])
        async with self._lock:
            await self._select(folder)
            if "UIDPLUS" in self.capabilities:
                await self._run("uid", "expunge", ",".join(map(str, uids)))
            else:
                await self._run("expunge")

    async def create_folder(self, name: str) -> None:
        await self._run("create", _quote(name))
