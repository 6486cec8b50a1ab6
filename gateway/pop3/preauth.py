"""The POP3 AUTHORIZATION state (RFC 1939, 2449, 2595): greeting, CAPA, STLS, QUIT.

Maildrop access is not part of this release: USER, PASS and AUTH are
answered with a clear -ERR, never pretended.
"""

from __future__ import annotations

from ..lineproto import Reply, split_commands

MAX_LINE = 512  # RFC 2449: a command line is at most 255 octets; allow slack for long AUTH


class Pop3PreAuth:
    """Pure core: bytes in, replies out."""

    def __init__(self, tls_active: bool, stls_available: bool = True) -> None:
        self.tls_active = tls_active
        self.stls_available = stls_available and not tls_active
        self._buf = b""
        self._closed = False

    def greeting(self) -> bytes:
        return b"+OK casgate POP3 ready\r\n"

    def tls_started(self) -> None:
        self.tls_active = True
        self.stls_available = False
        self._buf = b""

    def capa(self) -> bytes:
        lines = [b"+OK capability list follows", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE",
                 b"PIPELINING", b"IMPLEMENTATION casgate"]
        if self.stls_available:
            lines.append(b"STLS")
        return b"\r\n".join(lines) + b"\r\n.\r\n"

    def receive(self, data: bytes) -> list[Reply]:
        if self._closed:
            return []
        self._buf, out, self._closed = split_commands(self._buf, data, self._line, MAX_LINE,
                                                      Reply(b"-ERR line too long\r\n", close=True))
        return out

    def _line(self, line: bytes) -> Reply:
        cmd, _, _ = line.partition(b" ")
        cmd = cmd.upper()
        if cmd == b"CAPA":
            return Reply(self.capa())
        if cmd == b"QUIT":
            return Reply(b"+OK casgate signing off\r\n", close=True)
        if cmd == b"STLS":
            if not self.stls_available:
                return Reply(b"-ERR TLS is already active or not available\r\n")
            return Reply(b"+OK begin TLS negotiation\r\n", starttls=True)
        if cmd in (b"USER", b"PASS", b"AUTH", b"APOP"):
            if not self.tls_active:
                return Reply(b"-ERR [AUTH] use STLS first\r\n")
            return Reply(b"-ERR [SYS/PERM] maildrop access over POP3 is not implemented in this casgate release\r\n")
        return Reply(b"-ERR unknown command or not valid before login\r\n")
