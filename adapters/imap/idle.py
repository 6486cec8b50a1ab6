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
from .wire import decode_mailbox, mailbox

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


# --- NOTIFY (RFC 5465): every folder on one connection ------------------------------------------------------

_STATUS = re.compile(rb'^\* STATUS (?:"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}|([^\s(){]+)) ?', re.I)
# INBOX selected, with every change reported (FETCH for flags); every other personal folder reported by an
# untagged STATUS when a message arrives or goes. Flag changes there are not (Dovecot sends none for a folder
# that is not selected), so those folders are still polled.
_NOTIFY_SET = b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge))"


class _NotifyRefused(Exception):
    """The server offers NOTIFY but refused ours: IDLE will do instead."""


async def watch_all(ep: ImapEndpoint, creds: Credentials, on_change: Callable[[str], None],
                    on_ready: Callable[[bool], None], client_ip: str | None = None, retry: float = 5.0) -> bool:
    """Until cancelled: log in, ask for NOTIFY events (every change in INBOX, new and removed messages in every
    other personal folder), SELECT INBOX, IDLE, and call ``on_change`` with the name of each folder the server
    reports (INBOX by EXISTS, EXPUNGE or FETCH; any other by its new counters, an untagged STATUS). ``on_ready``
    is called with True each time the server has taken the NOTIFY (a change may have been missed before a
    renewed one) and with False when the connection is lost. Returns False at once when the server does not
    offer NOTIFY or refuses ours (the caller watches with IDLE instead); refused credentials end the watch
    (True)."""
    while True:
        try:
            session = await open_session(ep, creds, client_ip)
        except AuthenticationFailed:
            log.info("notify watch stopped: credentials refused", extra={"event": "idle"})
            return True
        except BackendUnavailable:
            await asyncio.sleep(retry)
            continue
        if "NOTIFY" not in session.caps:
            session.close()
            return False
        try:
            await _notify(session.reader, session.writer, on_change, on_ready)
        except _NotifyRefused:
            log.info("notify refused by the IMAP server; watching INBOX with IDLE", extra={"event": "idle"})
            return False
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError):
            pass
        finally:
            session.close()
            on_ready(False)
        await asyncio.sleep(retry)


async def _notify(reader: asyncio.StreamReader, writer, on_change: Callable[[str], None],
                  on_ready: Callable[[bool], None]) -> None:
    writer.write(b"n1 " + _NOTIFY_SET + b"\r\n")
    await writer.drain()
    if not (await _answered(reader, b"n1", on_change)).upper().startswith(b"N1 OK"):
        raise _NotifyRefused()
    writer.write(b"n2 SELECT INBOX\r\n")
    await writer.drain()
    # SELECT's own EXISTS counts what is there, not a change.
    if not (await _answered(reader, b"n2", on_change, selecting=True)).upper().startswith(b"N2 OK"):
        raise ValueError("cannot select INBOX")
    on_ready(True)
    n = 2
    while True:
        n += 1
        tag = b"n%d" % n
        writer.write(tag + b" IDLE\r\n")
        await writer.drain()
        while not (line := await _line(reader)).startswith(b"+"):
            if line.startswith(tag + b" "):
                raise ValueError("the IMAP server refused IDLE")
            await _reported(reader, line, on_change)
        try:
            async with asyncio.timeout(REFRESH):
                while True:
                    await _reported(reader, await _line(reader), on_change)
        except TimeoutError:
            writer.write(b"DONE\r\n")
            await writer.drain()
            await _answered(reader, tag, on_change)


async def _answered(reader: asyncio.StreamReader, tag: bytes, on_change: Callable[[str], None],
                    selecting: bool = False) -> bytes:
    """The tagged answer to ``tag``, reporting what arrives before it."""
    while not (line := await _line(reader)).startswith(tag + b" "):
        await _reported(reader, line, on_change, selecting)
    return line


async def _reported(reader: asyncio.StreamReader, line: bytes, on_change: Callable[[str], None],
                    selecting: bool = False) -> None:
    """One untagged line while NOTIFY is on: a STATUS names a changed folder, EXISTS, EXPUNGE or FETCH a change
    in INBOX (unless it is SELECT's own count); BYE ends the connection."""
    if line.upper().startswith(b"* BYE"):
        raise ConnectionResetError("server said BYE")
    if _CHANGE.match(line) and not selecting:
        on_change("INBOX")
    found = _STATUS.match(line)
    if found is not None:
        quoted, size, atom = found.groups()
        if size is not None:
            if int(size) > _MAX_LINE:
                raise ValueError("over-long mailbox name from the IMAP server")
            raw = await reader.readexactly(int(size))
            await _line(reader)  # the rest: the counters
        elif quoted is not None:
            raw = re.sub(rb"\\(.)", rb"\1", quoted)
        else:
            raw = atom
        name = decode_mailbox(raw)
        on_change("INBOX" if name.isascii() and name.upper() == "INBOX" else name)
    elif line.rstrip().endswith(b"}") and b"{" in line:  # another reply's literal: skip its octets
        size = line.rstrip()[line.rstrip().rindex(b"{") + 1:-1].rstrip(b"+")
        if size.isdigit():
            await reader.readexactly(int(size))
