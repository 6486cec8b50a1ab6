"""The IMAP4rev1 not-authenticated state (RFC 3501/9051) as a pure core: framing, grammar, login hand-off.

The core reads commands (lines and the literals inside them), checks their
grammar and hands well-formed credentials to its shell as a ``LoginRequest``;
it never judges a password itself. Extensions handled here: LITERAL+ (RFC
7888), SASL-IR (RFC 4959), ID (RFC 2971), response codes of RFC 5530.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..lineproto import FrontLimits, LoginRequest, Reply

__all__ = ["MAX_LINE", "ImapPreAuth"]

MAX_LINE = FrontLimits().max_line  # the default; a core's own limit is ``limits.max_line``

# RFC 3501 tag: ASTRING-CHAR except "+", so a reply never reads as untagged ("*") or a continuation ("+").
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
# One argument token: SP, a parenthesis, a quoted string (RFC 9051 allows UTF-8 in it), or an astring atom.
_TOKEN = re.compile(rb' |\(|\)|"((?:[^"\\\r\n\x00]|\\["\\])*+)"|([\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+)')
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL_SIZE = re.compile(rb"([0-9]+)(\+?)")
_ID_FIELD, _ID_VALUE = 30, 1024  # RFC 2971 section 3.3

_BYE_LINE = Reply(b"* BYE line too long\r\n", close=True)
_BYE_LITERAL = Reply(b"* BYE literal too large\r\n", close=True)
_BYE_COMMANDS = Reply(b"* BYE too many commands\r\n", close=True)
_MALFORMED = b"* BAD malformed command\r\n"
_FAILED = {
    "auth": b"NO [AUTHENTICATIONFAILED] Authentication failed.",
    "unavailable": b"NO [UNAVAILABLE] mail store unavailable, try again later",
    "in-use": b"NO [INUSE] mailbox in use, try again later",
}


class _State(enum.Enum):
    LINE = "line"                  # reading a command line, or the rest of one after a literal
    LITERAL = "literal"            # reading (or skipping) a literal's octets
    AUTH_RESPONSE = "auth"         # waiting for the client's line after "+ " of AUTHENTICATE
    TLS = "tls"                    # STARTTLS answered: nothing is read until the handshake is done
    CLOSED = "closed"              # closed, or handed over after a successful login


@dataclass(slots=True)
class _Command:
    """A command being read; once ``error`` is set its arguments are skipped, not kept."""

    tag: bytes
    name: bytes
    tokens: list[tuple[str, bytes]] = field(default_factory=list)  # (kind, value); kinds: " ", "(", ")", s, a, n
    text: int = 0                                                   # octets of command text so far, literals excluded
    error: bytes | None = None                                      # the reply the command ends with


@dataclass(frozen=True, slots=True)
class _Grammar:
    """A command's arguments as a pattern over token kinds ("s" string, "a" atom, "n" NIL)."""

    args: re.Pattern[str]
    literal: re.Pattern[str] | None   # argument prefixes after which a literal (a string) may follow
    run: Callable[[ImapPreAuth, bytes, list[tuple[str, bytes]]], Reply]
    literal_max: int | None = None    # tighter cap than limits.max_literal


def _tokenize(text: bytes) -> list[tuple[str, bytes]] | None:
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        pos = m.end()
        if m.group(1) is not None:
            value = _UNESCAPE.sub(rb"\1", m.group(1))
            try:
                value.decode()
            except UnicodeDecodeError:
                return None
            out.append(("s", value))
        elif m.group(2) is not None:
            out.append(("n" if m.group(2).upper() == b"NIL" else "a", m.group(2)))
        else:
            out.append((m.group().decode(), b""))
    return out


def _literal_announced(line: bytes) -> tuple[int, int, bool] | None:
    """(where "{" is, octet count, synchronizing) when the line ends by announcing a literal."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    m = _LITERAL_SIZE.fullmatch(line, start + 1, len(line) - 1) if start >= 0 else None
    if m is None:
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= 18 else 1 << 64  # int() refuses very long digit strings
    return start, size, not m.group(2)


def _b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class ImapPreAuth:
    """Pure core: bytes in, replies out (see ``gateway.lineproto.LineCore``)."""

    def __init__(self, tls_active: bool, starttls_available: bool = True, limits: FrontLimits = FrontLimits(),
                 allow_plaintext: bool = False) -> None:
        self.tls_active = tls_active
        self.starttls_available = starttls_available and not tls_active
        self.limits = limits
        self.allow_plaintext = allow_plaintext
        self._state = _State.LINE
        self._buf = bytearray()
        self._scanned = 0                  # how much of _buf is known to hold no LF
        self._cmd: _Command | None = None
        self._need = 0                     # literal octets still to come
        self._keep = False                 # keep them (True) or skip them
        self._literal = bytearray()
        self._auth_tag = b""
        self._pending: LoginRequest | None = None
        self._commands = 0
        self._failures = 0

    @property
    def login_allowed(self) -> bool:
        return self.tls_active or self.allow_plaintext

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID"]
        if self.starttls_available:
            caps.append("STARTTLS")
        caps.append("AUTH=PLAIN" if self.login_allowed else "LOGINDISABLED")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] casgate ready\r\n".encode()

    def refusal(self, why: str) -> bytes:
        what = "this server" if why == "server" else "your address"
        return f"* BYE [UNAVAILABLE] too many connections to {what}, try again later\r\n".encode()

    def timeout_notice(self) -> bytes:
        return b"* BYE autologout: idle for too long\r\n"

    def tls_started(self) -> None:
        self.tls_active = True
        self.starttls_available = False
        # RFC 3501 6.2.1: nothing sent before the handshake may be acted on after it.
        self._buf.clear()
        self._scanned = 0
        self._cmd = None
        self._literal.clear()
        if self._state is not _State.CLOSED:
            self._state = _State.LINE

    def login_failed(self, request: LoginRequest, reason: str) -> Reply:
        self._pending = None
        self._failures += 1
        data = request.tag + b" " + _FAILED.get(reason, _FAILED["auth"]) + b"\r\n"
        if self._failures >= self.limits.max_auth_attempts:
            self._close()
            return Reply(data + b"* BYE too many failed logins\r\n", close=True)
        return Reply(data)

    def take_pending(self) -> bytes:
        """What the client sent after its login command; the core is finished afterwards."""
        data = bytes(self._buf)
        self._close()
        return data

    def receive(self, data: bytes) -> list[Reply]:
        if self._state in (_State.TLS, _State.CLOSED):
            return []
        self._buf += data
        out: list[Reply] = []
        while self._pending is None:
            progressed, reply = self._step()
            if reply is not None:
                out.append(reply)
                if reply.close:
                    self._close()
                    break
                if reply.starttls:
                    self._state = _State.TLS
                    self._buf.clear()
                    break
                self._pending = reply.login
            if not progressed:
                break
        return out

    # --- framing -------------------------------------------------------------------------------------------

    def _close(self) -> None:
        self._state = _State.CLOSED
        self._buf.clear()
        self._pending = None

    def _step(self) -> tuple[bool, Reply | None]:
        """Act on what is buffered: (whether anything was consumed, the reply if one is due)."""
        if self._state is _State.LITERAL:
            return self._take_literal()
        if self._state is _State.AUTH_RESPONSE:
            room = max(self.limits.max_line, (self.limits.max_literal + 2) // 3 * 4)
        else:
            room = self.limits.max_line - (self._cmd.text if self._cmd else 0)
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = n = len(self._buf)
            # Over the limit even if the next octet is the LF: decided now, so any split gives the same answer.
            if n > room + 1 or (n == room + 1 and self._buf[-1] != 0x0D):
                return True, _BYE_LINE
            return False, None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > room:
            return True, _BYE_LINE
        if self._state is _State.AUTH_RESPONSE:
            self._state = _State.LINE
            return True, self._auth_response(line)
        return True, self._segment(line)

    def _take_literal(self) -> tuple[bool, Reply | None]:
        count = min(self._need, len(self._buf))
        if self._keep:
            self._literal += self._buf[:count]
        del self._buf[:count]
        self._need -= count
        if self._need:
            return count > 0, None
        self._state = _State.LINE
        cmd = self._cmd
        if self._keep and cmd is not None:
            value = bytes(self._literal)
            self._literal.clear()
            if b"\x00" in value:  # CHAR8 excludes NUL
                self._fail(cmd, b"BAD NUL octet in literal")
            else:
                cmd.tokens.append(("s", value))
        return True, None

    def _segment(self, line: bytes) -> Reply | None:
        """One line of a command: all of it, or the part up to (the next) literal."""
        lit = _literal_announced(line)
        body = line if lit is None else line[:lit[0]]
        cmd = self._cmd
        if cmd is None:
            self._commands += 1
            if self._commands > self.limits.max_commands:
                return _BYE_COMMANDS
            cmd = self._cmd = self._start(body)
        elif cmd.error is None:
            self._add_tokens(cmd, body)
        cmd.text += len(line)
        if lit is None:
            self._cmd = None
            return Reply(cmd.error) if cmd.error is not None else self._run(cmd)
        return self._announce(cmd, lit[1], lit[2])

    def _start(self, body: bytes) -> _Command:
        tag, sp, rest = body.partition(b" ")
        name = _ATOM.match(rest) if sp else None
        if name is None or not _TAG.fullmatch(tag):
            return _Command(b"*", b"", error=_MALFORMED)
        cmd = _Command(tag, name.group().upper())
        if cmd.name not in _COMMANDS:
            self._fail(cmd, b"BAD command unknown or not valid before login")
        elif cmd.name in (b"LOGIN", b"AUTHENTICATE") and not self.login_allowed:
            self._fail(cmd, b"NO [PRIVACYREQUIRED] " + (b"use STARTTLS first" if self.starttls_available
                                                         else b"login needs a TLS connection"))
        else:
            self._add_tokens(cmd, rest[name.end():])
        return cmd

    def _add_tokens(self, cmd: _Command, text: bytes) -> None:
        tokens = _tokenize(text)
        if tokens is None:
            self._fail(cmd, b"BAD syntax error in arguments")
        else:
            cmd.tokens += tokens

    @staticmethod
    def _fail(cmd: _Command, text: bytes) -> None:
        cmd.error = cmd.tag + b" " + text + b"\r\n"
        cmd.tokens = []

    def _announce(self, cmd: _Command, size: int, sync: bool) -> Reply | None:
        """A line ended with {size} or {size+}: accept the literal, skip it, or end the command."""
        if cmd.error is None:
            grammar = _COMMANDS[cmd.name]
            if grammar.literal is None or not grammar.literal.fullmatch(_kinds(cmd.tokens)):
                self._fail(cmd, b"BAD literal not expected here")
            elif size > min(self.limits.max_literal, grammar.literal_max or self.limits.max_literal):
                if not sync:
                    return _BYE_LITERAL  # RFC 7888 section 4: the octets are on their way; refuse them all
                self._fail(cmd, b"BAD literal too large")
        if cmd.error is not None:
            if sync:  # the client sends nothing more of this command
                self._cmd = None
                return Reply(cmd.error)
            if size > self.limits.max_literal:
                return _BYE_LITERAL
            self._expect(size, keep=False)
            return None
        self._expect(size, keep=True)
        return Reply(b"+ Ready for literal\r\n") if sync else None

    def _expect(self, size: int, keep: bool) -> None:
        self._state = _State.LITERAL
        self._need = size
        self._keep = keep
        self._literal.clear()

    def _run(self, cmd: _Command) -> Reply:
        grammar = _COMMANDS[cmd.name]
        if not grammar.args.fullmatch(_kinds(cmd.tokens)):
            return Reply(cmd.tag + b" BAD invalid arguments to " + cmd.name + b"\r\n")
        return grammar.run(self, cmd.tag, [t for t in cmd.tokens if t[0] in "san"])

    # --- commands ------------------------------------------------------------------------------------------

    def _capability(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        return Reply(f"* CAPABILITY {self.capabilities()}\r\n".encode() + tag + b" OK CAPABILITY completed\r\n")

    def _noop(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        return Reply(tag + b" OK NOOP completed\r\n")

    def _logout(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        return Reply(b"* BYE casgate closing\r\n" + tag + b" OK LOGOUT completed\r\n", close=True)

    def _id(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        fields, values = args[0::2], args[1::2]  # the lone NIL of "ID NIL" counts as a short field
        if any(len(v) > _ID_FIELD for _, v in fields) or any(k == "s" and len(v) > _ID_VALUE for k, v in values):
            return Reply(tag + b" BAD ID field or value too long\r\n")
        return Reply(b'* ID ("name" "casgate")\r\n' + tag + b" OK ID completed\r\n")

    def _starttls(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        if self.tls_active:
            return Reply(tag + b" BAD TLS is already active\r\n")
        if not self.starttls_available:
            return Reply(tag + b" NO STARTTLS is not available\r\n")
        return Reply(tag + b" OK Begin TLS negotiation now\r\n", starttls=True)

    def _login(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        try:
            username, password = (value.decode() for _, value in args)
        except UnicodeDecodeError:
            return Reply(tag + b" BAD user name and password must be UTF-8\r\n")
        return Reply(b"", login=LoginRequest(tag, username, password))

    def _authenticate(self, tag: bytes, args: list[tuple[str, bytes]]) -> Reply:
        if args[0][1].upper() != b"PLAIN":
            return Reply(tag + b" NO [CANNOT] unsupported authentication mechanism, use PLAIN\r\n")
        if len(args) == 1:
            self._state = _State.AUTH_RESPONSE
            self._auth_tag = tag
            return Reply(b"+ \r\n")
        initial = args[1][1]
        message = b"" if initial == b"=" else _b64(initial)  # RFC 4959: "=" is an empty initial response
        if message is None:
            return Reply(tag + b" BAD invalid base64 in initial response\r\n")
        return self._plain(tag, message)

    def _auth_response(self, line: bytes) -> Reply:
        tag = self._auth_tag
        if line == b"*":
            return Reply(tag + b" BAD AUTHENTICATE cancelled\r\n")
        message = _b64(line)
        if message is None:
            return Reply(tag + b" BAD invalid base64 in response\r\n")
        return self._plain(tag, message)

    @staticmethod
    def _plain(tag: bytes, message: bytes) -> Reply:
        """RFC 4616: [authzid] NUL authcid NUL passwd, all UTF-8, authcid and passwd not empty."""
        parts = message.split(b"\x00")
        try:
            authzid, username, password = (part.decode() for part in parts)
        except (ValueError, UnicodeDecodeError):
            return Reply(tag + b" BAD malformed PLAIN response\r\n")
        if not username or not password:
            return Reply(tag + b" BAD malformed PLAIN response\r\n")
        if authzid and authzid != username:
            return Reply(tag + b" NO [AUTHORIZATIONFAILED] logging in as another user is not supported\r\n")
        return Reply(b"", login=LoginRequest(tag, username, password))


def _kinds(tokens: list[tuple[str, bytes]]) -> str:
    return "".join(kind for kind, _ in tokens)


_NONE = re.compile("")
_COMMANDS: dict[bytes, _Grammar] = {
    b"CAPABILITY": _Grammar(_NONE, None, ImapPreAuth._capability),
    b"NOOP": _Grammar(_NONE, None, ImapPreAuth._noop),
    b"LOGOUT": _Grammar(_NONE, None, ImapPreAuth._logout),
    b"STARTTLS": _Grammar(_NONE, None, ImapPreAuth._starttls),
    b"LOGIN": _Grammar(re.compile(" [asn] [asn]"), re.compile(" (?:[asn] )?"), ImapPreAuth._login),
    b"AUTHENTICATE": _Grammar(re.compile(" [an](?: [an])?"), None, ImapPreAuth._authenticate),
    # RFC 2971: NIL, or up to 30 pairs of string and nstring (an empty list is accepted too).
    b"ID": _Grammar(re.compile(r" (?:n|\(\)|\(s [sn](?: s [sn]){0,29}\))"),
                    re.compile(r" \((?:s [sn] ){0,29}(?:s )?"), ImapPreAuth._id, literal_max=_ID_VALUE),
}
