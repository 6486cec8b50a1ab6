"""The global address list for phones: Search in the GAL store (MS-ASCMD 2.2.1.16, gal: properties) and
ResolveRecipients (2.2.1.15, with MergedFreeBusy from the Availability service, S/MIME certificates and
photos).

People come from the GAL service (the directory, plus LDAP and a shared
CardDAV book when configured). Photos are sent as asked (Picture with MaxSize
and MaxPictures, 14.1 and later); certificates are those the GAL holds for a
person (LDAP userCertificate), expired or unreadable ones left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509

from ...services.availability import AccessLevel, AvailabilityError
from ...services.freebusy import merged_free_busy
from ...services.gal import Gal, GalEntry
from ..wbxml import Element
from . import EasCall, EasError, instant

NS = "ResolveRecipients"
# ResolveRecipients statuses (MS-ASCMD 2.2.3.177.12 and its Availability / Certificates children).
OK, PROTOCOL_ERROR, SERVER_ERROR = 1, 5, 6
RESOLVED, AMBIGUOUS, AMBIGUOUS_PARTIAL, UNRESOLVED = 1, 2, 3, 4
FREEBUSY_OK, FREEBUSY_UNAVAILABLE, FREEBUSY_DENIED = 1, 162, 163
CERTIFICATES_OK, NO_CERTIFICATE, CERTIFICATE_LIMIT = 1, 7, 8
# Picture statuses (MS-ASCMD 2.2.3.177): sent, none, larger than MaxSize, MaxPictures already sent.
PICTURE_OK, NO_PICTURE, PICTURE_TOO_LARGE, PICTURE_LIMIT = 1, 173, 174, 175
MAX_PICTURE_BYTES = 102400  # the largest MaxSize a client may ask for (MS-ASCMD 2.2.3.105)
MAX_TO = 100
MAX_QUERY = 256
SEARCH_LIMIT = 1000  # people counted for Total; a page shows at most 100 of them
_RANGE = re.compile(r"^(\d{1,6})-(\d{1,6})$")

#: GAL namespace property per entry field, in code page order.
_PROPERTIES = (("DisplayName", "display_name"), ("Phone", "phone"), ("Office", "office"), ("Title", "title"),
               ("Company", "company"), ("Alias", "alias"), ("FirstName", "first_name"), ("LastName", "last_name"),
               ("HomePhone", "home_phone"), ("MobilePhone", "mobile_phone"), ("EmailAddress", "email"))


def gal_of(call: EasCall) -> Gal:
    """The process's GAL, or one over the directory alone where none was built."""
    return call.services.gal or Gal(call.ctx.directory)


@dataclass
class PictureRequest:
    """What a device asked of photos in one request, and how many it has been sent so far."""

    max_size: int = MAX_PICTURE_BYTES
    max_pictures: int | None = None
    sent: int = 0

    def element(self, entry: GalEntry, ns: str) -> Element:
        """``ns``:Picture for one person: Status, and Data (the photo, opaque) when it is sent."""
        if not entry.picture:
            status = NO_PICTURE
        elif len(entry.picture) > self.max_size:
            status = PICTURE_TOO_LARGE
        elif self.max_pictures is not None and self.sent >= self.max_pictures:
            status = PICTURE_LIMIT
        else:
            self.sent += 1
            return Element(ns, "Picture", [Element(ns, "Status", text=str(PICTURE_OK)),
                                           Element(ns, "Data", opaque=entry.picture)])
        return Element(ns, "Picture", [Element(ns, "Status", text=str(status))])


def picture_request(options: Element | None, ns: str) -> PictureRequest | None:
    """The Picture option in ``ns`` (None when absent); ValueError when MaxSize or MaxPictures is no number."""
    picture = options.find("Picture", ns) if options is not None else None
    if picture is None:
        return None
    request = PictureRequest()
    for name in ("MaxSize", "MaxPictures"):
        text = picture.text_of(name, ns)
        if text is None:
            continue
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise ValueError(f"bad {name}")
        if name == "MaxSize":
            request.max_size = min(int(text), MAX_PICTURE_BYTES)
        else:
            request.max_pictures = int(text)
    return request


def gal_properties(entry: GalEntry, pictures: PictureRequest | None = None) -> list[Element]:
    """The gal: properties of one person (only those known), with a gal:Picture when photos were asked for."""
    out = [Element("GAL", tag, text=value) for tag, attr in _PROPERTIES if (value := getattr(entry, attr))]
    if pictures is not None:
        out.append(pictures.element(entry, "GAL"))
    return out


def parse_range(text: str | None) -> tuple[int, int] | None:
    """"low-high" as a window of at most 100 people (0-99 when absent); None when malformed."""
    if text is None:
        return 0, 99
    match = _RANGE.match(text)
    if not match or int(match.group(1)) > int(match.group(2)):
        return None
    low = int(match.group(1))
    return low, min(int(match.group(2)), low + 99)


def _store_status(status: int) -> Element:
    return Element("Search", "Store", [Element("Search", "Status", text=str(status))])


async def search_gal_store(call: EasCall, store: Element) -> Element:
    """The Store element of a Search response for the GAL."""
    query = (store.text_of("Query", "Search") or "").strip()
    options = store.find("Options", "Search")
    window = parse_range(options.text_of("Range", "Search") if options is not None else None)
    if window is None or not query or len(query) > MAX_QUERY:
        return _store_status(2)
    try:
        pictures = picture_request(options, "Search") if call.version_tuple >= (14, 1) else None
    except ValueError:
        return _store_status(2)
    people = await gal_of(call).search(query, SEARCH_LIMIT)
    return _store_of(people, window, pictures)


def _store_of(people: list[GalEntry], window: tuple[int, int], pictures: PictureRequest | None) -> Element:
    low, high = window
    page = people[low:high + 1]
    children = [Element("Search", "Status", text="1")]
    children += [Element("Search", "Result", [Element("Search", "Properties", gal_properties(p, pictures))])
                 for p in page]
    if people:
        children.append(Element("Search", "Range", text=f"{low}-{low + max(len(page), 1) - 1}"))
    children.append(Element("Search", "Total", text=str(len(people))))
    return Element("Search", "Store", children)


def _valid_certificates(certificates: tuple[bytes, ...], now: dt.datetime) -> list[bytes]:
    """The DER certificates that parse and are within their validity period."""
    valid = []
    for der in certificates:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            valid.append(der)
    return valid


class _Certificates:
    """Certificates for the recipients of one request, up to MaxCertificates in all."""

    def __init__(self, retrieval: str, limit: int | None) -> None:
        self.retrieval = retrieval
        self.left = limit
        self.now = dt.datetime.now(dt.timezone.utc)

    def element(self, entry: GalEntry) -> Element:
        found = _valid_certificates(entry.certificates, self.now)
        if not found:
            return Element(NS, "Certificates", [Element(NS, "Status", text=str(NO_CERTIFICATE)),
                                                Element(NS, "CertificateCount", text="0"),
                                                Element(NS, "RecipientCount", text="0")])
        wanted = found if self.retrieval == "2" else found[:1]
        if self.left is not None and len(wanted) > self.left:
            # Not sent; the count says how many were left out.
            return Element(NS, "Certificates", [Element(NS, "Status", text=str(CERTIFICATE_LIMIT)),
                                                Element(NS, "CertificateCount", text=str(len(found))),
                                                Element(NS, "RecipientCount", text="1")])
        if self.left is not None:
            self.left -= len(wanted)
        tag = "Certificate" if self.retrieval == "2" else "MiniCertificate"
        return Element(NS, "Certificates", [
            Element(NS, "Status", text=str(CERTIFICATES_OK)), Element(NS, "CertificateCount", text=str(len(found))),
            Element(NS, "RecipientCount", text="1"),
            *(Element(NS, tag, text=base64.b64encode(der).decode("ascii")) for der in wanted)])


def _count(options: Element | None, name: str, default: int | None) -> int | None:
    text = options.text_of(name) if options is not None else None
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise EasError(PROTOCOL_ERROR, f"bad {name}")
    return min(int(text), 9999)


async def resolve_recipients(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "ResolveRecipients":
        raise EasError(PROTOCOL_ERROR, "expected a ResolveRecipients request")
    names = [t.text or "" for t in body.findall("To")]
    if not names or len(names) > MAX_TO or any(len(n) > MAX_QUERY for n in names):
        raise EasError(PROTOCOL_ERROR, "between 1 and 100 To elements of at most 256 characters")
    options = body.find("Options")
    retrieval = options.text_of("CertificateRetrieval", default="1") if options is not None else "1"
    if retrieval not in ("1", "2", "3"):
        raise EasError(PROTOCOL_ERROR, "bad CertificateRetrieval")
    max_ambiguous = _count(options, "MaxAmbiguousRecipients", 19)
    certificates = _Certificates(retrieval, _count(options, "MaxCertificates", None))
    try:
        pictures = picture_request(options, NS) if call.version_tuple >= (14, 1) else None
    except ValueError:
        raise EasError(PROTOCOL_ERROR, "bad Picture options") from None
    availability = options.find("Availability") if options is not None else None
    start = end = None
    if availability is not None:
        start = instant(availability.text_of("StartTime"), PROTOCOL_ERROR)
        end = instant(availability.text_of("EndTime"), PROTOCOL_ERROR)
        if start is None or end is None or end <= start or end - start > dt.timedelta(days=42):
            raise EasError(PROTOCOL_ERROR, "bad availability window")
    gal = gal_of(call)
    responses = []
    for name in names:
        matches = await gal.resolve(name) if name.strip() else []
        status = RESOLVED if len(matches) == 1 else UNRESOLVED if not matches else \
            AMBIGUOUS if len(matches) <= max_ambiguous else AMBIGUOUS_PARTIAL
        shown = matches[:max_ambiguous] if status != RESOLVED else matches
        recipients = []
        for person in shown:
            children = [Element(NS, "Type", text="1"), Element(NS, "DisplayName", text=person.display_name),
                        Element(NS, "EmailAddress", text=person.email)]
            if start is not None and end is not None:
                children.append(await _availability(call, person.email, start, end))
            if retrieval in ("2", "3"):
                children.append(certificates.element(person))
            if pictures is not None:
                children.append(pictures.element(person, NS))
            recipients.append(Element(NS, "Recipient", children))
        responses.append(Element(NS, "Response", [
            Element(NS, "To", text=name), Element(NS, "Status", text=str(status)),
            Element(NS, "RecipientCount", text=str(len(recipients))), *recipients]))
    return Element(NS, "ResolveRecipients", [Element(NS, "Status", text=str(OK)), *responses])


async def _availability(call: EasCall, address: str, start: dt.datetime, end: dt.datetime) -> Element:
    try:
        (answer,) = await call.ctx.availability.lookup(call.user, [address], start, end, credentials=call.creds)
    except ValueError:
        answer = AvailabilityError("invalid", "bad window")
    if isinstance(answer, AvailabilityError):
        return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_UNAVAILABLE))])
    if answer.access is AccessLevel.NONE:
        return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_DENIED))])
    merged = merged_free_busy(answer.events, start, end, 30)
    return Element(NS, "Availability", [Element(NS, "Status", text=str(FREEBUSY_OK)),
                                        Element(NS, "MergedFreeBusy", text=merged)])
