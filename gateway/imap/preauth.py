"""The IMAP4rev1 not-authenticated state (RFC 3501/9051): greeting, CAPABILITY, STARTTLS, ID, NOOP, LOGOUT.

Mailbox access after login is not part of this release: LOGIN and
AUTHENTICATE are answered with a clear NO, never pretended.
"""

from __future__ import annotations

import re

from ..lineproto import Reply, split_commands

MAX_LINE = 8192
# RFC 3501 tag characters: no "*", "%" or "+", so a reply never reads as untagged or as a continuation.
_TAG = re.compile(rb"^([\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+) ([A-Za-z]+)(?: (.*))?$")


class ImapPreAuth:
    """Pure core: bytes in, replies out."""

    def __init__(self, tls_active: bool, starttls_available: bool = True) -> None:
        self.tls_active = tls_active
        self.starttls_available = starttls_available and not tls_active
        self._buf = b""
        self._closed = False

    def capabilities(self) -> str:
        # Only what this core really handles is advertised (no LITERAL+ or SASL-IR until login exists).
        caps = ["IMAP4rev1", "ID"]
        if self.tls_active:
            caps.append("AUTH=PLAIN")
        else:
            if self.starttls_available:
                caps.append("STARTTLS")
            caps.append("LOGINDISABLED")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] casgate ready\r\n".encode()

    def tls_started(self) -> None:
        self.tls_active = True
        self.starttls_available = False
        self._buf = b""  # RFC 3501 6.2.1: nothing sent before the handshake may be acted on after it

    def receive(self, data: bytes) -> list[Reply]:
        if self._closed:
            return []
        self._buf, out, self._closed = split_commands(self._buf, data, self._line, MAX_LINE,
                                                      Reply(b"* BYE line too long\r\n", close=True))
        return out

    def _line(self, line: bytes) -> Reply:
        m = _TAG.match(line)
        if not m:
            return Reply(b"* BAD malformed command\r\n")
        tag, cmd = m.group(1), m.group(2).upper()
        ok = tag + b" OK "
        if cmd == b"CAPABILITY":
            return Reply(f"* CAPABILITY {self.capabilities()}\r\n".encode() + ok + b"CAPABILITY completed\r\n")
        if cmd == b"NOOP":
            return Reply(ok + b"NOOP completed\r\n")
        if cmd == b"LOGOUT":
            return Reply(b"* BYE casgate closing\r\n" + ok + b"LOGOUT completed\r\n", close=True)
        if cmd == b"ID":
            return Reply(b'* ID ("name" "casgate")\r\n' + ok + b"ID completed\r\n")
        if cmd == b"STARTTLS":
            if not self.starttls_available:
                return Reply(tag + b" BAD TLS is already active\r\n" if self.tls_active
                             else tag + b" NO STARTTLS is not available\r\n")
            return Reply(ok + b"Begin TLS negotiation now\r\n", starttls=True)
        if cmd in (b"LOGIN", b"AUTHENTICATE"):
            if not self.tls_active:
                return Reply(tag + b" NO [PRIVACYREQUIRED] use STARTTLS first\r\n")
            return Reply(tag + b" NO [CANNOT] mailbox access over IMAP is not implemented in this casgate "
                               b"release\r\n")
        return Reply(tag + b" BAD command unknown or not valid before login\r\n")
