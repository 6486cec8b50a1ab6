"""ContactStore over CardDAV (RFC 6352), spoken through the caldav library's DAVClient."""

from __future__ import annotations

import re
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

import vobject

from adapters.errors import InvalidData
from adapters.interfaces import CalendarInfo, ContactObject, Credentials

from . import objects
from .common import CARDDAV, DAV, DavConnection, check, check_put, multistatus

# caldav 3.x discovers CardDAV services (RFC 6764) but has no address-book
# objects, so this module builds the few WebDAV requests CardDAV needs itself
# and sends them with the DAVClient's propfind/mkcol/put/report/delete.

DEFAULT_BOOK = "Contacts"
DEFAULT_BOOK_ID = "contacts"  # fixed, so that racing creators make one book, not two
_VCARD_HEADERS = {"Content-Type": "text/vcard; charset=utf-8"}
_UID_LINE = re.compile(r"^UID[;:]", re.IGNORECASE)

_MKCOL = """<?xml version="1.0" encoding="utf-8"?>
<d:mkcol xmlns:d="DAV:" xmlns:cr="urn:ietf:params:xml:ns:carddav"><d:set><d:prop>
<d:resourcetype><d:collection/><cr:addressbook/></d:resourcetype>
<d:displayname>{name}</d:displayname></d:prop></d:set></d:mkcol>"""

_QUERY = """<?xml version="1.0" encoding="utf-8"?>
<cr:addressbook-query xmlns:d="DAV:" xmlns:cr="urn:ietf:params:xml:ns:carddav">
<d:prop><d:getetag/><cr:address-data/></d:prop></cr:addressbook-query>"""


def _unfolded(text: str) -> list[str]:
    """The content lines of a vCard with RFC 6350 3.2 folding undone."""
    return re.sub(r"\r?\n[ \t]", "", text).splitlines()


def prepare_vcard(vcard: str, uid: str | None) -> tuple[str, str]:
    """Check a vCard and give it a UID; returns (text to store, UID).

    The text is kept as given unless a UID has to be written into it.
    """
    if uid is not None and re.search(r"[\r\n]", uid):
        raise InvalidData("a UID cannot span lines")
    try:
        card = vobject.readOne(vcard)
    except Exception as exc:  # vobject raises ParseError, ValueError or worse on junk
        raise InvalidData(f"not a vCard: {exc.__class__.__name__}") from None
    if card.name != "VCARD":
        raise InvalidData(f"expected VCARD, got {card.name}")
    lines = _unfolded(vcard)
    if sum(1 for line in lines if line.upper() == "BEGIN:VCARD") != 1:
        raise InvalidData("a contact resource holds exactly one vCard")
    present = [line.split(":", 1)[1] for line in lines if _UID_LINE.match(line) and ":" in line]
    wanted = uid or (present[0] if present else str(uuid.uuid4()))
    if present == [wanted]:
        return vcard, wanted
    kept = [line for line in lines if not _UID_LINE.match(line)]
    end = max(i for i, line in enumerate(kept) if line.upper() == "END:VCARD")
    kept.insert(end, f"UID:{wanted}")
    return "\r\n".join(kept) + "\r\n", wanted


class CardDavContactStore:
    """A user's address books on a CardDAV server (Radicale or any other)."""

    def __init__(self, base_url: str, credentials: Credentials, ca_file: str | Path | None = None,
                 timeout: float = 30.0) -> None:
        self._conn = DavConnection(base_url, credentials, ca_file, timeout)
        self._home: str | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        await self._conn.start(stack)

    def _book_home(self) -> str:
        if self._home is None:
            self._home = self._conn.home_set(f"{CARDDAV}addressbook-home-set", "find address-book home")
        return self._home

    def _list(self) -> list[CalendarInfo]:
        found = self._conn.collections(self._book_home(), f"{CARDDAV}addressbook", "list address books")
        return [CalendarInfo(url=url, name=name, ctag=tag) for url, name, tag, _ in found]

    def _create(self, name: str, book_id: str | None = None) -> CalendarInfo:
        url = self._book_home().rstrip("/") + "/" + quote(book_id or str(uuid.uuid4()), safe="") + "/"
        response = self._conn.client.mkcol(url, _MKCOL.format(name=escape(name)))
        check(response, "create address book", ok=(200, 201))
        return CalendarInfo(url=url, name=name)

    def _ensure_default(self) -> list[CalendarInfo]:
        books = self._list()
        if books:
            return books
        try:
            self._create(DEFAULT_BOOK, DEFAULT_BOOK_ID)
        except Exception:
            # Refused because someone else made the default between our listing
            # and our MKCOL (405 or 409, depending on the server)? Then it is listed now.
            books = self._list()
            if books:
                return books
            raise
        return self._list()

    async def list_address_books(self) -> list[CalendarInfo]:
        """The user's address books; a principal with none gets a default "Contacts" first."""
        return await self._conn.run("list address books", self._ensure_default)

    async def ensure_default_address_book(self) -> CalendarInfo:
        """The user's first address book, creating "Contacts" when there is none."""
        return (await self.list_address_books())[0]

    async def create_address_book(self, name: str) -> CalendarInfo:
        return await self._conn.run("create address book", self._create, name)

    def _put(self, book_url: str, vcard: str, uid: str | None) -> ContactObject:
        body, uid = prepare_vcard(vcard, uid)
        href = self._conn.absolute(book_url.rstrip("/") + "/") + quote(uid, safe="") + ".vcf"
        response = check_put(self._conn.client.put(href, body, _VCARD_HEADERS), "store contact")
        return ContactObject(href=href, etag=response.headers.get("ETag"), vcard=body)

    async def put_contact(self, book_url: str, vcard: str, uid: str | None = None) -> ContactObject:
        """Store (create or replace) one vCard; ``uid`` overrides the card's UID."""
        return await self._conn.run("store contact", self._put, book_url, vcard, uid)

    def _contacts(self, book_url: str) -> list[ContactObject]:
        url = self._conn.absolute(book_url.rstrip("/") + "/")
        response = check(self._conn.client.report(url, _QUERY, depth=1), "list contacts", ok=(207,))
        found = []
        for href, props in multistatus(response).items():
            data = props.get(f"{CARDDAV}address-data")
            if data is None or not data.text:
                continue  # the collection itself, or something that is not a vCard
            etag = props.get(f"{DAV}getetag")
            found.append(ContactObject(href=self._conn.absolute(href),
                                       etag=etag.text if etag is not None else None,
                                       vcard=data.text))
        return found

    async def contacts(self, book_url: str) -> list[ContactObject]:
        """Every vCard in an address book, with href and ETag."""
        return await self._conn.run("list contacts", self._contacts, book_url)

    def _delete(self, href: str) -> None:
        check(self._conn.client.delete(self._conn.absolute(href)), "delete contact", ok=(200, 204))

    async def delete(self, href: str) -> None:
        await self._conn.run("delete contact", self._delete, href)

    # --- keeping a device in step (see objects.py) ---

    async def object_etags(self, book_url: str) -> dict[str, str]:
        """href -> ETag of every contact in the address book."""
        return await self._conn.run("list contacts", objects.etags, self._conn, book_url, "list contacts")

    async def fetch_objects(self, book_url: str, hrefs: list[str]) -> list[ContactObject]:
        """The contacts at ``hrefs`` that still exist, in that order."""
        found = await self._conn.run("read contacts", objects.multiget, self._conn, book_url, hrefs, "addressbook",
                                     "read contacts")
        return [ContactObject(href=h, etag=etag, vcard=text) for h, (etag, text) in found.items()]

    async def replace_object(self, href: str, vcard: str, etag: str | None) -> str:
        """Store ``vcard`` at ``href`` if the contact there still has ``etag`` (None: if there is none yet);
        the new ETag. Conflict when it changed meanwhile, NotFound when it is gone."""
        vcard, _ = prepare_vcard(vcard, None)
        return await self._conn.run("store contact", objects.replace, self._conn, href, vcard,
                                    _VCARD_HEADERS["Content-Type"], etag, "store contact")

    async def delete_object(self, href: str, etag: str | None = None) -> None:
        """Delete the contact at ``href`` (if it still has ``etag``, when given); one already gone is fine."""
        await self._conn.run("delete contact", objects.delete, self._conn, href, etag, "delete contact")

    async def rename_collection(self, url: str, name: str) -> None:
        """Set an address book's display name."""
        await self._conn.run("rename address book", objects.rename, self._conn, url, name, "rename address book")
