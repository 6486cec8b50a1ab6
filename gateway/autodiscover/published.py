"""What the gateway tells clients about itself: public URLs, mail servers, and whose settings a caller may read."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from adapters.interfaces import UserRecord

from ..config import Config

__all__ = ["MailService", "Published", "Mailbox", "public_host", "public_base_url", "mail_services", "published",
           "mailbox_of", "Ownership", "ownership", "EWS_PATH", "EAS_PATH", "OWA_PATH", "ECP_PATH", "POX_PATH",
           "SOAP_PATH"]

EWS_PATH = "/EWS/Exchange.asmx"
EAS_PATH = "/Microsoft-Server-ActiveSync"
OWA_PATH = "/owa/"
ECP_PATH = "/ecp/"
POX_PATH = "/autodiscover/autodiscover.xml"
SOAP_PATH = "/autodiscover/autodiscover.svc"
# Exchange writes this administrative group into every legacy DN; clients only compare DNs, never parse them.
_ADMIN_GROUP = "Exchange Administrative Group (FYDIBOHF23SPDLT)"


@dataclass(frozen=True)
class MailService:
    """One mail server a client may use: imap, pop3 or smtp, where, and how TLS starts (implicit, starttls, none)."""

    kind: str
    host: str
    port: int
    tls: str


@dataclass(frozen=True)
class Published:
    """Everything autodiscover answers name, for one user (SMTP may differ per user)."""

    host: str
    base_url: str
    ews_url: str
    eas_url: str
    owa_url: str
    ecp_url: str
    pox_url: str
    services: tuple[MailService, ...]
    culture: str
    deployment_id: str

    def service(self, kind: str) -> MailService | None:
        return next((s for s in self.services if s.kind == kind), None)


@dataclass(frozen=True)
class Mailbox:
    """The user an answer is about, as autodiscover describes them."""

    address: str
    display_name: str
    login: str
    legacy_dn: str


def public_host(config: Config) -> str:
    return config.autodiscover.public_host or urlsplit(config.https_url).hostname or config.server.listen


def public_base_url(config: Config) -> str:
    """https://host[:port][/path] as clients should use it; the port is left out when it is 443."""
    parts = urlsplit(config.https_url)
    host = public_host(config)
    netloc = f"[{host}]" if ":" in host else host
    if parts.port not in (None, 443):
        netloc += f":{parts.port}"
    return f"https://{netloc}{parts.path.rstrip('/')}"


def _own(config: Config, kind: str, host: str, port: int, tls: str) -> MailService | None:
    if not port:  # the gateway's own listener for that kind of TLS
        s = config.server
        port = {("imap", True): s.imaps_port, ("imap", False): s.imap_port,
                ("pop3", True): s.pop3s_port, ("pop3", False): s.pop3_port}[(kind, tls == "implicit")]
    return MailService(kind, host or public_host(config), port, tls) if port else None


def mail_services(config: Config, smtp_backend: str = "") -> tuple[MailService, ...]:
    """The IMAP, POP3 and SMTP servers to publish, in that order; ``smtp_backend`` names the user's smtp back end."""
    ad = config.autodiscover
    out: list[MailService | None] = []
    if "imap" in ad.protocols:
        out.append(_own(config, "imap", ad.imap_host, ad.imap_port, ad.imap_tls))
    if "pop3" in ad.protocols:
        out.append(_own(config, "pop3", ad.pop3_host, ad.pop3_port, ad.pop3_tls))
    if "smtp" in ad.protocols:
        backend = config.backends.get(smtp_backend)
        host = ad.smtp_host or (backend.host if backend else "")
        port = ad.smtp_port or (backend.port if backend else 0)
        tls = ad.smtp_tls if ad.smtp_tls != "auto" else (backend.tls_mode if backend else "starttls")
        out.append(MailService("smtp", host, port, tls) if host and port else None)
    return tuple(s for s in out if s is not None)


def published(config: Config, smtp_backend: str = "") -> Published:
    base = public_base_url(config)
    ews = base + EWS_PATH
    # One stable identifier per organisation, as Exchange's DeploymentId is; derived so no state is needed.
    deployment = str(uuid.uuid5(uuid.NAMESPACE_URL, base))
    return Published(public_host(config), base, ews, base + EAS_PATH, base + OWA_PATH, base + ECP_PATH,
                     base + POX_PATH, mail_services(config, smtp_backend), config.autodiscover.culture, deployment)


def mailbox_of(user: UserRecord) -> Mailbox:
    # The hash keeps the DN unique per address while using only the characters legacy DNs allow.
    tag = hashlib.sha256(user.address.encode()).hexdigest()[:8]
    local = "".join(c for c in user.address.partition("@")[0] if c.isascii() and c.isalnum()) or "user"
    dn = f"/o={user.domain}/ou={_ADMIN_GROUP}/cn=Recipients/cn={local}{tag}"
    return Mailbox(user.address, user.display_name, user.login, dn)


@dataclass(frozen=True)
class Ownership:
    """How to answer a request about ``address`` from ``caller``: settings, redirect (to ``target``) or unknown."""

    kind: str
    target: str = ""


def ownership(config: Config, directory, caller: UserRecord, address: str) -> Ownership:
    """Whether ``address`` is the caller's own; anyone else's address looks exactly like one nobody has.

    An address on a domain alias is the caller's but answered with a redirect
    to the primary address, so clients store the address mail really goes to.
    """
    address = address.strip()
    found = directory.find(address) if address.count("@") == 1 else None
    if found is None or found.address != caller.address:
        return Ownership("unknown")
    domain = address.rpartition("@")[2].lower()
    if domain not in {d.lower() for d in config.domains} and directory.is_local_domain(domain):
        return Ownership("redirect", caller.address)
    return Ownership("settings", caller.address)
