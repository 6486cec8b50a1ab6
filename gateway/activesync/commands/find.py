"""Find (MS-ASCMD 2.2.1.2, 16.1) in the mailbox or the global address list.

Mailbox: the same IMAP search as Search; each result carries what a phone
shows in a result list (subject, sender, date, recipients, read state, a short
preview, whether there are attachments) rather than the whole item.
GAL: the GAL service's people, each result a Properties of gal: elements (with
gal:Picture when the Options ask for photos).
"""

from __future__ import annotations

import re

from ..email_item import BodyOptions, BodyPreference, ItemError
from ..items import application_data, fetch_one, server_id
from ..wbxml import Element
from . import EasCall, EasError
from .gal import MAX_QUERY, SEARCH_LIMIT, gal_of, gal_properties, parse_range, picture_request
from .search import mailbox_hits

NS = "Find"
# Find status (MS-ASCMD 2.2.3.177.5).
OK, INVALID, FOLDER_NOT_FOUND = 1, 2, 3
_RANGE = re.compile(r"^(\d{1,6})-(\d{1,6})$")
_SHOWN = (("Email", "Subject"), ("Email", "DateReceived"), ("Email", "DisplayTo"), ("Email", "From"),
          ("Email", "Read"), ("Email", "Importance"), ("Email", "Flag"))
_PREVIEW = BodyOptions((BodyPreference(1, truncation_size=255),))


def _answer(status: int, *response: Element) -> Element:
    children = [Element(NS, "Status", text=str(status))]
    if response:
        children.append(Element(NS, "Response", list(response)))
    return Element(NS, "Find", children)


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "Find":
        raise EasError(INVALID, "expected a Find request")
    execute = body.find("ExecuteSearch")
    criterion = execute.find("MailBoxSearchCriterion") if execute is not None else None
    if criterion is None:
        gal = execute.find("GalSearchCriterion") if execute is not None else None
        # The specification spells it GALSearchCriterion; the code page's token decodes as GalSearchCriterion.
        gal = gal if gal is not None or execute is None else execute.find("GALSearchCriterion")
        return await _find_gal(call, gal) if gal is not None else _answer(INVALID)
    query = criterion.find("Query")
    text = (query.text_of("FreeText") or "").strip() if query is not None else ""
    if not text or len(text) > 256:
        return _answer(INVALID)
    if query.text_of("Class", "AirSync") not in (None, "Email"):
        return _answer(INVALID)
    collection_id = query.text_of("CollectionId", "AirSync")
    options = criterion.find("Options")
    low, high = 0, 99
    if options is not None and (wanted := options.text_of("Range")):
        match = _RANGE.match(wanted)
        if not match or int(match.group(1)) > int(match.group(2)):
            return _answer(INVALID)
        low, high = int(match.group(1)), min(int(match.group(2)), int(match.group(1)) + 99)
    store = await call.mailbox()
    try:
        hits = await mailbox_hits(call, store, collection_id, text, None, None)
    except EasError as exc:
        return _answer(FOLDER_NOT_FOUND if exc.status == 2 and collection_id else INVALID)
    results = []
    for summary, folder_id, folder in hits[low:high + 1]:
        fetched = await fetch_one(store, folder, summary.uid)
        if fetched is None:
            continue
        try:
            data = application_data(*fetched, folder_id, "16.1", _PREVIEW)
        except ItemError:
            continue
        properties = [c for c in data.children if (c.ns, c.name) in _SHOWN]
        body_text = next((b.text_of("Data") for b in data.findall("Body", "AirSyncBase")), None) or ""
        properties.append(Element(NS, "Preview", text=" ".join(body_text.split())[:255]))
        has_attachments = data.find("Attachments", "AirSyncBase") is not None
        properties.append(Element(NS, "HasAttachments", text="1" if has_attachments else "0"))
        results.append(Element(NS, "Result", [
            Element("AirSync", "Class", text="Email"), Element("AirSync", "ServerId", text=server_id(folder_id,
                                                                                                    summary.uid)),
            Element("AirSync", "CollectionId", text=folder_id), Element(NS, "Properties", properties)]))
    response = [Element("ItemOperations", "Store", text="Mailbox"), Element(NS, "Status", text=str(OK)), *results]
    if hits:
        response += [Element(NS, "Range", text=f"{low}-{low + max(len(results), 1) - 1}"),
                     Element(NS, "Total", text=str(len(hits)))]
    else:
        response.append(Element(NS, "Total", text="0"))
    return _answer(OK, *response)


async def _find_gal(call: EasCall, criterion: Element) -> Element:
    query = (criterion.text_of("Query") or "").strip()
    options = criterion.find("Options")
    window = parse_range(options.text_of("Range") if options is not None else None)
    if window is None or not query or len(query) > MAX_QUERY:
        return _answer(INVALID)
    try:
        pictures = picture_request(options, NS)
    except ValueError:
        return _answer(INVALID)
    people = await gal_of(call).search(query, SEARCH_LIMIT)
    low, high = window
    page = people[low:high + 1]
    response = [Element("ItemOperations", "Store", text="GAL"), Element(NS, "Status", text=str(OK))]
    response += [Element(NS, "Result", [Element(NS, "Properties", gal_properties(p, pictures))]) for p in page]
    if page:
        response.append(Element(NS, "Range", text=f"{low}-{low + len(page) - 1}"))
    response.append(Element(NS, "Total", text=str(len(people))))
    return _answer(OK, *response)
