"""People from an LDAP directory for the global address list: ldap3 in a worker thread, TLS, a service bind.

Each search opens its own connection (LDAPS, or StartTLS on ldap://), binds
with the configured DN, runs one subtree search and unbinds: GAL searches are
rare and cached above this layer, and a fresh connection never inherits a
half-dead socket. The user's text only ever reaches the server escaped
(RFC 4515) inside the configured filter template.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ldap3 import NONE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from adapters.errors import (AuthenticationFailed, BackendError, BackendUnavailable, InvalidData, NotFound,
                             PermissionDenied)

log = logging.getLogger(__name__)

#: LDAP attribute per GAL field, for inetOrgPerson (RFC 2798) entries.
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "display_name": "cn", "first_name": "givenName", "last_name": "sn", "email": "mail",
    "phone": "telephoneNumber", "mobile_phone": "mobile", "home_phone": "homePhone",
    "office": "physicalDeliveryOfficeName", "title": "title", "company": "o", "alias": "uid",
    "picture": "jpegPhoto", "certificates": "userCertificate;binary",
}
#: Fields whose values are kept as bytes; every other value is UTF-8 text (RFC 4517 Directory String).
BINARY_FIELDS = frozenset({"picture", "certificates"})

# Result codes (RFC 4511 4.1.9) a search may end with and still carry usable entries.
_PARTIAL = {3, 4, 11}  # timeLimitExceeded, sizeLimitExceeded, adminLimitExceeded
_RESULT_ERRORS: dict[int, type[BackendError]] = {
    32: NotFound, 34: InvalidData, 48: AuthenticationFailed, 49: AuthenticationFailed, 50: PermissionDenied,
    51: BackendUnavailable, 52: BackendUnavailable, 53: BackendUnavailable, 87: InvalidData,
}

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")

#: What one directory entry gives: GAL field name -> values (str, or bytes for BINARY_FIELDS).
Person = dict[str, list]


@dataclass(frozen=True)
class LdapSettings:
    """Where the directory is and how to read it; ``repr`` never shows the password."""

    host: str
    port: int
    tls_mode: str  # implicit, starttls or none
    base: str
    bind_dn: str = ""
    password: str = field(default="", repr=False)
    ca_file: str | None = None
    filter_template: str = "(|(cn={text}*)(mail={text}*))"
    attributes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))
    size_limit: int = 500
    timeout: float = 5.0

    @classmethod
    def from_url(cls, url: str, tls: str = "auto", **kw) -> LdapSettings:
        """Settings for ``ldaps://host[:port]`` or ``ldap://host[:port]``; ``tls`` auto follows the scheme."""
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"not an LDAP URL: {url!r}")
        mode = tls if tls != "auto" else ("implicit" if parts.scheme == "ldaps" else "starttls")
        port = parts.port or (636 if mode == "implicit" else 389)
        return cls(parts.hostname, port, mode, **kw)


def search_filter(template: str, text: str) -> str:
    """The filter for ``text``: every ``{text}`` in the template replaced by the text escaped per RFC 4515,
    so ``*``, parentheses, backslash and NUL are matched literally and cannot change the filter."""
    return template.replace("{text}", escape_filter_chars(text))


def _base_name(attribute: str) -> str:
    return attribute.partition(";")[0].lower()


class LdapDirectory:
    """Searches one LDAP directory; safe to share, every call uses its own connection."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._fields = {f: a for f, a in {**DEFAULT_ATTRIBUTES, **settings.attributes}.items() if a}

    def __repr__(self) -> str:
        return f"LdapDirectory({self.settings.host}:{self.settings.port})"

    async def search(self, text: str, limit: int) -> list[Person]:
        """Entries the filter template finds for ``text`` (at most ``limit`` and the size limit); none for a
        text without a printable character."""
        # Control characters never occur in names, and slapd reads an escaped NUL as the end of the
        # value: "(cn=\00*)" would match every entry.
        text = _CONTROLS.sub("", text)
        if not text.strip():
            return []
        return await asyncio.to_thread(self._search, text, max(1, min(limit, self.settings.size_limit)))

    def _tls(self) -> Tls:
        s = self.settings
        # ldap3 builds the context with ssl.create_default_context (TLS 1.2 at least) and checks the
        # server's name itself after the handshake.
        return Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=s.ca_file or None, sni=s.host)

    def _search(self, text: str, limit: int) -> list[Person]:
        s = self.settings
        server = Server(s.host, s.port, use_ssl=s.tls_mode == "implicit",
                        tls=self._tls() if s.tls_mode != "none" else None, get_info=NONE,
                        connect_timeout=s.timeout)
        conn = Connection(server, user=s.bind_dn or None, password=s.password or None, client_strategy=SYNC,
                          raise_exceptions=False, read_only=True,
                          receive_timeout=max(1, math.ceil(s.timeout)))  # ldap3 packs it as a whole number
        try:
            conn.open()
            if s.tls_mode == "starttls" and not conn.start_tls():
                raise BackendUnavailable("LDAP: StartTLS refused")
            if s.bind_dn and not conn.bind():
                raise _result_error(conn.result, "bind")
            conn.search(s.base, search_filter(s.filter_template, text), SUBTREE,
                        attributes=sorted(set(self._fields.values())), size_limit=limit,
                        time_limit=max(1, math.ceil(s.timeout)))
            code = (conn.result or {}).get("result", 0)
            if code and code not in _PARTIAL:
                raise _result_error(conn.result, "search")
            return [self._person(e["raw_attributes"]) for e in conn.response or ()
                    if e.get("type") == "searchResEntry"][:limit]
        except BackendError:
            raise
        except ldap_errors.LDAPSocketReceiveError:
            raise BackendUnavailable("LDAP: no answer in time") from None
        except (ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPSessionTerminatedByServerError,
                ldap_errors.LDAPCommunicationError, ldap_errors.LDAPStartTLSError, ssl.SSLError, OSError) as exc:
            # Only the class name: ldap3's own messages may quote the connection, whose repr has the password.
            raise BackendUnavailable(f"LDAP: cannot reach {s.host}:{s.port} ({exc.__class__.__name__})") from None
        except ldap_errors.LDAPInvalidFilterError:
            raise InvalidData("LDAP: the search filter is not valid") from None
        except ldap_errors.LDAPException as exc:
            raise BackendError(f"LDAP: {exc.__class__.__name__}") from None
        finally:
            try:
                conn.unbind()
            except Exception:  # already closed or never opened: nothing to release
                pass

    def _person(self, raw: Mapping[str, list[bytes]]) -> Person:
        by_name: dict[str, list[bytes]] = {}
        for name, values in raw.items():
            by_name.setdefault(_base_name(name), []).extend(values)
        person: Person = {}
        for gal_field, attribute in self._fields.items():
            values = by_name.get(_base_name(attribute), [])
            if gal_field in BINARY_FIELDS:
                person[gal_field] = [bytes(v) for v in values if v]
            else:
                person[gal_field] = [t for v in values if (t := bytes(v).decode("utf-8", "replace").strip())]
        return person


def _result_error(result: Mapping | None, what: str) -> BackendError:
    result = result or {}
    code = result.get("result", -1)
    description = str(result.get("description", "error"))[:60]
    return _RESULT_ERRORS.get(code, BackendError)(f"LDAP {what}: {description} ({code})")


__all__ = ["BINARY_FIELDS", "DEFAULT_ATTRIBUTES", "LdapDirectory", "LdapSettings", "Person", "search_filter"]
