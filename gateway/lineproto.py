"""Shared pieces of the line-based front ends (IMAP, POP3): replies, login requests, limits, the core contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

@dataclass(frozen=True, slots=True)
class LoginRequest:
    """Credentials a client presented; the shell checks them and answers through the core.

    ``tag`` is the IMAP command tag (empty for POP3); ``repr`` never shows the password.
    """

    tag: bytes
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send, and what the shell must do after sending them.

    A reply carrying ``login`` asks the shell to check those credentials; the
    core stops reading there and keeps what follows (``take_pending``), so that
    commands a client pipelined behind its login go to whoever serves the
    authenticated session.
    """

    data: bytes
    close: bool = False
    starttls: bool = False
    login: LoginRequest | None = None


@dataclass(frozen=True, slots=True)
class FrontLimits:
    """Per-connection limits of a line-based front end before authentication."""

    max_line: int = 8192          # octets in one command line (IMAP: not counting literals)
    max_literal: int = 8192       # octets in one literal before login (IMAP LOGIN / AUTHENTICATE data)
    max_commands: int = 50        # commands accepted before a successful login
    max_auth_attempts: int = 3    # failed logins on one connection before it is closed


def split_commands(buf: bytes, data: bytes, handle: Callable[[bytes], Reply], max_line: int,
                   too_long: Reply) -> tuple[bytes, list[Reply], bool]:
    """Run ``handle`` on every complete line of ``buf + data``.

    Returns (what is left unread, the replies, whether the session is over).
    Reading stops at a reply that closes or starts TLS: bytes a client
    pipelined behind STARTTLS must never be acted on after the handshake.
    """
    buf += data
    out: list[Reply] = []
    while b"\n" in buf:
        line, _, buf = buf.partition(b"\n")
        reply = handle(line.rstrip(b"\r"))
        out.append(reply)
        if reply.close or reply.starttls:
            return b"", out, reply.close
        if reply.login is not None:
            return buf, out, False  # the rest waits for the login's outcome
    if len(buf) > max_line:
        return b"", out + [too_long], True
    return buf, out, False


class LineCore(Protocol):
    """What a pre-login protocol core offers its shell; it never touches a socket.

    ``receive`` returns replies for every complete command and stops after one
    that closes, starts TLS or carries a login. After a login reply the shell
    checks the credentials, then calls ``login_failed`` (whose reply it sends)
    or, on success, ``take_pending`` for the bytes the client sent after its
    login command. ``login_failed`` reasons: "auth" (wrong user or password;
    also used while throttled), "unavailable" (back end down or unreachable),
    "in-use" (POP3 maildrop locked by another session). While a login is being
    checked the core only buffers what arrives; after ``login_failed`` the
    shell calls ``receive(b"")`` to act on commands buffered meanwhile.
    """

    def greeting(self) -> bytes: ...
    def receive(self, data: bytes) -> list[Reply]: ...
    def tls_started(self) -> None: ...
    def login_failed(self, request: LoginRequest, reason: str) -> Reply: ...
    def take_pending(self) -> bytes: ...
    def refusal(self, why: str) -> bytes:
        """The line closing a connection over a limit: ``why`` is "server" (all connections) or "address"."""
    def timeout_notice(self) -> bytes:
        """The line closing a connection silent for too long before login."""
