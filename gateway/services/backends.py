"""The configured back ends: TLS contexts, adapter factories and reachability probes."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.imap import ImapEndpoint, ImapMailStore
from adapters.interfaces import Credentials

from .. import tls
from ..config import BackendConfig, Config

if TYPE_CHECKING:
    from adapters.dav import CalDavCalendarStore, CardDavContactStore
    from adapters.ews import EwsFreeBusy
    from adapters.sieve import SieveOof
    from adapters.smtp import SmtpSubmission


@dataclass(frozen=True)
class Probe:
    """One reachability check of one back end."""

    name: str
    type: str
    ok: bool
    detail: str
    seconds: float


class Backends:
    """Builds adapters for named back ends and checks that they answer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._ews: dict[tuple[str, Credentials], EwsFreeBusy] = {}

    def get(self, name: str) -> BackendConfig:
        return self.config.backends[name]

    def ssl_context(self, name: str) -> ssl.SSLContext:
        if name not in self._contexts:
            b = self.get(name)
            ca = b.ca_file or self.config.tls.ca_file
            self._contexts[name] = tls.client_context(self.config.path(ca) if ca else None, b.verify)
        return self._contexts[name]

    def imap_endpoint(self, name: str) -> ImapEndpoint:
        b = self.get(name)
        ctx = self.ssl_context(name) if b.tls_mode != "none" else None
        return ImapEndpoint(b.host, b.port, b.tls_mode, ctx, b.timeout)

    def mail_store(self, name: str, credentials: Credentials, client_ip: str | None = None) -> ImapMailStore:
        return ImapMailStore(self.imap_endpoint(name), credentials, client_ip)

    def _dav_args(self, name: str) -> tuple[str, str | None, float]:
        b = self.get(name)
        if not b.url:
            raise ValueError(f"back end {name} has no url")
        ca = b.ca_file or self.config.tls.ca_file
        return b.url, str(self.config.path(ca)) if ca else None, b.timeout

    def calendar_store(self, name: str, credentials: Credentials) -> CalDavCalendarStore:
        """The user's calendars on a CalDAV back end (not started)."""
        from adapters.dav import CalDavCalendarStore
        url, ca, timeout = self._dav_args(name)
        return CalDavCalendarStore(url, credentials, ca, timeout)

    def contact_store(self, name: str, credentials: Credentials) -> CardDavContactStore:
        """The user's address books on a CardDAV back end (not started)."""
        from adapters.dav import CardDavContactStore
        url, ca, timeout = self._dav_args(name)
        return CardDavContactStore(url, credentials, ca, timeout)

    def submission(self, name: str, credentials: Credentials) -> SmtpSubmission:
        """Sending as the user through an SMTP submission back end (RFC 6409), logged in with their password."""
        from adapters.smtp import SmtpSubmission
        b = self.get(name)
        ca = b.ca_file or self.config.tls.ca_file
        return SmtpSubmission(b.host, b.port, b.tls_mode, credentials, str(self.config.path(ca)) if ca else None,
                              b.timeout)

    def oof(self, name: str, credentials: Credentials, addresses: Sequence[str] = (),
            client_ip: str | None = None) -> SieveOof | None:
        """The user's out-of-office store (a ManageSieve vacation rule), or None when the back end has none."""
        b = self.get(name)
        if not b.managesieve:
            return None
        from adapters.sieve import SieveEndpoint, SieveOof
        host, _, port = b.managesieve.rpartition(":")
        tls_mode = "none" if b.tls_mode == "none" else "starttls"
        endpoint = SieveEndpoint(host.strip("[]"), int(port), tls_mode,
                                 self.ssl_context(name) if tls_mode != "none" else None, b.timeout)
        return SieveOof(endpoint, credentials, addresses, client_ip)

    def ews_freebusy(self, name: str, credentials: Credentials) -> EwsFreeBusy:
        """The free/busy client of an EWS back end for one login, kept so its sessions and version are reused."""
        key = (name, credentials)
        if key not in self._ews:
            # Imported here: exchangelib takes a quarter of a second to load, and most sites have no Exchange.
            from adapters.ews import EwsFreeBusy
            b = self.get(name)
            ca = b.ca_file or self.config.tls.ca_file
            # A blocked thread cannot be cancelled: the HTTP timeout must not outlast availability.timeout.
            timeout = min(b.timeout, self.config.availability.timeout)
            self._ews[key] = EwsFreeBusy(b.url, credentials, self.config.path(ca) if ca else None, timeout,
                                         verify=b.verify)
        return self._ews[key]

    async def probe(self, name: str) -> Probe:
        """Connect to the back end (TLS where configured) and read its greeting or an HTTP status."""
        b = self.get(name)
        t0 = time.perf_counter()
        try:
            detail = await asyncio.wait_for(self._probe(name, b), b.timeout)
            ok = True
        except (OSError, asyncio.TimeoutError, ssl.SSLError, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        return Probe(name, b.type, ok, detail[:200], time.perf_counter() - t0)

    async def _probe(self, name: str, b: BackendConfig) -> str:
        implicit = b.tls_mode == "implicit"
        ctx = self.ssl_context(name) if implicit else None
        reader, writer = await asyncio.open_connection(b.host, b.port, ssl=ctx,
                                                       server_hostname=b.host if ctx else None)
        try:
            if b.type in ("imap", "smtp"):
                banner = (await reader.readline()).decode("utf-8", "replace").strip()
                good = banner.startswith("* OK") if b.type == "imap" else banner.startswith("220")
                if not good:
                    raise ValueError(f"unexpected greeting {banner[:60]!r}")
                return banner[:80]
            path = b.url.split("://", 1)[1].partition("/")[2]
            writer.write(f"OPTIONS /{path} HTTP/1.1\r\nHost: {b.host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = (await reader.readline()).decode("latin-1").strip()
            parts = status.split()
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) >= 500:
                raise ValueError(f"HTTP answered {status[:60]!r}")
            return status
        finally:
            writer.close()

    async def probe_all(self) -> list[Probe]:
        return list(await asyncio.gather(*(self.probe(n) for n in self.config.backends)))
