"""The global address list for phones: Search in the GAL store (MS-ASCMD 2.2.1.16, gal: properties) and
ResolveRecipients (2.2.1.15, with MergedFreeBusy from the Availability service).

People come from the gateway's directory. The directory holds no S/MIME
certificates or pictures yet, so a request for them is answered with the
"none available" statuses rather than with made-up data.
"""

from __future__ import annotations

import datetime as dt
import re

from adapters.interfaces import UserRecord

from ...services.availability import AccessLevel, AvailabilityError
from ...services.freebusy import merged_free_busy
from ..wbxml import Element
from . import EasCall, EasError, instant

NS = "ResolveRecipients"
# ResolveRecipients statuses (MS-ASCMD 2.2.3.177.12 and its Availability / Certificates children).
OK, PROTOCOL_ERROR, SERVER_ERROR = 1, 5, 6
RESOLVED, AMBIGUOUS, AMBIGUOUS_PARTIAL, UNRESOLVED = 1, 2, 3, 4
FREEBUSY_OK, FREEBUSY_UNAVAILABLE, FREEBUSY_DENIED = 1, 162, 163
NO_CERTIFICATE = 7
MAX_TO = 100
_RANGE = re.compile(r"^(\d{1,6})-(\d{1,6})$")


def _split_name(user: UserRecord) -> tuple[str, str]:
    parts = (user.display_name or "").split()
    return (parts[0], " ".join(parts[1:])) if len(parts) > 1 else ("", user.display_name or "")


def gal_properties(user: UserRecord) -> list[Element]:
    first, last = _split_name(user)
    out = [Element("GAL", "DisplayName", text=user.display_name or user.address),
           Element("GAL", "Alias", text=user.login.partition("@")[0] or user.address.partition("@")[0])]
    if first:
        out.append(Element("GAL", "FirstName", text=first))
    if last:
        out.append(Element("GAL", "LastName", text=last))
    out.append(Element("GAL", "EmailAddress", text=user.address))
    return out


def search_gal(call: EasCall, store: Element) -> Element:
    """The Store element of a Search response for the GAL."""
    query = (store.text_of("Query", "Search") or "").strip()
    options = store.find("Options", "Search")
    low, high = 0, 99
    if options is not None and (wanted := options.text_of("Range", "Search")):
        match = _RANGE.match(wanted)
        if not match or int(match.group(1)) > int(match.group(2)):
            return Element("Search", "Store", [Element("Search", "Status", text="2")])
        low, high = int(match.group(1)), min(int(match.group(2)), int(match.group(1)) + 99)
    if not query or len(query) > 256:
        return Element("Search", "Store", [Element("Search", "Status", text="2")])
    people = call.ctx.directory.search(query, limit=1000)
    page = people[low:high + 1]
    children = [Element("Search", "Status", text="1")]
    children += [Element("Search", "Result", [Element("Search", "Properties", gal_properties(p))]) for p in page]
    if people:
        children.append(Element("Search", "Range", text=f"{low}-{low + max(len(page), 1) - 1}"))
    children.append(Element("Search", "Total", text=str(len(people))))
    return Element("Search", "Store", children)


async def resolve_recipients(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "ResolveRecipients":
        raise EasError(PROTOCOL_ERROR, "expected a ResolveRecipients request")
    names = [t.text or "" for t in body.findall("To")]
    if not names or len(names) > MAX_TO:
        raise EasError(PROTOCOL_ERROR, "between 1 and 100 To elements")
    options = body.find("Options")
    retrieval = options.text_of("CertificateRetrieval", default="1") if options is not None else "1"
    max_ambiguous = 19
    if options is not None and (text := options.text_of("MaxAmbiguousRecipients")):
        if not text.isdigit():
            raise EasError(PROTOCOL_ERROR, "bad MaxAmbiguousRecipients")
        max_ambiguous = min(int(text), 9999)
    availability = options.find("Availability") if options is not None else None
    start = end = None
    if availability is not None:
        start = instant(availability.text_of("StartTime"), PROTOCOL_ERROR)
        end = instant(availability.text_of("EndTime"), PROTOCOL_ERROR)
        if start is None or end is None or end <= start or end - start > dt.timedelta(days=42):
            raise EasError(PROTOCOL_ERROR, "bad availability window")
    directory = call.ctx.directory
    responses = []
    for name in names:
        exact = directory.find(name.strip())
        matches = [exact] if exact is not None else directory.search(name, limit=1000)
        status = RESOLVED if len(matches) == 1 else UNRESOLVED if not matches else \
            AMBIGUOUS if len(matches) <= max_ambiguous else AMBIGUOUS_PARTIAL
        shown = matches[:max_ambiguous] if status != RESOLVED else matches
        recipients = []
        for person in shown:
            children = [Element(NS, "Type", text="1"), Element(NS, "DisplayName", text=person.display_name or
                                                                person.address),
                        Element(NS, "EmailAddress", text=person.address)]
            if start is not None and end is not None:
                children.append(await _availability(call, person, start, end))
            if retrieval in ("2", "3"):
                children.append(Element(NS, "Certificates", [Element(NS, "Status", text=str(NO_CERTIFICATE)),
                                                             Element(NS, "CertificateCount", text="0"),
                                                             Element(NS, "RecipientCount", text="0")]))
            recipients.append(Element(NS, "Recipient", children))
        responses.append(Element(NS, "Response", [Element(NS, "To", text=name), Element(NS, "Status", text=str(status)),
                                                  Element(NS, "RecipientCount", text=str(len(recipients))),
                                                  *recipients]))
    return Element(NS, "ResolveRecipients", [Element(NS, "Status", text=str(OK)), *responses])


async def _availability(call: EasCall, person: UserRecord, start: dt.datetime, end: dt.datetime) -> Element:
    try:
        (answer,) = await call.ctx.availability.lookup(call.user, [person.address], start, end,
                                                       credentials=call.creds)
    except ValueError:
        answer = AvailabilityError("invalid", "bad window")
    if isinstance(answer, AvailabilityError):
        return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_UNAVAILABLE))])
    if answer.access is AccessLevel.NONE:
        return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_DENIED))])
    merged = merged_free_busy(answer.events, start, end, 30)
    return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_OK)),
                                        Element(NS, "MergedFreeBusy", text=merged)])
