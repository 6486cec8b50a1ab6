"""DNS records to publish for a domain (SRV per RFC 6186/8314, autodiscover and autoconfig names) in zone-file form."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import Config
from .autoconfig import offered_services, served_domain
from .published import MailService, published

__all__ = ["Record", "SRV_LABELS", "records_for", "render_zone", "zone_for"]

TTL = 3600
# (label, protocol, how TLS starts, priority). RFC 6186 section 3.4 compares priorities across
# _imap and _pop3, so IMAP gets the smaller numbers; RFC 8314 section 5.1 asks that implicit TLS
# be preferred over STARTTLS the same way.
SRV_LABELS = (
    ("_imaps._tcp", "imap", "implicit", 0),
    ("_imap._tcp", "imap", "starttls", 10),
    ("_pop3s._tcp", "pop3", "implicit", 20),
    ("_pop3._tcp", "pop3", "starttls", 30),
    ("_submissions._tcp", "smtp", "implicit", 0),
    ("_submission._tcp", "smtp", "starttls", 10),
)


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str
    comment: str = ""

    def line(self, width: int = 32) -> str:
        text = f"{self.name:<{width}} {TTL} IN {self.type:<5} {self.value}"
        return f"{text}  ; {self.comment}" if self.comment else text


def _fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


def _address_record(name: str, ip: str) -> Record:
    kind = "AAAA" if ipaddress.ip_address(ip).version == 6 else "A"
    return Record(_fqdn(name), kind, ip, "the configuration names only this address")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def records_for(domain: str, services: Sequence[MailService], https_host: str, https_port: int) -> list[Record]:
    """Every record a zone for ``domain`` needs so clients find the gateway from an address alone.

    A service not offered gets the RFC 2782 "not available here" form (``0 0 0 .``)
    so clients stop looking for it.  SRV targets must be host names: where the
    configuration names only an address, ``mail.DOMAIN`` (``mail2.DOMAIN`` for a
    second address) stands in and an A or AAAA record for it is added.
    """
    domain = domain.rstrip(".").lower()
    extra: dict[str, Record] = {}

    def target(host: str) -> str:
        if not _is_ip(host):
            return _fqdn(host)
        if host not in extra:  # one name per address: mail.D, then mail2.D for a second (say the MTA's)
            stand_in = f"mail{len(extra) + 1 if extra else ''}.{domain}"
            extra[host] = _address_record(stand_in, host)
        return extra[host].name

    out = [Record(_fqdn(f"_autodiscover._tcp.{domain}"), "SRV", f"0 0 {https_port} {target(https_host)}",
                  "Outlook, exchangelib (MS-OXDISCO)")]
    for label, kind, tls, priority in SRV_LABELS:
        # _imap, _pop3 and _submission cover STARTTLS and plain alike (RFC 6186); the "s" labels implicit TLS.
        found = next((s for s in services if s.kind == kind and (s.tls == "implicit") == (tls == "implicit")),
                     None)
        value = f"{priority} 1 {found.port} {target(found.host)}" if found else "0 0 0 ."
        out.append(Record(_fqdn(f"{label}.{domain}"), "SRV", value, "" if found else "not offered"))
    web_target = target(https_host)
    for name in (f"autodiscover.{domain}", f"autoconfig.{domain}"):
        if _fqdn(name) == web_target:
            continue  # the gateway already has this name; its address record is the operator's own
        out.append(Record(_fqdn(name), "CNAME", web_target))
    return out + list(extra.values())


def render_zone(domain: str, records: Sequence[Record], https_port: int, source: str = "") -> str:
    """Zone-file text: a header, then one record per line."""
    head = [f"; DNS records for {domain.rstrip('.').lower()}" + (f", from {source}" if source else "")]
    if https_port != 443:
        # Thunderbird and Outlook try autoconfig.D and autodiscover.D on the standard ports only;
        # the SRV record is the one way to name another port.
        head.append(f"; clients are told HTTPS port {https_port}: autodiscover.* and autoconfig.* by name "
                    "work only through a balancer or proxy listening on 443")
    width = max(len(r.name) for r in records)
    return "\n".join(head + [r.line(width) for r in records]) + "\n"


def zone_for(config: Config, domain: str, source: str = "") -> str:
    """The records for a domain the configuration serves; raise LookupError for any other."""
    domain = domain.rstrip(".")
    served = served_domain(config, domain)
    if served is None:
        known = ", ".join(sorted(config.domains)) or "none"
        raise LookupError(f"{domain} is not a domain of this configuration (domains: {known})")
    _, dc = served
    pub = published(config, dc.smtp)
    port = urlsplit(pub.base_url).port or 443
    records = records_for(domain, offered_services(config, dc.smtp), pub.host, port)
    return render_zone(domain, records, port, source)
