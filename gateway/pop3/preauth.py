"""The POP3 AUTHORIZATION state (RFC 1939, 2449, 2595, 5034): greeting, CAPA, STLS, USER/PASS, AUTH PLAIN.

The core never checks a password: a well-formed USER/PASS or AUTH PLAIN
becomes a ``LoginRequest`` that the shell verifies, answering through
``login_failed`` or, on success, handing the connection to the maildrop.
"""

from __future__ import annotations

import binascii

from ..lineproto import FrontLimits, LoginRequest, Reply, split_commands

MAX_LINE = 512  # RFC 2449: a command line is at most 255 octets; allow slack for long AUTH responses

_FAILED = {
    "auth": b"-ERR [AUTH] Authentication failed\r\n",
    "unavailable": b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n",
    "in-use": b"-ERR [IN-USE] maildrop already locked by another session\r\n",
}
_AUTH_FAILED = _FAILED["auth"]


def capabilities(*, login: bool = False, stls: bool = False) -> list[bytes]:
    """The CAPA lines (RFC 2449); after login both flags are False."""
    caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
    if login:
        caps += [b"USER", b"SASL PLAIN"]
    if stls:
        caps.append(b"STLS")
    caps.append(b"IMPLEMENTATION casgate")
    return caps


def capa_reply(caps: list[bytes]) -> bytes:
    return b"+OK capability list follows\r\n" + b"".join(c + b"\r\n" for c in caps) + b".\r\n"


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def valid_username(name: str | None) -> bool:
    """Non-empty and free of control characters (they could break the back end's own line protocol)."""
    return bool(name) and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def valid_password(password: str | None) -> bool:
    return bool(password) and not any(c in password for c in "\x00\r\n")


def decode_plain(response: bytes) -> tuple[str, str, str] | None:
    """(authzid, authcid, password) of a base64 RFC 4616 PLAIN response, or None if it is not well formed.

    Raises ``binascii.Error`` when the base64 itself is bad, so the caller can tell the two apart.
    """
    message = binascii.a2b_base64(response, strict_mode=True) if response != b"=" else b""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        return None
    authzid, authcid, password = (_text(p) for p in parts)
    if authzid is None or not valid_username(authcid) or not valid_password(password):
        return None
    return authzid, authcid, password


class Pop3PreAuth:
    """Pure core of the AUTHORIZATION state: bytes in, replies out (see ``LineCore``)."""

    def __init__(self, tls_active: bool, stls_available: bool = True,
                 limits: FrontLimits = FrontLimits(max_line=MAX_LINE), allow_plaintext: bool = False) -> None:
        self.tls_active = tls_active
        self.stls_available = stls_available and not tls_active
        self.limits = limits
        self.allow_plaintext = allow_plaintext
        self._buf = b""
        self._closed = False
        self._user: str | None = None        # name given by USER, waiting for PASS
        self._sasl = False                    # AUTH PLAIN sent "+ ", the next line is the response
        self._pending: LoginRequest | None = None
        self._commands = 0
        self._failures = 0

    @property
    def login_allowed(self) -> bool:
        return self.tls_active or self.allow_plaintext

    def greeting(self) -> bytes:
        return b"+OK casgate POP3 ready\r\n"

    def refusal(self, why: str) -> bytes:
        what = "this server" if why == "server" else "your address"
        return f"-ERR [SYS/TEMP] too many connections to {what}, try again later\r\n".encode()

    def timeout_notice(self) -> bytes:
        return b"-ERR autologout: idle for too long\r\n"

    def tls_started(self) -> None:
        self.tls_active = True
        self.stls_available = False
        # RFC 2595 4: nothing sent before the handshake may be acted on after it.
        self._buf = b""
        self._user = None
        self._sasl = False

    def receive(self, data: bytes) -> list[Reply]:
        if self._closed:
            return []
        if self._pending is not None:
            self._buf += data  # the login's outcome decides who reads these
            return []
        self._buf, out, self._closed = split_commands(self._buf, data, self._line, self.limits.max_line,
                                                      Reply(b"-ERR line too long\r\n", close=True))
        return out

    def login_failed(self, request: LoginRequest, reason: str) -> Reply:
        self._pending = None
        self._failures += 1
        text = _FAILED.get(reason, _AUTH_FAILED)
        if self._failures >= self.limits.max_auth_attempts:
            self._closed = True
            self._buf = b""
            return Reply(text, close=True)
        return Reply(text)

    def take_pending(self) -> bytes:
        pending, self._buf = self._buf, b""
        self._pending = None
        self._closed = True  # the authenticated session owns the connection now
        return pending

    # --- commands ---------------------------------------------------------------------------------------

    def _line(self, line: bytes) -> Reply:
        if self._sasl:
            self._sasl = False
            if line == b"*":
                return Reply(b"-ERR authentication cancelled\r\n")
            return self._plain(line)
        self._commands += 1
        if self._commands > self.limits.max_commands:
            return Reply(b"-ERR too many commands without login\r\n", close=True)
        cmd, _, arg = line.partition(b" ")
        cmd = cmd.upper()
        if cmd == b"CAPA":
            return Reply(capa_reply(capabilities(login=self.login_allowed, stls=self.stls_available)))
        if cmd == b"QUIT":
            return Reply(b"+OK casgate signing off\r\n", close=True)
        if cmd == b"NOOP":
            return Reply(b"+OK\r\n")
        if cmd == b"STLS":
            if not self.stls_available:
                return Reply(b"-ERR TLS is already active or not available\r\n")
            return Reply(b"+OK begin TLS negotiation\r\n", starttls=True)
        if cmd == b"APOP":
            return Reply(b"-ERR APOP is not supported\r\n")
        if cmd in (b"USER", b"PASS", b"AUTH"):
            if not self.login_allowed:
                return Reply(b"-ERR [AUTH] use STLS first\r\n" if self.stls_available
                             else b"-ERR [AUTH] login requires TLS\r\n")
            if cmd == b"USER":
                return self._user_cmd(arg)
            if cmd == b"PASS":
                return self._pass_cmd(arg)
            return self._auth_cmd(arg)
        return Reply(b"-ERR unknown command or not valid before login\r\n")

    def _user_cmd(self, arg: bytes) -> Reply:
        name = _text(arg)
        if not valid_username(name):
            self._user = None
            return Reply(b"-ERR bad user name\r\n")
        self._user = name
        return Reply(b"+OK send PASS\r\n")

    def _pass_cmd(self, arg: bytes) -> Reply:
        user, self._user = self._user, None  # RFC 1939: after PASS, right or wrong, USER starts again
        if user is None:
            return Reply(b"-ERR send USER first\r\n")
        password = _text(arg)
        if not valid_password(password):
            return self._refused()
        return self._login(user, password)

    def _auth_cmd(self, arg: bytes) -> Reply:
        if not arg:
            return Reply(b"+OK mechanisms follow\r\nPLAIN\r\n.\r\n")
        mech, _, initial = arg.partition(b" ")
        if mech.upper() != b"PLAIN":
            return Reply(b"-ERR unsupported authentication mechanism\r\n")
        if not initial:
            self._sasl = True
            return Reply(b"+ \r\n")
        return self._plain(initial)

    def _plain(self, response: bytes) -> Reply:
        try:
            creds = decode_plain(response)
        except (binascii.Error, ValueError):
            return Reply(b"-ERR malformed base64\r\n")
        if creds is None:
            return self._refused()
        authzid, authcid, password = creds
        if authzid and authzid != authcid:
            return self._refused(b"-ERR [AUTH] acting as another user is not allowed\r\n")
        return self._login(authcid, password)

    def _login(self, user: str, password: str) -> Reply:
        self._pending = LoginRequest(b"", user, password)
        return Reply(b"", login=self._pending)

    def _refused(self, text: bytes = _AUTH_FAILED) -> Reply:
        """A login refused before the shell saw it: counts like a wrong password."""
        self._failures += 1
        if self._failures >= self.limits.max_auth_attempts:
            return Reply(text, close=True)
        return Reply(text)
