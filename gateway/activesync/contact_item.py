"""Contacts as ActiveSync items (MS-ASCNTC): a stored vCard to AirSync:ApplicationData, and a device's
ApplicationData back to the vCard text to store, merged into the previous text on a Change.

Reading takes vCard 2.1, 3.0 and 4.0 (RFC 2426, RFC 6350; the text layer is vcard.py): folded lines,
backslash escapes, 2.1 quoted-printable values and bare TYPE parameters, base64 and ``data:`` photos,
group prefixes and Apple's ``itemN.X-ABLabel`` labels. An Add is written as vCard 3.0; a Change keeps the
previous version (2.1 is raised to 3.0, which CardDAV requires).

Choices made here, where the specifications leave room:

* Each EAS field is a slot filled by the first vCard property that fits it, in document order (second
  home and business phones go to Home2 / Business2; a TEL without a telling TYPE counts as a home phone,
  a fax without "home" as the business fax). A property no slot takes is never touched on a
  Change: a fourth EMAIL, X-SOCIALPROFILE, a third home phone... A slot whose value the device sent back
  unchanged keeps its property byte for byte (group, custom parameters, encoding); a changed one keeps
  the property's group and parameters and gets the new value; an absent one is removed. Fields the
  device never saw (a photo over the 48 KB cap, Alias before 14.0, names passed as ``ghosted``) and the
  body are kept when absent.
* Output order: AirSyncBase:Body first, then the Contacts and Contacts2 elements in code page token
  order, then AirSyncBase:NativeBodyType, on every version.
* Email addresses go out as ``"Display Name" <address>`` like Exchange; only the address is stored.
* Birthday and Anniversary are dates: they go out as midnight UTC of that date; a device's date-time is
  rounded to the nearest day (a device east of UTC sends the local midnight as the evening before). A
  date without a year (``--0517``, Apple's X-APPLE-OMIT-YEAR) goes out in year 1604 and comes back so.
* Properties without a vCard standard use plain X- names (X-ASSISTANT, X-MANAGER, X-SPOUSE, X-CHILD,
  X-FILE-AS, X-OFFICE-LOCATION, X-CUSTOMER-ID, X-GOVERNMENT-ID, X-ACCOUNT-NAME, X-ALIAS, Apple's
  X-PHONETIC-*); the Evolution, KAddressBook and Outlook spellings are read too. vCard 4.0 uses
  ANNIVERSARY and RELATED (spouse, child). FileAs is stored only when it differs from "Last, First".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from .codepages import TOKENS
from .email_item import BodyOptions, ItemError
from .pimbody import body_element, body_text, legacy_body
from .vcard import BAD_CHARS, Card, Prop, escape, parse_vcard, split_value, unescape, upgrade_to_30
from .wbxml import Element

__all__ = ["to_application_data", "from_application_data", "PICTURE_MAX", "ItemError"]

VERSIONS = {"2.5": (2, 5), "12.0": (12, 0), "12.1": (12, 1), "14.0": (14, 0), "14.1": (14, 1),
            "16.0": (16, 0), "16.1": (16, 1)}
PICTURE_MAX = 48 * 1024          # MS-ASCNTC 2.2.2.58: base64 characters of a Picture
MAX_FIELD_CHARS = 64 * 1024      # one field a device sends (the body goes through pimbody)
_NO_YEAR = 1604                  # a leap year, as Apple uses for birthdays without one

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_DATE = re.compile(r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})(?:$|T)")
_NO_YEAR_DATE = re.compile(r"--([0-9]{2})-?([0-9]{2})$")
_EAS_DATE = re.compile(
    r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})(?:T([0-9]{2}):?([0-9]{2}):?([0-9]{2})(?:\.[0-9]{1,7})?Z?)?$")
_LABEL = re.compile(r"_\$!<(.*)>!\$_")

ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country")
NAME_FIELDS = ("LastName", "FirstName", "MiddleName", "Title", "Suffix")   # the order of N's components
PHONE_TYPES = {   # slot -> TYPE written for a new TEL
    "AssistantPhoneNumber": "x-assistant", "CompanyMainPhone": "main", "MMS": "x-mms",
    "RadioPhoneNumber": "x-radio", "CarPhoneNumber": "car", "PagerNumber": "pager",
    "HomeFaxNumber": "home,fax", "BusinessFaxNumber": "work,fax", "MobilePhoneNumber": "cell",
    "BusinessPhoneNumber": "work,voice", "Business2PhoneNumber": "work,voice",
    "HomePhoneNumber": "home,voice", "Home2PhoneNumber": "home,voice"}
_PHONE_RULES = (  # (types that pick the rule, slots in order); the first rule that matches decides
    ({"x-assistant", "assistant", "x-evolution-assistant"}, ("AssistantPhoneNumber",)),
    ({"main", "x-company-main", "company", "x-evolution-company"}, ("CompanyMainPhone",)),
    ({"x-mms", "mms"}, ("MMS",)), ({"x-radio", "radio"}, ("RadioPhoneNumber",)),
    ({"car"}, ("CarPhoneNumber",)), ({"pager"}, ("PagerNumber",)),
    ({"cell", "mobile", "iphone", "text"}, ("MobilePhoneNumber",)),
    ({"work"}, ("BusinessPhoneNumber", "Business2PhoneNumber")))
# EAS field -> (name written, names read); vCard 4.0 differences are in _NAME_40.
SIMPLE = {
    "JobTitle": ("TITLE", ("TITLE",)), "WebPage": ("URL", ("URL",)), "NickName": ("NICKNAME", ("NICKNAME",)),
    "OfficeLocation": ("X-OFFICE-LOCATION", ("X-OFFICE-LOCATION", "X-MS-OFFICE-LOCATION")),
    "AssistantName": ("X-ASSISTANT", ("X-ASSISTANT", "X-MS-ASSISTANT", "X-EVOLUTION-ASSISTANT",
                                      "X-KADDRESSBOOK-X-ASSISTANTSNAME")),
    "ManagerName": ("X-MANAGER", ("X-MANAGER", "X-MS-MANAGER", "X-EVOLUTION-MANAGER",
                                  "X-KADDRESSBOOK-X-MANAGERSNAME")),
    "Spouse": ("X-SPOUSE", ("X-SPOUSE", "X-MS-SPOUSE", "X-EVOLUTION-SPOUSE", "X-KADDRESSBOOK-X-SPOUSESNAME")),
    "CustomerId": ("X-CUSTOMER-ID", ("X-CUSTOMER-ID",)), "GovernmentId": ("X-GOVERNMENT-ID", ("X-GOVERNMENT-ID",)),
    "AccountName": ("X-ACCOUNT-NAME", ("X-ACCOUNT-NAME",)), "Alias": ("X-ALIAS", ("X-ALIAS",)),
    "YomiFirstName": ("X-PHONETIC-FIRST-NAME", ("X-PHONETIC-FIRST-NAME",)),
    "YomiLastName": ("X-PHONETIC-LAST-NAME", ("X-PHONETIC-LAST-NAME",)),
    "YomiCompanyName": ("X-PHONETIC-ORG", ("X-PHONETIC-ORG",)),
    "FileAs": ("X-FILE-AS", ("X-FILE-AS", "X-EVOLUTION-FILE-AS")),
    "Birthday": ("BDAY", ("BDAY",)),
    "Anniversary": ("X-ANNIVERSARY", ("ANNIVERSARY", "X-ANNIVERSARY", "X-MS-ANNIVERSARY",
                                      "X-EVOLUTION-ANNIVERSARY")),
    "Picture": ("PHOTO", ("PHOTO",)), "Body": ("NOTE", ("NOTE",))}
_BY_NAME = {name: slot for slot, (_, names) in SIMPLE.items() for name in names}
_LABELLED = {"spouse": "Spouse", "partner": "Spouse", "assistant": "AssistantName",
             "manager": "ManagerName", "anniversary": "Anniversary"}
_APPLE_AUX = {"X-ABLABEL", "X-ABADR"}   # what Apple groups with a property to label it
_IM_NAMES = {"IMPP", "X-MS-IMADDRESS", "X-AIM", "X-JABBER", "X-ICQ", "X-MSN", "X-YAHOO", "X-SKYPE",
             "X-SKYPE-USERNAME", "X-GTALK", "X-GOOGLE-TALK", "X-QQ", "X-GADUGADU", "X-GROUPWISE"}
_IM_SCHEMES = ("xmpp:", "aim:", "ymsgr:", "msnim:", "skype:", "icq:", "gtalk:", "im:", "x-apple:")
EMAILS = ("Email1Address", "Email2Address", "Email3Address")
IMS = ("IMAddress", "IMAddress2", "IMAddress3")
_LISTS = {"Categories": ("Contacts", "Category"), "Children": ("Contacts", "Child")}
_CONTACTS2 = {"CustomerId", "GovernmentId", *IMS, "ManagerName", "CompanyMainPhone", "AccountName",
              "NickName", "MMS"}
UNITS: dict[str, tuple[str, ...]] = {   # a unit is written as one or more properties together
    "N": NAME_FIELDS, "ORG": ("CompanyName", "Department"),
    **{kind + "Address": tuple(f"{kind}Address{part}" for part in ADDRESS_PARTS)
       for kind in ("Business", "Home", "Other")},
    **{slot: (slot,) for slot in (*SIMPLE, *PHONE_TYPES, *EMAILS, *IMS, *_LISTS)}}
FIELDS = {f: unit for unit, fields in UNITS.items() for f in fields}


def _version(version: object) -> tuple[int, int]:
    if not isinstance(version, str) or version not in VERSIONS:
        raise ItemError(f"unknown ActiveSync protocol version {version!r}; expected one of {', '.join(VERSIONS)}")
    return VERSIONS[version]


# --- vCard -> field values ---------------------------------------------------------------------------------

def _date(prop: Prop) -> str | None:
    """A vCard date as 'YYYY-MM-DD' or '--MM-DD'; None for what is not a date (4.0 VALUE=text...)."""
    value = unescape(prop.value).strip()
    match = _DATE.match(value)
    if match:
        year, month, day = (int(g) for g in match.groups())
        omit = prop.param("X-APPLE-OMIT-YEAR")
        yearless = omit is not None and omit.strip() == match.group(1)
    elif (match := _NO_YEAR_DATE.match(value)):
        year, month, day, yearless = _NO_YEAR, int(match.group(1)), int(match.group(2)), True
    else:
        return None
    try:
        dt.date(year, month, day)
    except ValueError:
        return None
    return f"--{month:02d}-{day:02d}" if yearless else f"{year:04d}-{month:02d}-{day:02d}"


def _photo(prop: Prop) -> bytes | None:
    value = prop.value.strip()
    try:
        if value[:5].lower() == "data:":
            head, _, data = value[5:].partition(",")
            if head.lower().endswith(";base64"):
                return base64.b64decode("".join(data.split()), validate=True) or None
            return unquote_to_bytes(data) or None
        if prop.encoding() in ("B", "BASE64"):
            return base64.b64decode("".join(value.split()), validate=True) or None
    except (binascii.Error, ValueError):
        return None
    return None


def _phone_slot(types: set[str], taken: dict[str, list[int]]) -> str | None:
    if "fax" in types:
        slots: tuple[str, ...] = ("HomeFaxNumber",) if "home" in types else ("BusinessFaxNumber",)
    else:
        slots = ("HomePhoneNumber", "Home2PhoneNumber")
        for picks, candidates in _PHONE_RULES:
            if types & picks:
                slots = candidates
                break
    return next((slot for slot in slots if slot not in taken), None)


def read_fields(card: Card) -> tuple[dict[str, object], dict[str, list[int]]]:
    """The EAS field values of a card and, per unit (see UNITS), the indexes of the properties it owns."""
    values: dict[str, object] = {}
    owners: dict[str, list[int]] = {}
    labels = {p.group: _LABEL.sub(r"\1", unescape(p.value)).strip().lower()
              for p in card.props if p.name == "X-ABLABEL" and p.group}

    def claim(unit: str, index: int, **fields: object) -> None:
        owners.setdefault(unit, []).append(index)
        values.update(fields)

    for i, prop in enumerate(card.props):
        name, types = prop.name, prop.types(labels)
        if prop.nested or not name:
            continue
        if name == "N" and "N" not in owners:
            parts = split_value(prop.value, ";") + [""] * 5
            claim("N", i, **{f: parts[k].strip() for k, f in enumerate(NAME_FIELDS)})
        elif name == "ORG" and "ORG" not in owners:
            parts = split_value(prop.value, ";") + [""]
            claim("ORG", i, CompanyName=parts[0].strip(), Department=parts[1].strip())
        elif name == "ADR":
            kind = "Business" if "work" in types else "Home" if "home" in types else "Other"
            if kind + "Address" not in owners:
                parts = split_value(prop.value, ";") + [""] * 7
                claim(kind + "Address", i, **{f"{kind}Address{part}": parts[k + 2].strip()
                                              for k, part in enumerate(ADDRESS_PARTS)})
        elif name == "TEL":
            slot = _phone_slot(types, owners)
            value = unescape(prop.value).strip()
            if slot and value:
                claim(slot, i, **{slot: value[4:] if value[:4].lower() == "tel:" else value})
        elif name == "EMAIL":
            slot = next((s for s in EMAILS if s not in owners), None)
            value = unescape(prop.value).strip()
            if slot and value and _address_in(value):  # "<>" names no address: kept as it is, not sent
                claim(slot, i, **{slot: value[7:] if value[:7].lower() == "mailto:" else value})
        elif name in _IM_NAMES:
            slot = next((s for s in IMS if s not in owners), None)
            value = unescape(prop.value).strip()
            for scheme in _IM_SCHEMES:
                value = value[len(scheme):] if value.lower().startswith(scheme) else value
            if slot and value:
                claim(slot, i, **{slot: value})
        elif name == "CATEGORIES":
            found = [c.strip() for c in split_value(prop.value, ",") if c.strip()]
            claim("Categories", i, Categories=(*values.get("Categories", ()), *found))  # type: ignore[misc]
        elif name in ("X-CHILD", "X-MS-CHILD", "X-CHILDREN", "X-EVOLUTION-CHILDREN") or (
                name in ("RELATED", "X-ABRELATEDNAMES") and "child" in types):
            if name == "RELATED" and (prop.param("VALUE") or "").lower() != "text":
                continue
            found = [c.strip() for c in split_value(prop.value, ",") if c.strip()]
            claim("Children", i, Children=(*values.get("Children", ()), *found))  # type: ignore[misc]
        else:
            slot = _BY_NAME.get(name)
            if name in ("RELATED", "X-ABRELATEDNAMES", "X-ABDATE"):
                if name == "RELATED" and (prop.param("VALUE") or "").lower() != "text":
                    continue
                slot = next((_LABELLED[t] for t in sorted(types) if t in _LABELLED), None)
            if slot is None or slot in owners:
                continue
            if slot in ("Birthday", "Anniversary"):
                value: object = _date(prop)
            elif slot == "Picture":
                value = _photo(prop)
            elif slot in ("WebPage", "NickName"):
                value = (split_value(prop.value, ",")[0] if slot == "NickName" else unescape(prop.value)).strip()
            else:
                value = unescape(prop.value).strip() if slot != "Body" else unescape(prop.value)
            if value:
                claim(slot, i, **{slot: value})
    fn = next((unescape(p.value).strip() for p in card.props if p.name == "FN" and not p.nested), "")
    if fn and not any(values.get(f) for f in NAME_FIELDS) and fn != values.get("CompanyName"):
        values["FirstName"] = fn   # a card with only FN: the phone shows a name, and an echo changes nothing
    values["FN"] = fn
    return values, owners


def default_file_as(values: dict[str, object]) -> str:
    """What Exchange files a contact as: "Last, First", else the one name, else company, else e-mail."""
    last, first = values.get("LastName") or "", values.get("FirstName") or ""
    if last and first:
        return f"{last}, {first}"
    return str(last or first or values.get("CompanyName") or values.get("Email1Address") or "")


def display_name(values: dict[str, object]) -> str:
    """An FN built from the name parts, else the company, else the first e-mail address."""
    parts = [values.get(f) for f in ("Title", "FirstName", "MiddleName", "LastName", "Suffix")]
    return " ".join(str(p) for p in parts if p) or str(values.get("CompanyName") or
                                                          values.get("Email1Address") or "")


# --- field values -> ApplicationData -----------------------------------------------------------------------

def _eas_date(value: str) -> str:
    date = f"{_NO_YEAR}{value[1:]}" if value.startswith("--") else value
    return f"{date}T00:00:00.000Z"


def _address_out(address: str, values: dict[str, object]) -> str:
    name = " ".join(str(values.get("FN") or display_name(values)).split())
    name = name.replace("\\", "\\\\").replace('"', '\\"')
    plain = not name or name == address or any(ch in address for ch in '<>"') or len(address.split()) != 1
    return address if plain else f'"{name}" <{address}>'


def _wire(text: str) -> str:
    return BAD_CHARS.sub("", text)


def _namespace(name: str) -> str:
    return "Contacts2" if name in _CONTACTS2 else "Contacts"


def to_application_data(text: str, version: str, options: BodyOptions) -> Element:
    """The AirSync:ApplicationData of the contact in vCard ``text`` for protocol ``version``."""
    v = _version(version)
    if not isinstance(options, BodyOptions):
        raise ItemError("options must be BodyOptions (see email_item.parse_options)")
    values, _ = read_fields(parse_vcard(text))
    values["FileAs"] = values.get("FileAs") or default_file_as(values)
    elements: list[Element] = []
    for name in FIELDS:
        value = values.get(name)
        if not value or name == "Body" or (name == "Alias" and v < (14, 0)):
            continue
        if name in _LISTS:
            ns, item = _LISTS[name]
            elements.append(Element(ns, name, [Element(ns, item, text=_wire(str(c))) for c in value]))  # type: ignore
            continue
        if name in EMAILS:
            value = _address_out(str(value), values)
        elif name in ("Birthday", "Anniversary"):
            value = _eas_date(str(value))
        elif name == "Picture":
            value = base64.b64encode(value).decode("ascii")  # type: ignore[arg-type]
            if len(value) > PICTURE_MAX:
                continue
        elements.append(Element(_namespace(name), name, text=_wire(str(value))))
    note = str(values.get("Body") or "")
    if v < (12, 0):
        elements.extend(legacy_body("Contacts", note, options))
    elements.sort(key=lambda e: TOKENS[(e.ns, e.name)])
    if v >= (12, 0):
        elements.insert(0, body_element(note, options, v))
        elements.append(Element("AirSyncBase", "NativeBodyType", text="1"))
    return Element("AirSync", "ApplicationData", elements)


# --- ApplicationData -> field values -----------------------------------------------------------------------

def _leaf(element: Element) -> str | None:
    if element.children or element.opaque is not None:
        raise ItemError(f"{element.ns}:{element.name} must hold text")
    text = element.text or ""
    if len(text) > MAX_FIELD_CHARS:
        raise ItemError(f"{element.name} is longer than {MAX_FIELD_CHARS} characters")
    return _CONTROL.sub("", text).strip() or None


def _date_in(name: str, text: str) -> str:
    match = _EAS_DATE.match(text)
    if match is None:
        raise ItemError(f"{name} {text[:40]!r} is not an ActiveSync date-time")
    try:
        parts = [int(g or 0) for g in match.groups()]
        when = dt.datetime(*parts) + dt.timedelta(hours=12)   # the nearest day: see the module notes
    except (ValueError, OverflowError):
        raise ItemError(f"{name} {text[:40]!r} is not a valid date") from None
    day = when.date()
    return f"--{day.month:02d}-{day.day:02d}" if day.year == _NO_YEAR else day.isoformat()


def _picture_in(text: str) -> bytes | None:
    text = "".join(text.split())
    if len(text) > PICTURE_MAX:
        raise ItemError(f"Picture of {len(text)} base64 characters is over the {PICTURE_MAX} limit")
    try:
        return base64.b64decode(text, validate=True) or None
    except (binascii.Error, ValueError):
        raise ItemError("Picture is not base64") from None


def _address_in(text: str) -> str:
    match = re.search(r"<([^<>]*)>\s*$", text)
    address = (match.group(1) if match else text).strip()
    return address[7:] if address[:7].lower() == "mailto:" else address


def device_fields(data: Element) -> dict[str, object]:
    """The contact fields a device sent, by EAS name (None: sent empty); the body is left to pimbody."""
    if not isinstance(data, Element) or (data.ns, data.name) != ("AirSync", "ApplicationData"):
        raise ItemError("expected an AirSync:ApplicationData element")
    out: dict[str, object] = {}
    for child in data.children:
        if not isinstance(child, Element):
            raise ItemError(f"ApplicationData holds a {type(child).__name__}, not an Element")
        name = child.name
        if child.ns == "AirSyncBase" or (child.ns == "Contacts" and name in (
                "Body", "BodySize", "BodyTruncated", "WeightedRank")):
            continue
        if child.ns not in ("Contacts", "Contacts2") or name not in FIELDS or name == "Body" \
                or child.ns != _namespace(name):
            raise ItemError(f"{child.ns}:{name} is not a contact field")
        if name in out:
            raise ItemError(f"{name} appears more than once")
        value: object
        if name in _LISTS:
            ns, item = _LISTS[name]
            if child.text or child.opaque is not None:
                raise ItemError(f"{name} must hold {item} elements")
            found = []
            for sub in child.children:
                if (sub.ns, sub.name) != (ns, item):
                    raise ItemError(f"{sub.ns}:{sub.name} in {name}; expected {item}")
                text = _leaf(sub)
                if text:
                    found.append(text)
            value = tuple(found) or None
        else:
            value = _leaf(child)
            if value is not None:
                if name in EMAILS:
                    value = _address_in(value) or None
                elif name in ("Birthday", "Anniversary"):
                    value = _date_in(name, value)
                elif name == "Picture":
                    value = _picture_in(value)
        out[name] = value
    return out


# --- field values -> vCard ---------------------------------------------------------------------------------

def _with(old: Prop | None, name: str, value: str, types: str = "", drop: Iterable[str] = (),
          params: Iterable[tuple[str, str | None]] = ()) -> Prop:
    """A new property, or ``old`` with a new value keeping its group, name and other parameters."""
    if old is None:
        return Prop("", name, ([("TYPE", types)] if types else []) + list(params), value)
    gone = {"ENCODING", "CHARSET", *drop}
    return Prop(old.group, old.name, [p for p in old.params if p[0].upper() not in gone] + list(params), value)


def _vcard_date(value: str, version: str) -> tuple[str, list[tuple[str, str | None]]]:
    if value.startswith("--"):
        if version == "4.0":
            return "--" + value[2:].replace("-", ""), []
        return f"{_NO_YEAR}{value[1:]}", [("X-APPLE-OMIT-YEAR", str(_NO_YEAR))]
    return (value.replace("-", "") if version == "4.0" else value), []


def _photo_prop(old: Prop | None, data: bytes, version: str) -> Prop:
    kind = "png" if data.startswith(b"\x89PNG") else "gif" if data.startswith(b"GIF8") else "jpeg"
    encoded = base64.b64encode(data).decode("ascii")
    group, name = (old.group, old.name) if old else ("", "PHOTO")
    if version == "4.0":
        return Prop(group, name, [], f"data:image/{kind};base64,{encoded}")
    return Prop(group, name, [("ENCODING", "b"), ("TYPE", kind.upper())], encoded)


def _build(unit: str, new: dict[str, object], old: Prop | None, version: str) -> list[Prop]:
    """The properties that carry ``unit`` with the device's values (none when they are empty)."""
    if unit == "N":
        return [_with(old, "N", ";".join(escape(str(new.get(f) or "")) for f in NAME_FIELDS))]
    if unit == "ORG":
        parts = [str(new.get("CompanyName") or ""), str(new.get("Department") or ""),
                 *(split_value(old.value, ";")[2:] if old else [])]
        while len(parts) > 1 and not parts[-1]:
            parts.pop()
        return [_with(old, "ORG", ";".join(map(escape, parts)))] if any(parts) else []
    if unit in ("BusinessAddress", "HomeAddress", "OtherAddress"):
        parts = (split_value(old.value, ";") + [""] * 7)[:7] if old else [""] * 7
        parts[2:7] = [str(new.get(unit + part) or "") for part in ADDRESS_PARTS]
        kind = {"BusinessAddress": "work", "HomeAddress": "home", "OtherAddress": "other"}[unit]
        return [_with(old, "ADR", ";".join(map(escape, parts)), kind)] if any(parts) else []
    value = new.get(unit)
    if not value:
        return []
    if unit in _LISTS:
        items = [str(v) for v in value]  # type: ignore[attr-defined]
        if unit == "Categories":
            return [_with(old, "CATEGORIES", ",".join(map(escape, items)))]
        if version == "4.0":
            return [Prop("", "RELATED", [("TYPE", "child"), ("VALUE", "text")], escape(c)) for c in items]
        return [Prop("", "X-CHILD", [], escape(c)) for c in items]
    if unit == "Picture":
        return [_photo_prop(old, value, version)]  # type: ignore[arg-type]
    text = str(value)
    if unit in PHONE_TYPES:
        return [_with(old, "TEL", escape(text), PHONE_TYPES[unit], drop=("VALUE",))]
    if unit in EMAILS:
        return [_with(old, "EMAIL", escape(text), drop=("VALUE",))]
    if unit in IMS:
        if old is not None and old.name == "IMPP" and ":" not in text:
            scheme = unescape(old.value).partition(":")
            text = scheme[0] + ":" + text if scheme[1] else text
        if old is None:
            return [Prop("", "IMPP" if ":" in text else "X-MS-IMADDRESS", [], escape(text))]
        return [_with(old, old.name if ":" in text or old.name != "IMPP" else "X-MS-IMADDRESS", escape(text))]
    if unit in ("Birthday", "Anniversary"):
        date, params = _vcard_date(text, version)
        name = "ANNIVERSARY" if unit == "Anniversary" and version == "4.0" else SIMPLE[unit][0]
        return [_with(old, name, date, drop=("VALUE", "X-APPLE-OMIT-YEAR"), params=params)]
    if unit == "Spouse" and version == "4.0" and old is None:
        return [Prop("", "RELATED", [("TYPE", "spouse"), ("VALUE", "text")], escape(text))]
    if unit == "WebPage":
        return [_with(old, "URL", " ".join(text.split()))]
    return [_with(old, SIMPLE[unit][0], escape(text))]


def _same(a: object, b: object) -> bool:
    def norm(x: object) -> object:
        if isinstance(x, str):
            return x.replace("\r\n", "\n").rstrip() or None
        return x or None
    return norm(a) == norm(b)


def from_application_data(data: Element, version: str, previous: str | None = None, *,
                          ghosted: Iterable[str] = ()) -> str:
    """The vCard to store for a device's Sync Add (``previous`` None) or Change (``previous`` = the stored
    vCard). ``ghosted`` names fields the device does not carry (MS-ASCMD Supported): kept when absent."""
    v = _version(version)
    sent = device_fields(data)
    body = body_text(data, "Contacts")
    card = Card("3.0", []) if previous is None else parse_vcard(previous)
    if card.version == "2.1":
        upgrade_to_30(card)
    old, owners = read_fields(card)
    new = dict(sent)
    picture = old.get("Picture")
    unseen = {*ghosted, "Body", *(["Alias"] if v < (14, 0) else []),
              *(["Picture"] if isinstance(picture, bytes) and (len(picture) + 2) // 3 * 4 > PICTURE_MAX else [])}
    for name in unseen:
        if name not in sent and name in FIELDS:
            new[name] = old.get(name)
    if body is not None:
        new["Body"] = body
    file_as = new.get("FileAs")
    if file_as is not None and file_as == (old.get("FileAs") or default_file_as(old)):
        new["FileAs"] = old.get("FileAs")        # untouched on the device: still derived, or still custom
    elif file_as is not None and file_as == default_file_as(new):
        new["FileAs"] = None
    replaced: dict[int, list[Prop]] = {}
    dropped: set[int] = set()
    appended: list[Prop] = []
    changed: set[str] = set()
    for unit, fields in UNITS.items():
        if all(_same(old.get(f), new.get(f)) for f in fields):
            continue
        changed.add(unit)
        indexes = owners.get(unit, [])
        built = _build(unit, new, card.props[indexes[0]] if indexes else None, card.version)
        if indexes:
            replaced[indexes[0]] = built
            dropped.update(indexes[1:])
        else:
            appended.extend(built)
    props: list[Prop] = []
    for i, prop in enumerate(card.props):
        if i in replaced:
            props.extend(replaced[i])
        elif i not in dropped:
            props.append(prop)
    props.extend(appended)
    return _finish(card, props, old, new, changed)


def _finish(card: Card, props: list[Prop], old: dict[str, object], new: dict[str, object],
            changed: set[str]) -> str:
    """FN, N, VERSION and UID made present, Apple labels of removed properties removed, text written."""
    before = {p.group for p in card.props if p.group and p.name not in _APPLE_AUX}
    after = {p.group for p in props if p.group and p.name not in _APPLE_AUX}
    props = [p for p in props if not (p.group in before - after and p.name in _APPLE_AUX)]
    names = {p.name for p in props if not p.nested}
    head: list[Prop] = []
    if "VERSION" not in names:
        head.append(Prop("", "VERSION", value=card.version))
    if "UID" not in names:
        head.append(Prop("", "UID", value=("urn:uuid:" if card.version == "4.0" else "") + str(uuid.uuid4())))
    derived = display_name(new) or str(new.get("FileAs") or "")
    if "FN" not in names:
        head.append(Prop("", "FN", value=escape(derived)))
    elif changed & {"N", "ORG", "Email1Address"} and derived and derived != display_name(old):
        index = next(i for i, p in enumerate(props) if p.name == "FN" and not p.nested)
        props[index] = _with(props[index], "FN", escape(derived))
    if "N" not in names:
        head.append(_build("N", new, None, card.version)[0])
    at = next((i + 1 for i, p in enumerate(props) if p.name == "VERSION"), 0)
    props[at:at] = head
    return "BEGIN:VCARD\r\n" + "".join(p.render() + "\r\n" for p in props) + "END:VCARD\r\n"

