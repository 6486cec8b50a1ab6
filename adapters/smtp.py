"""Submission adapter: sends a user's mail through an SMTP submission server (RFC 6409) with aiosmtplib."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence

import aiosmtplib

from .errors import (AuthenticationFailed, BackendError, BackendUnavailable, InvalidData, PermissionDenied,
                     QuotaExceeded)
from .interfaces import Credentials

TLS_MODES = ("implicit", "starttls", "none")


class RecipientsRefused(InvalidData):
    """The server refused some recipients for good, so the message went to nobody.

    ``refused`` maps each refused address to the server's reply, for a front end to
    name them (an EAS or EWS client shows which address was wrong).
    """

    def __init__(self, refused: dict[str, str]) -> None:
        self.refused = dict(refused)
        super().__init__("recipients refused: " + "; ".join(f"<{r}> {why}" for r, why in refused.items()))


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}"


def _translate(exc: Exception, where: str) -> BackendError:
    """One protocol-neutral error for whatever aiosmtplib or the socket raised."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return AuthenticationFailed(f"submission server refused the login: {_reply(exc)}")
    # Connect errors come first: a refused greeting is a response error as well.
    if isinstance(exc, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError,
                        aiosmtplib.SMTPServerDisconnected, OSError)):
        return BackendUnavailable(f"submission server unavailable during {where}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        if code == 552:
            return QuotaExceeded(f"submission server refused the message size: {_reply(exc)}")
        if code in (530, 534, 535, 538):
            return AuthenticationFailed(f"submission server wants other authentication: {_reply(exc)}")
        if isinstance(exc, aiosmtplib.SMTPSenderRefused) and code in (550, 553, 554):
            return PermissionDenied(f"submission server refused sender <{exc.sender}>: {_reply(exc)}")
        if 400 <= code < 500:
            return BackendUnavailable(f"submission server deferred {where}: {_reply(exc)}")
        return InvalidData(f"submission server refused {where}: {_reply(exc)}")
    if isinstance(exc, UnicodeError):
        return InvalidData(f"address or message not plain ASCII and the server does not take UTF-8: {exc}")
    if where == "login":
        # Typically no AUTH offered, e.g. a server that only allows it after TLS while tls_mode is "none".
        return AuthenticationFailed(f"cannot log in to the submission server: {exc}")
    return BackendUnavailable(f"submission server failed during {where}: {exc}")


class SmtpSubmission:
    """The ``Submission`` contract over one SMTP connection per message, logged in as the user."""

    def __init__(self, host: str, port: int, tls_mode: str, credentials: Credentials,
                 ca_file: str | None = None, timeout: float = 30.0) -> None:
        if tls_mode not in TLS_MODES:
            raise ValueError(f"tls_mode must be one of {', '.join(TLS_MODES)}, not {tls_mode!r}")
        self.host, self.port, self.tls_mode = host, port, tls_mode
        self.credentials = credentials
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=ca_file) if tls_mode != "none" else None
        # aiosmtplib would otherwise resolve our FQDN on every connect, which can stall on poor DNS.
        self._helo = socket.gethostname() or "localhost"

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout,
                               use_tls=self.tls_mode == "implicit",
                               start_tls=self.tls_mode == "starttls",
                               tls_context=self._context, local_hostname=self._helo)

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Submit ``message``; raises without sending to anyone unless every recipient is accepted."""
        if not recipients:
            raise InvalidData("a message needs at least one recipient")
        client = self._client()
        where = "connect"
        try:
            await client.connect()
            where = "login"
            await client.login(self.credentials.username, self.credentials.password)
            where = "envelope"
            await self._envelope(client, sender, recipients, len(message))
            where = "message transfer"
            await client.data(message)
        except BackendError:
            raise
        except (aiosmtplib.SMTPException, OSError, UnicodeError) as exc:
            raise _translate(exc, where) from None
        finally:
            await self._leave(client)

    async def _envelope(self, client: aiosmtplib.SMTP, sender: str, recipients: Sequence[str],
                        size: int) -> None:
        # Declaring SIZE lets the server refuse an oversized message before we upload it.
        options = [f"SIZE={size}"] if client.supports_extension("size") else []
        await client.mail(sender, options=options)
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                (deferred if exc.code < 500 else refused)[rcpt] = _reply(exc)
        if not (refused or deferred):
            return
        # All or nothing: a client told "failed" resends, and the accepted recipients would get it twice.
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            pass
        if refused:
            raise RecipientsRefused(refused)
        raise BackendUnavailable("submission server deferred recipients: "
                                 + "; ".join(f"<{r}> {why}" for r, why in deferred.items()))

    @staticmethod
    async def _leave(client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        try:
            await client.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            client.close()


__all__ = ["SmtpSubmission", "RecipientsRefused", "TLS_MODES"]
