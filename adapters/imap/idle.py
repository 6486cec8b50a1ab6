"""Watching one IMAP folder with IDLE (RFC 2177): a callback for every change the server reports."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable

from ..errors import AuthenticationFailed, BackendUnavailable
from ..interfaces import Credentials
from .connect import ImapEndpoint, open_session
from .wire import mailbox

log = logging.getLogger("casgate.imap.idle")
_CHANGE = re.compile(rb"^\* (\d+ (EXISTS|EXPUNGE|FETCH)|VANISHED)", re.I)
REFRESH = 20 * 60.0  # RFC 2177: re-issue IDLE at least every 29 minutes
_MAX_LINE = 64 * 1024


async def watch(ep: ImapEndpoint, creds: Credentials, folder: str, on_change: Callable[[], None],
                client_ip: str | None = None, retry: float = 5.0) -> None:
    """Until cancelled: log in, SELECT ``folder``, IDLE, and call ``on_change`` for each EXISTS, EXPUNGE or
    FETCH the server sends. A lost connection is made again after ``retry`` seconds (and ``on_change``
    is called then too, since a change may have been missed meanwhile); refused credentials end the watch."""
    first = True
    while True:
        try:
            session = await open_session(ep, creds, client_ip)
        except AuthenticationFailed:
            log.info("idle watch stopped: credentials refused", extra={"event": "idle", "folder": folder})
            return
        except BackendUnavailable:
            await asyncio.sleep(retry)
            continue
        try:
            if not first:
                on_change()
            first = False
            await _idle(session.reader, session.writer, folder, on_change)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError):
            pass
        finally:
            session.close()
        await asyncio.sleep(retry)


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\r\n")
    if len(line) > _MAX_LINE:
        raise ValueError("over-long line from the IMAP server")
    return line


async def _tagged(reader: asyncio.StreamReader, tag: bytes, on_change: Callable[[], None]) -> bytes:
    while True:
        line = await _line(reader)
        if line.startswith(tag + b" "):
            return line
        if _CHANGE.match(line):
            on_change()
        if line.rstrip().endswith(b"}"):  # a literal (e.g. in a FETCH): skip its octets
            size = int(line.rstrip()[line.rstrip().rindex(b"{") + 1:-1].rstrip(b"+"))
            await reader.readexactly(size)


async def _idle(reader: asyncio.StreamReader, writer, folder: str, on_change: Callable[[], None]) -> None:
    name = mailbox(folder)
    if not isinstance(name, bytes):
        raise ValueError("folder name needs a literal")
    writer.write(b"w1 SELECT " + name + b"\r\n")
    await writer.drain()
    # SELECT's own EXISTS counts what is there, not a change.
    if not (await _tagged(reader, b"w1", lambda: None)).upper().startswith(b"W1 OK"):
        raise ValueError(f"cannot select {folder}")
    n = 1
    while True:
        n += 1
        tag = b"w%d" % n
        writer.write(tag + b" IDLE\r\n")
        await writer.drain()
        line = await _line(reader)
        if not line.startswith(b"+"):
            raise ValueError("the IMAP server refused IDLE")
        try:
            async with asyncio.timeout(REFRESH):
                while True:
                    line = await _line(reader)
                    if _CHANGE.match(line):
                        on_change()
                    elif line.upper().startswith(b"* BYE"):
                        raise ConnectionResetError("server said BYE")
        except TimeoutError:
            writer.write(b"DONE\r\n")
            await writer.drain()
            await _tagged(reader, tag, on_change)
