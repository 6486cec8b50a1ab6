"""Autodiscover v2 JSON (autodiscover.json): the URL of one protocol for an address, as Microsoft clients ask."""

from __future__ import annotations

from collections.abc import Callable

from .published import Published

__all__ = ["JsonError", "PROTOCOLS", "lookup"]

# Protocol names as Microsoft spells them; clients vary the letter case.
PROTOCOLS: dict[str, tuple[str, Callable[[Published], str]]] = {
    "activesync": ("ActiveSync", lambda v: v.eas_url),
    "autodiscoverv1": ("AutodiscoverV1", lambda v: v.pox_url),
    "ews": ("EWS", lambda v: v.ews_url),
}


class JsonError(Exception):
    """Answered with ``{"ErrorCode": code, "ErrorMessage": message}`` and ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, str]:
        return {"ErrorCode": self.code, "ErrorMessage": self.message}


def _domain_of(email: str | None) -> str:
    email = (email or "").strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or len(email) > 320 or any(c.isspace() for c in email):
        raise JsonError(400, "InvalidRequest", "Email must be an e-mail address such as user@example.com.")
    return domain.rstrip(".").lower()


def lookup(email: str | None, protocol: str | None, view: Published, served: Callable[[str], bool]) -> dict[str, str]:
    """``{"Protocol": ..., "Url": ...}`` for ``email``; raises JsonError.

    No credentials are asked for (clients call this first, anonymously), so the
    answer depends on the domain only: it says nothing about whether a mailbox exists.
    """
    entry = PROTOCOLS.get((protocol or "").strip().lower())
    if entry is None:
        names = ", ".join(name for name, _ in PROTOCOLS.values())
        raise JsonError(400, "InvalidProtocol", f"The given protocol value '{(protocol or '')[:40]}' is invalid. "
                                                f"Supported values are '{names}'.")
    domain = _domain_of(email)
    if not served(domain):
        raise JsonError(404, "InvalidDomain", f"The domain '{domain[:253]}' is not served here.")
    name, url = entry
    return {"Protocol": name, "Url": url(view)}
