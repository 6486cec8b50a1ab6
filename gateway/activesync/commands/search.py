"""Search (MS-ASCMD 2.2.1.16) in the Mailbox store: IMAP SEARCH over one folder or all mail folders.

The query is And(Class Email, [CollectionId], FreeText, [GreaterThan/LessThan DateReceived]); results are
newest first, in the Range the device asks for (default 0-99), each with its LongId (the item's
ServerId, which ItemOperations and SmartReply accept) and its properties as a Sync would send them.
The GAL store is the directory's, answered by ``gal.py``.
"""

from __future__ import annotations

import datetime as dt
import re

from adapters.errors import BackendError
from adapters.interfaces import MessageSummary

from ..email_item import ItemError, parse_options
from ..items import application_data, fetch_one, server_id
from ..wbxml import Element
from . import EasCall, EasError, instant
from ...services.mailsync import internal_date

NS = "Search"
# Search status (MS-ASCMD 2.2.3.177.14).
OK, INVALID, SERVER_ERROR, TOO_COMPLEX, END_OF_RANGE = 1, 2, 3, 8, 12
MAX_RANGE = 100
_RANGE = re.compile(r"^(\d{1,6})-(\d{1,6})$")


def _store_status(status: int) -> Element:
    return Element(NS, "Search", [Element(NS, "Status", text=str(OK)), Element(NS, "Response", [
        Element(NS, "Store", [Element(NS, "Status", text=str(status))])])])


def _query(query: Element) -> tuple[str | None, str, dt.datetime | None, dt.datetime | None]:
    """(CollectionId or None, free text, since, before) from And(...) or a lone FreeText."""
    terms = query.children[0].children if query.children and query.children[0].name == "And" else query.children
    collection, text, since, before = None, "", None, None
    for term in terms:
        if term.ns == "AirSync" and term.name == "Class":
            if (term.text or "") != "Email":
                raise EasError(INVALID, "only the Email class is searched in the mailbox")
        elif term.ns == "AirSync" and term.name == "CollectionId":
            collection = term.text or ""
        elif term.name == "FreeText":
            text = (term.text or "").strip()
        elif term.name in ("GreaterThan", "LessThan"):
            value = instant(term.text_of("Value"), INVALID)
            if term.name == "GreaterThan":
                since = value
            else:
                before = value
        elif term.name == "ConversationId":
            raise EasError(TOO_COMPLEX, "conversation searches are not offered")
        else:
            raise EasError(TOO_COMPLEX, f"query term {term.name} is not offered")
    if len(text) > 256:
        raise EasError(TOO_COMPLEX, "search text too long")
    return collection, text, since, before


def _between(when: dt.datetime | None, since: dt.datetime | None, before: dt.datetime | None) -> bool:
    if when is None:
        return since is None and before is None
    return (since is None or when > since) and (before is None or when < before)


async def mailbox_hits(call: EasCall, store, collection_id: str | None, text: str, since: dt.datetime | None,
                       before: dt.datetime | None) -> list[tuple[MessageSummary, str, str]]:
    """(summary, folder ServerId, IMAP folder) of every match, newest first; also used by Find."""
    folders = call.services.folders
    if collection_id is not None:
        folder = await folders.name_of(call.user.address, collection_id)
        if folder is None:
            raise EasError(INVALID, "unknown folder")
        targets = [(collection_id, folder)]
    else:  # no folder named: every mail folder, as Exchange does
        listed = await store.list_folders()
        ids = await folders.assign(call.user.address, [f.name for f in listed], mail_only=True)
        targets = [(ids[f.name], f.name) for f in listed]
    hits = []
    try:
        for target_id, folder in targets:
            # IMAP dates are whole days: ask for the days around the instants, then cut exactly.
            found = await store.search(folder, text, since.date() if since else None,
                                       before.date() + dt.timedelta(days=1) if before else None)
            hits += [(m, target_id, folder) for m in found if _between(internal_date(m), since, before)]
    except BackendError:
        raise EasError(SERVER_ERROR, "the mail store failed the search") from None
    hits.sort(key=lambda h: (internal_date(h[0]) or dt.datetime.min.replace(tzinfo=dt.timezone.utc), h[0].uid),
              reverse=True)
    return hits


async def run(call: EasCall) -> Element:
    body = call.body
    store_element = body.find("Store") if body is not None and body.ns == NS and body.name == "Search" else None
    if store_element is None:
        raise EasError(INVALID, "expected a Search request with a Store")
    name = (store_element.text_of("Name") or "").lower()
    if name == "gal":
        from .gal import search_gal_store
        return Element(NS, "Search", [Element(NS, "Status", text=str(OK)), Element(NS, "Response", [
            await search_gal_store(call, store_element)])])
    if name != "mailbox":
        return _store_status(INVALID)  # document libraries are not offered
    query = store_element.find("Query")
    if query is None:
        return _store_status(INVALID)
    try:
        collection_id, text, since, before = _query(query)
    except EasError as exc:
        return _store_status(exc.status)
    options = store_element.find("Options")
    low, high = 0, MAX_RANGE - 1
    if options is not None and (wanted := options.text_of("Range")):
        match = _RANGE.match(wanted)
        if not match or int(match.group(1)) > int(match.group(2)):
            return _store_status(INVALID)
        low, high = int(match.group(1)), min(int(match.group(2)), int(match.group(1)) + MAX_RANGE - 1)
    try:
        # Search's own Options also hold Range, DeepTraversal...: hand on only the body preferences.
        body_options = parse_options(Element("AirSync", "Options", [
            c for c in (options.children if options is not None else []) if c.ns in ("AirSync", "AirSyncBase")]),
            call.version)
    except ItemError:
        return _store_status(INVALID)
    store = await call.mailbox()
    try:
        hits = await mailbox_hits(call, store, collection_id, text, since, before)
    except EasError as exc:
        return _store_status(exc.status)
    total = len(hits)
    page = hits[low:high + 1]
    results = []
    for summary, target_id, folder in page:
        fetched = await fetch_one(store, folder, summary.uid)
        if fetched is None:
            continue
        item_id = server_id(target_id, summary.uid)
        try:
            data = application_data(*fetched, target_id, call.version, body_options)
        except ItemError:
            continue
        results.append(Element(NS, "Result", [
            Element("AirSync", "Class", text="Email"), Element(NS, "LongId", text=item_id),
            Element("AirSync", "CollectionId", text=target_id), Element(NS, "Properties", data.children)]))
    store_children = [Element(NS, "Status", text=str(OK)), *results]
    if total:
        store_children += [Element(NS, "Range", text=f"{low}-{low + max(len(page), 1) - 1}"),
                           Element(NS, "Total", text=str(total))]
    else:
        store_children.append(Element(NS, "Total", text="0"))
    return Element(NS, "Search", [Element(NS, "Status", text=str(OK)), Element(NS, "Response", [
        Element(NS, "Store", store_children)])])
