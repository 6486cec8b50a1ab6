"""What keeping a device in step with a DAV collection needs: each object's ETag, several objects by href
in one request, and writes and deletes that only succeed on the version the caller saw (If-Match).

Both the CalDAV and the CardDAV store use these; all are blocking and run through DavConnection.run.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from adapters.errors import Conflict, NotFound

from .common import CALDAV, CARDDAV, DAV, DavConnection, check_put, parse_xml

_ETAGS = ('<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:">'
          '<d:prop><d:getetag/><d:resourcetype/></d:prop></d:propfind>')
_TYPED = ('<?xml version="1.0" encoding="utf-8"?><c:calendar-query xmlns:d="DAV:" '
          'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><c:filter>'
          '<c:comp-filter name="VCALENDAR"><c:comp-filter name="{component}">{inner}</c:comp-filter>'
          '</c:comp-filter></c:filter></c:calendar-query>')
_BY_UID = ('<?xml version="1.0" encoding="utf-8"?><c:calendar-query xmlns:d="DAV:" '
           'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/></d:prop><c:filter>'
           '<c:comp-filter name="VCALENDAR"><c:comp-filter name="{component}"><c:prop-filter name="UID">'
           '<c:text-match collation="i;octet">{uid}</c:text-match></c:prop-filter></c:comp-filter>'
           '</c:comp-filter></c:filter></c:calendar-query>')
_MULTIGET = ('<?xml version="1.0" encoding="utf-8"?><x:{report} xmlns:d="DAV:" xmlns:x="{ns}">'
             '<d:prop><d:getetag/><x:{data}/></d:prop>{hrefs}</x:{report}>')
_KINDS = {
    "calendar": ("calendar-multiget", CALDAV, "calendar-data"),
    "addressbook": ("addressbook-multiget", CARDDAV, "address-data"),
}
#: Hrefs per multiget request: servers cap REPORT bodies, and a device takes at most a window anyway.
MULTIGET_BATCH = 100


_HEADERS = {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"}


def _objects(root, data_tag: str | None = None):
    """(href, ETag, data text, whether it is a collection) of each response in a 207 answer, from its
    propstats with status 200; data is the ``data_tag`` property's text (calendar-data...), when asked."""
    for resp in root.iter(f"{DAV}response"):
        href = (resp.findtext(f"{DAV}href") or "").strip()
        etag = text = None
        collection = False
        for propstat in resp.iter(f"{DAV}propstat"):
            if " 200 " not in (propstat.findtext(f"{DAV}status") or "") + " ":
                continue
            etag = propstat.findtext(f"{DAV}prop/{DAV}getetag") or etag
            if data_tag:
                text = propstat.findtext(f"{DAV}prop/{data_tag}") or text
            collection |= propstat.find(f"{DAV}prop/{DAV}resourcetype/{DAV}collection") is not None
        if href:
            yield href, (etag or "").strip(), text, collection


def _same_path(a: str, b: str) -> bool:
    return unquote(urlsplit(a).path).rstrip("/") == unquote(urlsplit(b).path).rstrip("/")


def etags(conn: DavConnection, collection_url: str, what: str, component: str | None = None,
          since: dt.datetime | None = None, open_only: bool = False) -> dict[str, str]:
    """href (absolute URL) -> ETag of every object directly in the collection (one PROPFIND, Depth 1), or
    with ``component`` of every calendar object holding that type (VTODO...: one calendar-query REPORT),
    only those with an occurrence ending after ``since`` when given, only tasks not completed with
    ``open_only``."""
    url = conn.absolute(collection_url.rstrip("/") + "/")
    if component:
        inner = ""
        if since is not None:
            stamp = since.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            inner += f'<c:time-range start="{stamp}"/>'  # open-ended: every later occurrence counts
        if open_only:
            inner += '<c:prop-filter name="COMPLETED"><c:is-not-defined/></c:prop-filter>'
        body = _TYPED.format(component=escape(component), inner=inner)
        response = conn.send("REPORT", url, body, _HEADERS, what, ok=(207,))
    else:
        response = conn.send("PROPFIND", url, _ETAGS, _HEADERS, what, ok=(207,))
    root = parse_xml(response.content or b"", what)
    return {conn.absolute(href): etag for href, etag, _, collection in _objects(root)
            if etag and not collection and not _same_path(conn.absolute(href), url)}


def multiget(conn: DavConnection, collection_url: str, hrefs: list[str], kind: str,
             what: str) -> dict[str, tuple[str, str]]:
    """href -> (ETag, text) of the objects asked for that still exist (RFC 4791 7.9, RFC 6352 8.7)."""
    report, ns, data_name = _KINDS[kind]
    url = conn.absolute(collection_url.rstrip("/") + "/")
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(hrefs), MULTIGET_BATCH):
        batch = hrefs[start:start + MULTIGET_BATCH]
        body = _MULTIGET.format(report=report, ns=ns[1:-1], data=data_name,
                                hrefs="".join(f"<d:href>{escape(urlsplit(conn.absolute(h)).path)}</d:href>"
                                              for h in batch))
        response = conn.send("REPORT", url, body, _HEADERS, what, ok=(207,))
        for href, etag, text, _ in _objects(parse_xml(response.content or b"", what), f"{ns}{data_name}"):
            if text:
                found[conn.absolute(href)] = (etag, text)
    # Servers answer with their own spelling of each href; give them back under the caller's.
    by_path = {unquote(urlsplit(h).path): v for h, v in found.items()}
    return {h: by_path[unquote(urlsplit(conn.absolute(h)).path)] for h in hrefs
            if unquote(urlsplit(conn.absolute(h)).path) in by_path}


def replace(conn: DavConnection, href: str, text: str, content_type: str, etag: str | None, what: str) -> str:
    """Write ``text`` over the object at ``href`` only if it still has ``etag`` (None: only if it does not
    exist yet); returns the new ETag ("" when the server gives none). Conflict when someone changed it
    first, NotFound when it is gone."""
    headers = {"Content-Type": content_type}
    if etag is None:
        headers["If-None-Match"] = "*"
    else:
        headers["If-Match"] = etag
    response = conn.client.put(conn.absolute(href), text, headers)
    if response.status == 412 and etag is not None:
        # Gone, or changed: tell them apart, since a gone object cannot be written back.
        if conn.absolute(href) not in etags(conn, href.rsplit("/", 1)[0] + "/", what):
            raise NotFound(f"{what}: the object is gone")
    check_put(response, what)
    return (response.headers.get("ETag") or "").strip()


def delete(conn: DavConnection, href: str, etag: str | None, what: str) -> None:
    """Delete the object at ``href`` (only if it still has ``etag``, when given); gone already is fine."""
    headers = {"If-Match": etag} if etag else {}
    response = conn.send("DELETE", href, "", headers, what, ok=(200, 204, 404, 410, 412))
    if response.status_code == 412:
        raise Conflict(f"{what}: the object was changed meanwhile")


def by_uid(conn: DavConnection, collection_url: str, uid: str, component: str,
           what: str) -> tuple[str, str, str] | None:
    """(href, ETag, text) of the calendar object whose ``component`` has this UID, None when there is none."""
    url = conn.absolute(collection_url.rstrip("/") + "/")
    body = _BY_UID.format(component=escape(component), uid=escape(uid))
    response = conn.send("REPORT", url, body, _HEADERS, what, ok=(207,))
    for href, etag, text, _ in _objects(parse_xml(response.content or b"", what), f"{CALDAV}calendar-data"):
        # text-match finds substrings (RFC 4791 9.7.5): keep only the object with this very UID.
        if text and re.search(rf"^UID(;[^:]*)?:{re.escape(uid)}\r?$", re.sub(r"\r?\n[ \t]", "", text),
                              re.MULTILINE):
            return conn.absolute(href), etag, text
    return None


def rename(conn: DavConnection, url: str, name: str, what: str) -> None:
    """Set a collection's DAV:displayname (one PROPPATCH)."""
    body = ('<?xml version="1.0" encoding="utf-8"?><d:propertyupdate xmlns:d="DAV:"><d:set><d:prop>'
            f'<d:displayname>{escape(name)}</d:displayname></d:prop></d:set></d:propertyupdate>')
    response = conn.send("PROPPATCH", url, body, {"Content-Type": _HEADERS["Content-Type"]}, what,
                         ok=(200, 207))
    root = parse_xml(response.content or b"", what) if response.status_code == 207 else None
    if root is not None:
        for status in root.iter(f"{DAV}status"):
            if " 200 " not in (status.text or "") + " ":
                raise NotFound(f"{what}: the server did not set the name ({(status.text or '').strip()})")
