"""The demo organisation's SMTP submission service: STARTTLS, AUTH, own-address senders, delivery over LMTP."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import weakref
from collections.abc import Iterable, Mapping, Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 35 * 1024 * 1024
LMTP_TIMEOUT = 30.0
_UNAVAILABLE = "451 4.4.1 Mailbox server unavailable, try again later"
_DOT = re.compile(rb"^\.", re.MULTILINE)

Reply = tuple[int, str]


class LmtpError(Exception):
    """Dovecot's LMTP could not be reached, timed out or broke the protocol."""


class _Lmtp:
    """One LMTP session over asyncio streams (RFC 2033): just enough to probe recipients and deliver."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, hostname: str) -> _Lmtp:
        reader, writer = await asyncio.open_connection(host, port)
        session = cls(reader, writer)
        try:
            session.expect(await session.reply(), 220)
            session.expect(await session.command(f"LHLO {hostname}"), 250)
        except BaseException:
            writer.close()
            raise
        return session

    @staticmethod
    def expect(reply: Reply, code: int) -> None:
        if reply[0] != code:
            raise LmtpError(f"LMTP answered {reply[0]} {reply[1]}")

    async def reply(self) -> Reply:
        texts = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n") or not line[:3].isdigit():
                raise LmtpError(f"unexpected LMTP reply {line[:80]!r}")
            texts.append(line[4:].strip().decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), " ".join(texts)

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def data(self, message: bytes, accepted: int) -> list[Reply]:
        """Send the message; LMTP answers once for each accepted recipient, in RCPT order."""
        reply = await self.command("DATA")
        if reply[0] != 354:
            return [reply] * accepted
        body = _DOT.sub(b"..", message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.writer.write(body + b".\r\n")
        await self.writer.drain()
        return [await self.reply() for _ in range(accepted)]

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.command("QUIT"), 2)
        except (OSError, asyncio.TimeoutError, LmtpError):
            pass  # the delivery outcome is already known; a rude close costs nothing
        finally:
            self.writer.close()


async def lmtp_transaction(host: str, port: int, hostname: str, sender: str, recipients: Sequence[str],
                           message: bytes | None) -> dict[str, Reply]:
    """Run one LMTP transaction; with ``message`` None only ask whether the recipients exist."""
    try:
        async with asyncio.timeout(LMTP_TIMEOUT):
            session = await _Lmtp.open(host, port, hostname)
            try:
                session.expect(await session.command(f"MAIL FROM:<{sender}>"), 250)
                results = {r: await session.command(f"RCPT TO:<{r}>") for r in recipients}
                accepted = [r for r, reply in results.items() if reply[0] == 250]
                if message is not None and accepted:
                    results.update(zip(accepted, await session.data(message, len(accepted))))
            finally:
                await session.close()
            return results
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        raise LmtpError(f"LMTP at {host}:{port}: {exc or type(exc).__name__}") from exc


def _as_reply(reply: Reply) -> str:
    # Only failure replies are passed on; anything odd from LMTP becomes "try again".
    code, text = reply
    return f"{code} {text}" if 400 <= code < 600 else _UNAVAILABLE


class _Session(Session):
    # aiosmtpd's login_data property logs a deprecation warning on every successful AUTH; we use auth_data.
    login_data = None


class _Smtp(SMTP):
    def _create_session(self) -> Session:
        return _Session(self.loop)


class _Relay:
    """aiosmtpd handler: checks logins and senders, probes and delivers to Dovecot's LMTP."""

    def __init__(self, users: Mapping[str, str], lmtp_host: str, lmtp_port: int,
                 local_domains: Iterable[str], hostname: str) -> None:
        # Hashing both sides makes the comparison constant-time whatever the password lengths.
        self._digests = {a.lower(): hashlib.sha256(p.encode()).digest() for a, p in users.items()}
        self._dummy = hashlib.sha256(secrets.token_bytes(16)).digest()
        self.lmtp = (lmtp_host, lmtp_port)
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.hostname = hostname

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: LoginPassword) -> AuthResult:
        login = auth_data.login.decode("utf-8", "replace").strip().lower()
        expected = self._digests.get(login)
        # Unknown logins still pay for a comparison, so timing does not tell which logins exist.
        match = hmac.compare_digest(hashlib.sha256(auth_data.password).digest(), expected or self._dummy)
        if match and expected is not None:
            log.info("AUTH %s accepted for %s from %s", mechanism, login, session.peer)
            return AuthResult(success=True, auth_data=login)
        log.info("AUTH %s refused for %r from %s", mechanism, login, session.peer)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if address.lower() != session.auth_data:
            log.info("%s tried to send as %s", session.auth_data, address)
            return f"553 5.7.1 <{address}>: sender address not owned by user {session.auth_data}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower() not in self.local_domains:
            return f"550 5.7.1 <{address}>: relay access denied"
        try:
            reply = (await lmtp_transaction(*self.lmtp, self.hostname, envelope.mail_from,
                                            [address], None))[address]
        except LmtpError as exc:
            log.warning("cannot check recipient %s: %s", address, exc)
            return _UNAVAILABLE
        if reply[0] != 250:
            return _as_reply(reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queue_id = secrets.token_hex(6).upper()
        content = envelope.original_content or b""
        message = self._received(session, envelope, queue_id) + content
        try:
            results = await lmtp_transaction(*self.lmtp, self.hostname, envelope.mail_from,
                                             envelope.rcpt_tos, message)
        except LmtpError as exc:
            log.warning("delivery of %s failed: %s", queue_id, exc)
            return _UNAVAILABLE
        failed = {r: reply for r, reply in results.items() if reply[0] != 250}
        log.info("%s from %s: %d delivered, %d failed", queue_id, envelope.mail_from,
                 len(results) - len(failed), len(failed))
        if len(failed) == len(results):
            # One reply must speak for all; the lowest code puts temporary failures first, so the
            # client retries rather than gives up on recipients that may yet work.
            return _as_reply(min(failed.values()))
        if failed:
            # SMTP cannot refuse part of a message after DATA: tell the sender by a non-delivery report.
            await self._bounce(envelope.mail_from, failed, queue_id, content)
        return f"250 2.0.0 OK queued as {queue_id}"

    def _received(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        peer = session.peer[0] if isinstance(session.peer, tuple) else "unknown"
        # Naming the recipient only when there is one keeps Bcc recipients private.
        for_clause = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        return (f"Received: from {session.host_name} ([{peer}])\r\n"
                f"\t(Authenticated sender: {session.auth_data})\r\n"
                f"\tby {self.hostname} (casgate demo) with ESMTPSA id {queue_id}{for_clause};\r\n"
                f"\t{email.utils.formatdate(localtime=True)}\r\n").encode("utf-8")

    async def _bounce(self, sender: str, failed: Mapping[str, Reply], queue_id: str, content: bytes) -> None:
        subject = BytesHeaderParser(policy=policy.default).parsebytes(content).get("Subject", "")
        ndr = EmailMessage(policy=policy.SMTP)
        ndr["From"] = f"Mail Delivery System <MAILER-DAEMON@{self.hostname}>"
        ndr["To"] = sender
        ndr["Subject"] = f"Undeliverable: {subject}"
        ndr["Date"] = email.utils.formatdate(localtime=True)
        ndr["Message-ID"] = email.utils.make_msgid(domain=self.hostname)
        ndr["Auto-Submitted"] = "auto-replied"
        lines = [f"  <{r}>: {code} {text}" for r, (code, text) in failed.items()]
        ndr.set_content(f"Your message {queue_id} could not be delivered to these recipients:\n\n"
                        + "\n".join(lines) + "\n")
        try:
            await lmtp_transaction(*self.lmtp, self.hostname, "", [sender], ndr.as_bytes())
        except LmtpError as exc:
            log.warning("non-delivery report for %s lost: %s", queue_id, exc)


class SubmissionServer:
    """SMTP submission on ``host:port`` in the running event loop, delivering local mail to Dovecot's LMTP."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, users: Mapping[str, str],
                 lmtp_host: str, lmtp_port: int, local_domains: Sequence[str] = ("example.test",),
                 hostname: str | None = None) -> None:
        self.host, self.port = host, port
        self.hostname = hostname or f"mail.{local_domains[0]}"
        self._tls = ssl_context
        self._relay = _Relay(users, lmtp_host, lmtp_port, local_domains, self.hostname)
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _protocol(self) -> SMTP:
        smtp = _Smtp(self._relay, hostname=self.hostname, ident="casgate demo submission",
                     tls_context=self._tls, require_starttls=True, auth_required=True,
                     auth_require_tls=True, authenticator=self._relay.authenticate,
                     data_size_limit=MAX_MESSAGE_SIZE, loop=asyncio.get_running_loop())
        self._connections.add(smtp)
        return smtp

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0 asks for any free one
        log.info("submission listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Server.close() leaves accepted connections open; a clean stop ends them too.
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
        await self._server.wait_closed()
        self._server = None
