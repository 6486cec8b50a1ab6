"""What the CalDAV and CardDAV stores share: one caldav DAVClient per store, error mapping, multistatus parsing."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

from caldav.davclient import DAVClient
from caldav.lib import error as dav_error
from caldav.lib.http_sync import requests as http  # niquests, or requests where niquests is missing
from lxml import etree

from adapters.errors import (AuthenticationFailed, BackendError, BackendUnavailable, Conflict,
                             InvalidData, NotFound, PermissionDenied, QuotaExceeded)
from adapters.interfaces import Credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CARDDAV = "{urn:ietf:params:xml:ns:carddav}"
CS = "{http://calendarserver.org/ns/}"

_STATUS_ERRORS: dict[int, type[BackendError]] = {
    400: InvalidData, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 410: NotFound, 412: Conflict, 413: InvalidData, 415: InvalidData,
    422: InvalidData, 507: QuotaExceeded,
}


def error_for_status(status: int, what: str) -> BackendError:
    """The adapter error for an HTTP status the back end answered ``what`` with."""
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status](f"{what}: back end answered {status}")
    if status == 429 or status >= 500:
        return BackendUnavailable(f"{what}: back end answered {status}")
    return BackendError(f"{what}: unexpected status {status}")


def translate(exc: BaseException, what: str) -> BackendError:
    """Turn whatever caldav or its HTTP library raised into one of ours."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, dav_error.UidConflictError):
        # Checked before AuthorizationError: Cyrus says 403 for a UID conflict.
        return Conflict(f"{what}: UID already used by another object")
    if isinstance(exc, dav_error.RateLimitError):
        return BackendUnavailable(f"{what}: back end is rate limiting",
                                  retry_after=int(exc.retry_after_seconds or 30))
    if isinstance(exc, dav_error.AuthorizationError):
        # caldav folds 401 and 403 together; the status tells credentials from permission.
        if exc.status == 403:
            return PermissionDenied(f"{what}: not allowed")
        return AuthenticationFailed(f"{what}: credentials refused")
    if isinstance(exc, dav_error.NotFoundError) and not exc.status:
        return NotFound(f"{what}: not found")
    if isinstance(exc, dav_error.DAVError):
        if exc.status:
            return error_for_status(exc.status, what)
        return BackendError(f"{what}: {exc.__class__.__name__}")
    if isinstance(exc, http.exceptions.SSLError):
        return BackendUnavailable(f"{what}: TLS handshake or certificate check failed")
    if isinstance(exc, http.exceptions.Timeout):
        return BackendUnavailable(f"{what}: timed out")
    if isinstance(exc, (http.exceptions.RequestException, OSError)):
        return BackendUnavailable(f"{what}: cannot reach back end")
    return BackendError(f"{what}: unexpected {exc.__class__.__name__}")


def check(response: Any, what: str, ok: tuple[int, ...] = (200, 201, 204, 207)) -> Any:
    """Return ``response`` if its status is one of ``ok``, else raise the matching error."""
    if response.status not in ok:
        raise error_for_status(response.status, what)
    return response


_UID_CONFLICTS = dav_error.UID_CONFLICT_PRECONDITIONS | {f"{CARDDAV}no-uid-conflict"}


def check_put(response: Any, what: str) -> Any:
    """check() for a PUT of one object, telling a UID clash from a missing collection.

    Both come back as 409; only the clash carries a no-uid-conflict precondition
    (RFC 4791 5.3.2.1, RFC 6352 6.3.2.1), the other is RFC 4918's missing parent.
    """
    if response.status == 409:
        if _UID_CONFLICTS.isdisjoint(dav_error.parse_preconditions(response.raw)):
            raise NotFound(f"{what}: the collection does not exist")
        raise Conflict(f"{what}: another object in the collection has this UID")
    return check(response, what, ok=(200, 201, 204))


def multistatus(response: Any) -> dict[str, dict[str, Any]]:
    """href -> {property tag: element} of the properties a 207 answer found (status 200)."""
    found: dict[str, dict[str, Any]] = {}
    tree = response.tree
    if tree is None:
        return found
    for resp in tree.iter(f"{DAV}response"):
        href = resp.findtext(f"{DAV}href")
        if not href:
            continue
        props = found.setdefault(href.strip(), {})
        for propstat in resp.iter(f"{DAV}propstat"):
            if " 200 " not in (propstat.findtext(f"{DAV}status") or "") + " ":
                continue
            for prop in propstat.iter(f"{DAV}prop"):
                for el in prop:
                    props[el.tag] = el
    return found


# No entities, no network: a back end's answer is data. huge_tree lifts libxml2's cap on one text
# node, which a big calendar object (attachments) can pass; without entities nothing can blow up.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def parse_xml(body: bytes, what: str) -> Any:
    """The root element of a back end's XML answer; InvalidData when it is not XML."""
    try:
        return etree.fromstring(body, parser=_PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise InvalidData(f"{what}: back end answered malformed XML: {exc}") from None


def href_of(prop: Any) -> str | None:
    """The first DAV:href inside a property such as calendar-home-set."""
    if prop is None:
        return None
    text = prop.findtext(f"{DAV}href")
    return text.strip() if text else None


class DavConnection:
    """A caldav DAVClient for one user, and the way every store calls it."""

    def __init__(self, base_url: str, credentials: Credentials, ca_file: str | Path | None,
                 timeout: float = 30.0, executor: Executor | None = None, pool_size: int = 0) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.credentials = credentials
        self.ca_file = ca_file
        self.timeout = timeout
        # Blocking calls run on ``executor`` (None: asyncio's default one); a client shared by
        # that many threads keeps up to ``pool_size`` connections open (0: the HTTP library's 10).
        self.executor = executor
        self.pool_size = pool_size
        self._client: DAVClient | None = None
        self._principal_url: str | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        try:
            # auth_type="basic" sends credentials on the first request instead of
            # waiting for a 401; only over TLS, which base_url is meant to be.
            self._client = DAVClient(
                url=self.base_url, username=self.credentials.username,
                password=self.credentials.password, auth_type="basic", timeout=self.timeout,
                ssl_verify_cert=str(self.ca_file) if self.ca_file else True,
                enable_rfc6764=False)
            if self.pool_size > 10:
                adapter = type(self._client.session.get_adapter(self.base_url))
                self._client.session.mount("https://", adapter(pool_connections=10, pool_maxsize=self.pool_size))
                self._client.session.mount("http://", adapter(pool_connections=10, pool_maxsize=self.pool_size))
        except Exception as exc:
            raise translate(exc, "connect") from exc
        stack.callback(self._close)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def client(self) -> DAVClient:
        if self._client is None:
            raise BackendError("DAV store used before start() or after close")
        return self._client

    def absolute(self, href: str) -> str:
        """A server href (path or URL) as a full URL on this back end."""
        return urljoin(self.base_url, str(href))

    async def run(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking caldav call in a thread; only adapter errors come out."""
        try:
            if self.executor is None:
                return await asyncio.to_thread(fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(fn, *args, **kwargs))
        except BackendError:
            raise
        except Exception as exc:
            err = translate(exc, what)
            log.debug("%s for %s failed: %s", what, self.credentials.username, err)
            raise err from exc

    def send(self, method: str, url: str, body: str, headers: dict[str, str], what: str,
             ok: tuple[int, ...]) -> Any:
        """One request with the client's session, login and TLS settings, bypassing caldav's response
        handling (which parses, and pretty-prints for its debug log, every answer); blocking.

        Returns the HTTP library's response when its status is in ``ok``, else raises the matching error.
        """
        client = self.client
        combined = dict(client.headers)
        combined.update(headers)
        response = client.session.request(method, self.absolute(url), data=body.encode("utf-8"),
                                          headers=combined, auth=client.auth, timeout=client.timeout,
                                          verify=client.ssl_verify_cert, cert=client.ssl_cert)
        if response.status_code not in ok:
            raise error_for_status(response.status_code, what)
        return response

    def principal_url(self) -> str:
        """The user's principal URL (blocking; cached after the first lookup)."""
        if self._principal_url is None:
            self._principal_url = str(self.client.principal().url)
        return self._principal_url

    def home_set(self, prop: str, what: str) -> str:
        """A home-set property of the principal (blocking), e.g. the address-book home."""
        namespace, name = prop[1:].split("}")
        body = (f'<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" '
                f'xmlns:h="{namespace}"><d:prop><h:{name}/></d:prop></d:propfind>')
        principal = self.principal_url()
        response = check(self.client.propfind(principal, body, depth=0), what)
        for props in multistatus(response).values():
            home = href_of(props.get(prop))
            if home:
                return self.absolute(home)
        # RFC 6352 and 4791 let a server leave the home out; the principal is the usual fallback.
        return principal

    def collections(self, home: str, resource_type: str,
                    what: str) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
        """(url, display name, ctag, component types) of every collection of ``resource_type`` under ``home``
        (blocking). The component types are a calendar's supported-calendar-component-set; () when the
        server states none (RFC 4791 5.2.3: then any type may be stored)."""
        body = ('<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" '
                'xmlns:cs="http://calendarserver.org/ns/" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop>'
                '<d:resourcetype/><d:displayname/><cs:getctag/><d:sync-token/>'
                '<c:supported-calendar-component-set/></d:prop></d:propfind>')
        response = check(self.client.propfind(home, body, depth=1), what)
        found = []
        for href, props in multistatus(response).items():
            rtype = props.get(f"{DAV}resourcetype")
            if rtype is None or rtype.find(resource_type) is None:
                continue
            url = self.absolute(href)
            name = (props[f"{DAV}displayname"].text or "") if f"{DAV}displayname" in props else ""
            tag_el = props.get(f"{CS}getctag")
            if tag_el is None:
                tag_el = props.get(f"{DAV}sync-token")
            tag = tag_el.text if tag_el is not None and tag_el.text else None
            comps = props.get(f"{CALDAV}supported-calendar-component-set")
            kinds = tuple(c.get("name", "").upper() for c in comps.iter(f"{CALDAV}comp")) if comps is not None else ()
            found.append((url, name or url.rstrip("/").rsplit("/", 1)[-1], tag, kinds))
        return found
