"""The SOAP autodiscover setting names Exchange 2010 SP3 knows, and the value each has here (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lxml import etree

from ..ews.soap import REQUEST_VERSIONS, SERVER_VERSION
from .published import Mailbox, MailService, Published

__all__ = ["Value", "StringValue", "WebClientUrls", "ProtocolConnections", "AlternateMailboxes", "DomainString",
           "KNOWN_USER_SETTINGS", "DOMAIN_SETTINGS", "cas_version", "supported_schemas", "user_values",
           "domain_values"]

Sub = Callable[..., etree._Element]


class Value(Protocol):
    """A setting's value: its xsi:type and how its content is written after the Name element."""

    xsi_type: str

    def write(self, element: etree._Element, sub: Sub) -> None: ...


@dataclass(frozen=True)
class StringValue:
    text: str
    xsi_type: str = "StringSetting"

    def write(self, element: etree._Element, sub: Sub) -> None:
        sub(element, "Value", self.text)


@dataclass(frozen=True)
class DomainString(StringValue):
    xsi_type: str = "DomainStringSetting"


@dataclass(frozen=True)
class WebClientUrls:
    urls: tuple[tuple[str, str], ...]  # (authentication methods, URL)
    xsi_type: str = "WebClientUrlCollectionSetting"

    def write(self, element: etree._Element, sub: Sub) -> None:
        urls = sub(element, "WebClientUrls")
        for methods, url in self.urls:
            entry = sub(urls, "WebClientUrl")
            sub(entry, "AuthenticationMethods", methods)
            sub(entry, "Url", url)


@dataclass(frozen=True)
class ProtocolConnections:
    services: tuple[MailService, ...]
    xsi_type: str = "ProtocolConnectionCollectionSetting"

    def write(self, element: etree._Element, sub: Sub) -> None:
        connections = sub(element, "ProtocolConnections")
        for s in self.services:
            entry = sub(connections, "ProtocolConnection")
            sub(entry, "Hostname", s.host)
            sub(entry, "Port", str(s.port))
            sub(entry, "EncryptionMethod", {"implicit": "SSL", "starttls": "TLS"}.get(s.tls, "None"))


@dataclass(frozen=True)
class AlternateMailboxes:
    xsi_type: str = "AlternateMailboxCollectionSetting"

    def write(self, element: etree._Element, sub: Sub) -> None:
        sub(element, "AlternateMailboxes")  # archives and shared mailboxes do not exist here: an empty list


def cas_version() -> str:
    """The CAS build as Exchange writes it, e.g. 14.03.0123.004."""
    v = SERVER_VERSION
    return f"{v.major:02d}.{v.minor:02d}.{v.major_build:04d}.{v.minor_build:03d}"


def supported_schemas() -> str:
    """The EWS schema versions our EWS front end accepts, up to the one it answers with (clients pick the newest)."""
    upto = REQUEST_VERSIONS.index(SERVER_VERSION.version)
    return ", ".join(REQUEST_VERSIONS[:upto + 1])


def _s(text: str) -> StringValue:
    return StringValue(text)


def _connections(kind: str) -> Callable[[Mailbox, Published], Value | None]:
    def value(_: Mailbox, view: Published) -> Value | None:
        service = view.service(kind)
        return ProtocolConnections((service,)) if service else None
    return value


_ANSWERED: dict[str, Callable[[Mailbox, Published], Value | None]] = {
    "UserDisplayName": lambda m, v: _s(m.display_name),
    "UserDN": lambda m, v: _s(m.legacy_dn),
    "UserDeploymentId": lambda m, v: _s(v.deployment_id),
    "AutoDiscoverSMTPAddress": lambda m, v: _s(m.address),
    "InternalMailboxServer": lambda m, v: _s(v.host),
    "ExternalMailboxServer": lambda m, v: _s(v.host),
    "ExternalMailboxServerRequiresSSL": lambda m, v: _s("True"),
    "ExternalMailboxServerAuthenticationMethods": lambda m, v: _s("Basic"),
    "InternalEwsUrl": lambda m, v: _s(v.ews_url),
    "ExternalEwsUrl": lambda m, v: _s(v.ews_url),
    "ExternalEwsVersion": lambda m, v: _s(cas_version()),
    "InternalEcpUrl": lambda m, v: _s(v.ecp_url),
    "ExternalEcpUrl": lambda m, v: _s(v.ecp_url),
    "InternalWebClientUrls": lambda m, v: WebClientUrls((("Basic", v.owa_url),)),
    "ExternalWebClientUrls": lambda m, v: WebClientUrls((("Basic", v.owa_url),)),
    "CrossOrganizationSharingEnabled": lambda m, v: _s("False"),
    "AlternateMailboxes": lambda m, v: AlternateMailboxes(),
    "CasVersion": lambda m, v: _s(cas_version()),
    "EwsSupportedSchemas": lambda m, v: _s(supported_schemas()),
    "InternalImap4Connections": _connections("imap"),
    "ExternalImap4Connections": _connections("imap"),
    "InternalPop3Connections": _connections("pop3"),
    "ExternalPop3Connections": _connections("pop3"),
    "InternalSmtpConnections": _connections("smtp"),
    "ExternalSmtpConnections": _connections("smtp"),
    # Not an Exchange setting name (Exchange has none for ActiveSync); answered when asked, as issue 4 names it.
    "ActiveSyncUrl": lambda m, v: _s(v.eas_url),
}

# Known to Exchange 2010 SP3 but without a value here: answered with SettingIsNotAvailable, not InvalidSetting.
_UNAVAILABLE = (
    "InternalRpcClientServer", "InternalMailboxServerDN", "InternalOABUrl", "ExternalOABUrl", "InternalUMUrl",
    "ExternalUMUrl", "MailboxDN", "PublicFolderServer", "ActiveDirectoryServer", "ExchangeRpcUrl",
    "ShowGalAsDefaultView", "InternalServerExclusiveConnect", "ExternalServerExclusiveConnect",
    "MobileMailboxPolicy", "InteropExternalEwsUrl", "InteropExternalEwsVersion",
    *(f"{side}Ecp{what}Url" for side in ("Internal", "External")
      for what in ("Voicemail", "EmailSubscriptions", "TextMessaging", "DeliveryReport", "RetentionPolicyTags",
                   "Publishing")),
    *(f"Ecp{what}UrlFragment" for what in ("Voicemail", "EmailSubscriptions", "TextMessaging", "DeliveryReport",
                                           "RetentionPolicyTags", "Publishing")),
)

KNOWN_USER_SETTINGS = frozenset(_ANSWERED) | frozenset(_UNAVAILABLE)
DOMAIN_SETTINGS = ("ExternalEwsUrl", "ExternalEwsVersion")


def user_values(names: tuple[str, ...], mailbox: Mailbox, view: Published) -> tuple[tuple[str, Value | None], ...]:
    """Each requested name with its value, or None when it is unknown or not available for this user."""
    return tuple((n, _ANSWERED[n](mailbox, view) if n in _ANSWERED else None) for n in names)


def domain_values(view: Published) -> dict[str, Value]:
    return {"ExternalEwsUrl": DomainString(view.ews_url), "ExternalEwsVersion": DomainString(cas_version())}
