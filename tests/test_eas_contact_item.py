"""vCard <-> ActiveSync Contact items: specification examples, vCards as real servers and clients write
them, round trips, Change merges that keep what EAS cannot carry, limits, and fuzzing."""

from __future__ import annotations

import base64

import pytest
import vobject
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.activesync.codepages import TOKENS
from gateway.activesync.contact_item import (
    FIELDS, PICTURE_MAX, ItemError, from_application_data, parse_vcard, to_application_data)
from gateway.activesync.email_item import BodyOptions, BodyPreference
from gateway.activesync.wbxml import Element, decode, encode, from_xml

E = Element
VERSIONS = ("2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1")
PLAIN = BodyOptions((BodyPreference(1, 32768),))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"


def app(*children: Element) -> Element:
    return E("AirSync", "ApplicationData", list(children))


def c(name: str, text: str) -> Element:
    return E("Contacts", name, text=text)


def c2(name: str, text: str) -> Element:
    return E("Contacts2", name, text=text)


def fields(element: Element) -> dict[str, object]:
    """The Contacts / Contacts2 values of an ApplicationData, lists as tuples."""
    out: dict[str, object] = {}
    for child in element.children:
        if child.ns in ("Contacts", "Contacts2"):
            out[child.name] = tuple(s.text for s in child.children) if child.children else child.text
    return out


def props(text: str) -> dict[str, list[str]]:
    """Property lines of a vCard by name (unfolded), for assertions."""
    out: dict[str, list[str]] = {}
    for line in text.replace("\r\n ", "").split("\r\n"):
        if line and not line.startswith(("BEGIN:", "END:")):
            name = line.split(":", 1)[0].split(";", 1)[0].split(".")[-1].upper()
            out.setdefault(name, []).append(line)
    return out


def lines(text: str) -> list[str]:
    return text.replace("\r\n ", "").split("\r\n")


def assert_valid(text: str, previous: str = "") -> None:
    """Every output: CRLF lines of at most 75 octets (or kept as they were), one vCard with FN and N that
    vobject reads too."""
    assert text.startswith("BEGIN:VCARD\r\nVERSION:") and text.endswith("END:VCARD\r\n")
    kept = set(previous.replace("\r\n", "\n").split("\n"))
    assert all(len(line.encode()) <= 75 or line in kept for line in text.split("\r\n"))
    card = parse_vcard(text)
    names = [p.name for p in card.props]
    assert names.count("FN") >= 1 and names.count("N") >= 1 and "UID" in names
    parsed = vobject.readOne(text)
    assert hasattr(parsed, "fn") and hasattr(parsed, "n")


# --- specification examples ------------------------------------------------------------------------------

# MS-ASWBXML 3.1.5.1.1: the Sync response that carries a new contact (also in tests/test_wbxml.py).
WBXML_SPEC_CONTACT = app(
    E("AirSyncBase", "Body", [E("AirSyncBase", "Type", text="1"), E("AirSyncBase", "EstimatedDataSize", text="0"),
                              E("AirSyncBase", "Truncated", text="1")]),
    c("FileAs", "Funk, Don"), c("FirstName", "Don"), c("LastName", "Funk"),
    E("AirSyncBase", "NativeBodyType", text="1"))


def test_wbxml_specification_contact_is_stored_and_sent_back_the_same() -> None:
    stored = from_application_data(WBXML_SPEC_CONTACT, "14.1")
    assert_valid(stored)
    assert props(stored)["N"] == ["N:Funk;Don;;;"] and props(stored)["FN"] == ["FN:Don Funk"]
    assert "X-FILE-AS" not in props(stored) and "NOTE" not in props(stored)  # FileAs is the default one
    element = to_application_data(stored, "14.1", PLAIN)
    assert [(e.ns, e.name) for e in element.children] == [
        ("AirSyncBase", "Body"), ("Contacts", "FileAs"), ("Contacts", "FirstName"), ("Contacts", "LastName"),
        ("AirSyncBase", "NativeBodyType")]  # the specification's order
    assert fields(element) == fields(WBXML_SPEC_CONTACT)
    assert element.children[0].text_of("EstimatedDataSize", "AirSyncBase") == "0"
    assert decode(encode(element)) == element


# MS-ASCMD 4.23.3.2 (Sync Contacts, response): the contact the specification's server sends, typed in.
ASCMD_SYNC_CONTACT = """<?xml version="1.0" encoding="utf-8"?>
<ApplicationData xmlns="AirSync" xmlns:airsyncbase="AirSyncBase" xmlns:contacts="Contacts">
  <airsyncbase:Body><airsyncbase:Type>1</airsyncbase:Type>
    <airsyncbase:EstimatedDataSize>0</airsyncbase:EstimatedDataSize>
    <airsyncbase:Truncated>1</airsyncbase:Truncated></airsyncbase:Body>
  <contacts:WebPage>http://contoso.com</contacts:WebPage>
  <contacts:BusinessAddressCountry>USA</contacts:BusinessAddressCountry>
  <contacts:Department>Executive</contacts:Department>
  <contacts:Email1Address>"Jeff Hay (jeff@contoso.com)" &lt;jeff@contoso.com&gt;</contacts:Email1Address>
  <contacts:FileAs>Hay, Jeff</contacts:FileAs>
  <contacts:FirstName>Jeff</contacts:FirstName>
  <contacts:HomeAddressCity>Redmond</contacts:HomeAddressCity>
  <contacts:HomeAddressCountry>USA</contacts:HomeAddressCountry>
  <contacts:HomePhoneNumber>(206) 555-0100</contacts:HomePhoneNumber>
  <contacts:HomeAddressPostalCode>98052</contacts:HomeAddressPostalCode>
  <contacts:HomeAddressState>WA</contacts:HomeAddressState>
  <contacts:HomeAddressStreet>123 Main Street</contacts:HomeAddressStreet>
  <contacts:JobTitle>President</contacts:JobTitle>
  <contacts:LastName>Hay</contacts:LastName>
  <contacts:MobilePhoneNumber>(206) 555-0101</contacts:MobilePhoneNumber>
  <contacts:CompanyName>Contoso</contacts:CompanyName>
  <airsyncbase:NativeBodyType>1</airsyncbase:NativeBodyType>
</ApplicationData>"""


def test_ascmd_sync_contact_example_maps_every_field() -> None:
    data = from_xml(ASCMD_SYNC_CONTACT)
    stored = from_application_data(data, "14.0")
    assert_valid(stored)
    p = props(stored)
    assert p["N"] == ["N:Hay;Jeff;;;"] and p["FN"] == ["FN:Jeff Hay"] and p["ORG"] == ["ORG:Contoso;Executive"]
    assert p["EMAIL"] == ["EMAIL:jeff@contoso.com"]           # the address only
    assert sorted(p["TEL"]) == ["TEL;TYPE=cell:(206) 555-0101", "TEL;TYPE=home,voice:(206) 555-0100"]
    assert sorted(p["ADR"]) == ["ADR;TYPE=home:;;123 Main Street;Redmond;WA;98052;USA", "ADR;TYPE=work:;;;;;;USA"]
    assert p["URL"] == ["URL:http://contoso.com"] and p["TITLE"] == ["TITLE:President"]
    back = fields(to_application_data(stored, "14.0", PLAIN))
    sent = fields(data)
    assert back.pop("Email1Address") == '"Jeff Hay" <jeff@contoso.com>'
    sent.pop("Email1Address")
    assert back == sent


# --- vCards from real servers and clients ------------------------------------------------------------------

APPLE = """BEGIN:VCARD\r
VERSION:3.0\r
PRODID:-//Apple Inc.//macOS 14.4//EN\r
N:Appleseed;Johnny;Q.;Mr.;Jr.\r
FN:Mr. Johnny Q. Appleseed Jr.\r
NICKNAME:Appy\r
ORG:Apple Inc.;Engineering;\r
TITLE:Orchard Lead\r
EMAIL;type=INTERNET;type=WORK;type=pref:johnny@apple.example\r
EMAIL;type=INTERNET;type=HOME:j@home.example\r
item1.EMAIL;type=INTERNET:old@mac.example\r
item1.X-ABLabel:_$!<Other>!$_\r
EMAIL;type=INTERNET:fourth@example.com\r
TEL;type=CELL;type=VOICE;type=pref:+1 408 555 0100\r
TEL;type=IPHONE;type=CELL;type=VOICE:+1 408 555 0199\r
TEL;type=HOME;type=VOICE:+1 408 555 0101\r
TEL;type=WORK;type=VOICE:+1 408 555 0102\r
TEL;type=MAIN:+1 408 555 0103\r
TEL;type=HOME;type=FAX:+1 408 555 0104\r
TEL;type=PAGER:+1 408 555 0105\r
item2.TEL:+1 408 555 0106\r
item2.X-ABLabel:_$!<Assistant>!$_\r
item3.ADR;type=HOME;type=pref:;;1 Infinite Loop\\nBuilding 2;Cupertino;CA;95014;United States\r
item3.X-ABADR:us\r
item4.ADR;type=WORK:;;1 Apple Park Way;Cupertino;CA;95014;USA\r
item4.X-ABADR:us\r
item5.URL;type=pref:https://www.apple.example/\r
item5.X-ABLabel:_$!<HomePage>!$_\r
BDAY;X-APPLE-OMIT-YEAR=1604:1604-05-17\r
item6.X-ABDATE;type=pref:2001-06-30\r
item6.X-ABLabel:_$!<Anniversary>!$_\r
item7.X-ABRELATEDNAMES;type=pref:Jane Appleseed\r
item7.X-ABLabel:_$!<Spouse>!$_\r
item8.X-ABRELATEDNAMES:Tim\r
item8.X-ABLabel:_$!<Manager>!$_\r
X-PHONETIC-FIRST-NAME:Jonii\r
X-PHONETIC-LAST-NAME:Appurushido\r
X-SOCIALPROFILE;type=twitter;x-user=johnny:http://twitter.com/johnny\r
IMPP;X-SERVICE-TYPE=Jabber;type=HOME;type=pref:xmpp:johnny@jabber.example\r
X-AIM;type=WORK:johnnyaim\r
NOTE:Met at WWDC\\, 2019.\\nLikes apples.\r
PHOTO;ENCODING=b;TYPE=JPEG:""" + base64.b64encode(JPEG).decode() + """\r
CATEGORIES:Friends,Orchard\r
UID:8E1B7C6A-1111-2222-3333-444455556666:ABPerson\r
END:VCARD\r
"""


def test_apple_contacts_vcard() -> None:
    got = fields(to_application_data(APPLE, "16.1", PLAIN))
    assert got == {
        "Anniversary": "2001-06-30T00:00:00.000Z", "AssistantPhoneNumber": "+1 408 555 0106",
        "Birthday": "1604-05-17T00:00:00.000Z", "BusinessAddressCity": "Cupertino",
        "BusinessAddressCountry": "USA", "BusinessAddressPostalCode": "95014", "BusinessAddressState": "CA",
        "BusinessAddressStreet": "1 Apple Park Way", "BusinessPhoneNumber": "+1 408 555 0102",
        "Categories": ("Friends", "Orchard"), "CompanyName": "Apple Inc.", "Department": "Engineering",
        "Email1Address": '"Mr. Johnny Q. Appleseed Jr." <johnny@apple.example>',
        "Email2Address": '"Mr. Johnny Q. Appleseed Jr." <j@home.example>',
        "Email3Address": '"Mr. Johnny Q. Appleseed Jr." <old@mac.example>',
        "FileAs": "Appleseed, Johnny", "FirstName": "Johnny", "HomeAddressCity": "Cupertino",
        "HomeAddressCountry": "United States", "HomeAddressPostalCode": "95014", "HomeAddressState": "CA",
        "HomeAddressStreet": "1 Infinite Loop\nBuilding 2", "HomeFaxNumber": "+1 408 555 0104",
        "HomePhoneNumber": "+1 408 555 0101", "JobTitle": "Orchard Lead", "LastName": "Appleseed",
        "MiddleName": "Q.", "MobilePhoneNumber": "+1 408 555 0100", "PagerNumber": "+1 408 555 0105",
        "Picture": base64.b64encode(JPEG).decode(), "Spouse": "Jane Appleseed", "Suffix": "Jr.",
        "Title": "Mr.", "WebPage": "https://www.apple.example/", "YomiFirstName": "Jonii",
        "YomiLastName": "Appurushido", "IMAddress": "johnny@jabber.example", "IMAddress2": "johnnyaim",
        "ManagerName": "Tim", "CompanyMainPhone": "+1 408 555 0103", "NickName": "Appy"}


def test_apple_card_echoed_back_unchanged_is_stored_byte_for_byte() -> None:
    element = to_application_data(APPLE, "16.1", PLAIN)
    assert from_application_data(element, "16.1", APPLE) == APPLE


def test_apple_card_change_keeps_what_eas_cannot_carry() -> None:
    element = to_application_data(APPLE, "16.1", PLAIN)
    changed = [ch for ch in element.children if ch.name not in ("Email3Address", "Spouse", "Body")]
    for ch in changed:
        if ch.name == "MobilePhoneNumber":
            ch.text = "+1 408 555 0177"
        if ch.name == "Birthday":
            ch.text = "1604-05-18T00:00:00.000Z"
    stored = from_application_data(app(*changed), "16.1", APPLE)
    assert_valid(stored, APPLE)
    text = lines(stored)
    assert "TEL;type=CELL;type=VOICE;type=pref:+1 408 555 0177" in text          # parameters kept
    assert "BDAY;X-APPLE-OMIT-YEAR=1604:1604-05-18" in text                       # still without a year
    assert not any("old@mac.example" in line or line.startswith("item1.") for line in text)  # label went too
    assert not any("Jane Appleseed" in line or line.startswith("item7.") for line in text)
    for kept in ("EMAIL;type=INTERNET:fourth@example.com", "TEL;type=IPHONE;type=CELL;type=VOICE:+1 408 555 0199",
                 "X-SOCIALPROFILE;type=twitter;x-user=johnny:http://twitter.com/johnny",
                 "item3.X-ABADR:us", "NOTE:Met at WWDC\\, 2019.\\nLikes apples.",      # no Body sent: kept
                 "UID:8E1B7C6A-1111-2222-3333-444455556666:ABPerson", "PRODID:-//Apple Inc.//macOS 14.4//EN"):
        assert kept in text


GOOGLE = """BEGIN:VCARD
VERSION:3.0
FN:Ada Lovelace
N:Lovelace;Ada;;;
EMAIL;TYPE=INTERNET;TYPE=HOME:ada@example.org
EMAIL;TYPE=INTERNET;TYPE=WORK:ada@engine.example
TEL;TYPE=CELL:+44 20 7946 0000
TEL;TYPE=WORK:+44 20 7946 0001
TEL;TYPE=WORK:+44 20 7946 0002
TEL;TYPE=HOME:+44 20 7946 0003
TEL:+44 20 7946 0004
ADR;TYPE=HOME:;;12 St James's Square;London;;SW1Y 4JH;United Kingdom
item1.ORG:Analytical Engines Ltd
item1.X-ABLabel:
item2.URL:http\\://ada.example.org
item2.X-ABLabel:_$!<HomePage>!$_
BDAY:1815-12-10
CATEGORIES:myContacts,starred
END:VCARD
"""


def test_google_export_second_phones_go_to_the_second_slots() -> None:
    got = fields(to_application_data(GOOGLE, "14.1", PLAIN))
    assert got["BusinessPhoneNumber"] == "+44 20 7946 0001" and got["Business2PhoneNumber"] == "+44 20 7946 0002"
    assert got["HomePhoneNumber"] == "+44 20 7946 0003" and got["Home2PhoneNumber"] == "+44 20 7946 0004"
    assert got["WebPage"] == "http://ada.example.org" and got["CompanyName"] == "Analytical Engines Ltd"
    assert got["Birthday"] == "1815-12-10T00:00:00.000Z" and got["Categories"] == ("myContacts", "starred")
    assert got["HomeAddressStreet"] == "12 St James's Square" and "HomeAddressState" not in got


THUNDERBIRD = """BEGIN:VCARD
VERSION:4.0
PRODID:-//Thunderbird//EN
UID:urn:uuid:0b3d3d44-2f0e-4f7e-9d62-6a7b3f8c1e55
FN:Grace Hopper
N:Hopper;Grace;Brewster Murray;Rear Admiral;
EMAIL;PREF=1:grace@navy.example
EMAIL:gh@cobol.example
TEL;TYPE=work;VALUE=TEXT:+1 202 555 0170
TEL;TYPE="cell,text";VALUE=uri:tel:+1-202-555-0171
ADR;TYPE=work:;Room 4;1000 Navy Pentagon;Washington;DC;20350;USA
NOTE:Inventor of the first compiler.
BDAY;VALUE=DATE:19061209
ANNIVERSARY:19300615
RELATED;TYPE=spouse;VALUE=text:Vincent Hopper
RELATED;TYPE=child;VALUE=text:Nobody
RELATED;TYPE=friend:urn:uuid:1234
PHOTO:data:image/png;base64,iVBORw0KGgo=
NICKNAME:Amazing Grace,Grandma COBOL
X-CUSTOM1:value with a \\, comma
END:VCARD
"""


def test_thunderbird_vcard_4() -> None:
    got = fields(to_application_data(THUNDERBIRD, "16.1", PLAIN))
    assert got["MobilePhoneNumber"] == "+1-202-555-0171" and got["BusinessPhoneNumber"] == "+1 202 555 0170"
    assert got["BusinessAddressStreet"] == "1000 Navy Pentagon" and got["Title"] == "Rear Admiral"
    assert got["MiddleName"] == "Brewster Murray" and got["NickName"] == "Amazing Grace"
    assert got["Birthday"] == "1906-12-09T00:00:00.000Z" and got["Anniversary"] == "1930-06-15T00:00:00.000Z"
    assert got["Spouse"] == "Vincent Hopper" and got["Children"] == ("Nobody",)
    assert got["Picture"] == "iVBORw0KGgo="


def test_thunderbird_change_writes_vcard_4_forms_and_keeps_the_rest() -> None:
    element = to_application_data(THUNDERBIRD, "16.1", PLAIN)
    kids = [ch for ch in element.children if ch.name != "Spouse"]
    for ch in kids:
        if ch.name == "Children":
            ch.children.append(c("Child", "Somebody"))
    kids.append(c("Birthday", "1906-12-08T23:00:00.000Z"))   # the device sends local midnight, UTC+1
    kids = [ch for ch in kids if not (ch.name == "Birthday" and ch.text.startswith("1906-12-09"))]
    kids.append(c("HomeAddressCity", "Arlington"))
    stored = from_application_data(app(*kids), "16.1", THUNDERBIRD)
    assert_valid(stored, THUNDERBIRD)
    text = lines(stored)
    assert text[1] == "VERSION:4.0" and "BDAY;VALUE=DATE:19061209" in text      # same day: line untouched
    assert "RELATED;TYPE=child;VALUE=text:Nobody" in text and "RELATED;TYPE=child;VALUE=text:Somebody" in text
    assert "RELATED;TYPE=friend:urn:uuid:1234" in text and "X-CUSTOM1:value with a \\, comma" in text
    assert not any("Vincent" in line for line in text)
    assert "ADR;TYPE=home:;;;Arlington;;;" in text
    assert "ADR;TYPE=work:;Room 4;1000 Navy Pentagon;Washington;DC;20350;USA" in text
    assert "ANNIVERSARY:19300615" in text and "PHOTO:data:image/png;base64,iVBORw0KGgo=" in text


VCARD21 = """BEGIN:VCARD
VERSION:2.1
N;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:M=C3=BCller;J=C3=BCrgen;;;
FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:J=C3=BCrgen M=C3=BCller
TEL;WORK;VOICE:+49 30 1234567
TEL;CELL:+49 170 1234567
NOTE;ENCODING=QUOTED-PRINTABLE:First line=0D=0A=
second line
EMAIL;PREF;INTERNET:juergen@example.de
X-NOKIA-THING;HOME:keep me
PHOTO;JPEG;ENCODING=BASE64:
 """ + base64.b64encode(JPEG[:60]).decode() + """
 """ + base64.b64encode(JPEG[60:120]).decode() + """

END:VCARD
"""


def test_vcard_21_quoted_printable_bare_types_and_folded_base64() -> None:
    got = fields(to_application_data(VCARD21, "12.1", PLAIN))
    assert got["LastName"] == "Müller" and got["FirstName"] == "Jürgen"
    assert got["BusinessPhoneNumber"] == "+49 30 1234567" and got["MobilePhoneNumber"] == "+49 170 1234567"
    assert got["Email1Address"] == '"Jürgen Müller" <juergen@example.de>'
    assert base64.b64decode(got["Picture"]) == JPEG[:120]
    body = to_application_data(VCARD21, "12.1", PLAIN).children[0]
    assert body.text_of("Data", "AirSyncBase") == "First line\r\nsecond line"


def test_vcard_21_change_is_written_as_30() -> None:
    element = to_application_data(VCARD21, "16.1", PLAIN)
    kept = [ch for ch in element.children if ch.name != "MobilePhoneNumber"]
    stored = from_application_data(app(*kept), "16.1", VCARD21)
    assert_valid(stored)
    text = lines(stored)
    assert text[1] == "VERSION:3.0" and "N:Müller;Jürgen;;;" in text and "FN:Jürgen Müller" in text
    assert "TEL;TYPE=work;TYPE=voice:+49 30 1234567" in text and not any("170" in line for line in text)
    assert "X-NOKIA-THING;TYPE=home:keep me" in text and "NOTE:First line\\nsecond line" in text
    assert "EMAIL;TYPE=pref;TYPE=internet:juergen@example.de" in text
    photo = next(line for line in text if line.startswith("PHOTO"))
    assert photo.startswith("PHOTO;ENCODING=b;TYPE=jpeg:") and base64.b64decode(photo.split(":")[1]) == JPEG[:120]


# --- round trips --------------------------------------------------------------------------------------------

EVERY_FIELD = app(
    c("Anniversary", "2010-07-01T00:00:00.000Z"), c("AssistantName", "Igor"),
    c("AssistantPhoneNumber", "+1 555 0001"), c("Birthday", "1980-02-29T00:00:00.000Z"),
    c("Business2PhoneNumber", "+1 555 0002"), c("BusinessAddressCity", "Springfield"),
    c("BusinessAddressCountry", "USA"), c("BusinessAddressPostalCode", "12345"), c("BusinessAddressState", "IL"),
    c("BusinessAddressStreet", "1 Work Rd\nSuite 5"), c("BusinessFaxNumber", "+1 555 0003"),
    c("BusinessPhoneNumber", "+1 555 0004"), c("CarPhoneNumber", "+1 555 0005"),
    E("Contacts", "Categories", [c("Category", "VIP"), c("Category", "Golf, Tennis")]),
    E("Contacts", "Children", [c("Child", "Bart"), c("Child", "Lisa; the clever one")]),
    c("CompanyName", "Power Plant; Sector 7G"), c("Department", "Safety"),
    c("Email1Address", "homer@example.com"), c("Email2Address", '"H" <h@example.com>'),
    c("Email3Address", "<j@example.com>"), c("FileAs", "Homer J"), c("FirstName", "Homer"),
    c("Home2PhoneNumber", "+1 555 0006"), c("HomeAddressCity", "Springfield"), c("HomeAddressCountry", "USA"),
    c("HomeAddressPostalCode", "54321"), c("HomeAddressState", "OR"), c("HomeAddressStreet", "742 Evergreen"),
    c("HomeFaxNumber", "+1 555 0007"), c("HomePhoneNumber", "+1 555 0008"), c("JobTitle", "Inspector"),
    c("LastName", "Simpson"), c("MiddleName", "Jay"), c("MobilePhoneNumber", "+1 555 0009"),
    c("OfficeLocation", "Sector 7G"), c("OtherAddressCity", "Shelbyville"), c("OtherAddressCountry", "USA"),
    c("OtherAddressPostalCode", "999"), c("OtherAddressState", "KY"), c("OtherAddressStreet", "Moe's"),
    c("PagerNumber", "+1 555 0010"), c("RadioPhoneNumber", "+1 555 0011"), c("Spouse", "Marge"),
    c("Suffix", "Sr."), c("Title", "Mr."), c("WebPage", "https://simpsons.example/homer?a=1,b=2"),
    c("YomiCompanyName", "Pawa"), c("YomiFirstName", "Homa"), c("YomiLastName", "Shinpuson"),
    c("Picture", base64.b64encode(JPEG).decode()), c("Alias", "homer"),
    c2("CustomerId", "C-1"), c2("GovernmentId", "G-2"), c2("IMAddress", "homer@jabber.example"),
    c2("IMAddress2", "xmpp:h2@jabber.example"), c2("IMAddress3", "homer_aim"), c2("ManagerName", "Mr. Burns"),
    c2("CompanyMainPhone", "+1 555 0012"), c2("AccountName", "hsimpson"), c2("NickName", "Homie"),
    c2("MMS", "+1 555 0013"))


def expected_back(version: str) -> dict[str, object]:
    want = fields(EVERY_FIELD)
    want["IMAddress2"] = "h2@jabber.example"   # the scheme of a URI is not shown
    for key, address in (("Email1Address", "homer@example.com"), ("Email2Address", "h@example.com"),
                         ("Email3Address", "j@example.com")):
        want[key] = f'"Mr. Homer Jay Simpson Sr." <{address}>'
    if version in ("2.5", "12.0", "12.1"):
        del want["Alias"]
    return want


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("card_version", ["3.0", "4.0"])
def test_every_field_round_trips(version: str, card_version: str) -> None:
    body = c("Body", "Note\nwith lines") if version == "2.5" else E("AirSyncBase", "Body", [
        E("AirSyncBase", "Type", text="1"), E("AirSyncBase", "Data", text="Note\r\nwith lines")])
    data = app(*EVERY_FIELD.children, body)
    stored = from_application_data(data, version)
    if card_version == "4.0":   # the same contact stored by a 4.0 server: a Change rewrites every field
        empty = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:x\r\nFN:x\r\nN:;;;;\r\nEND:VCARD\r\n"
        stored = from_application_data(data, version, empty)
        assert "ANNIVERSARY:20100701" in lines(stored) and "RELATED;TYPE=child;VALUE=text:Bart" in lines(stored)
    assert_valid(stored)
    assert props(stored)["FN"] == ["FN:Mr. Homer Jay Simpson Sr."]
    element = to_application_data(stored, version, PLAIN)
    assert fields(element) == {**expected_back(version), **(
        {"Body": "Note\r\nwith lines", "BodySize": "16", "BodyTruncated": "0"} if version == "2.5" else {})}
    if version != "2.5":
        assert element.children[0].text_of("Data", "AirSyncBase") == "Note\r\nwith lines"
    assert decode(encode(element)) == element
    order = [TOKENS[(e.ns, e.name)] for e in element.children if e.ns != "AirSyncBase"]
    assert order == sorted(order)
    assert from_application_data(element, version, stored) == stored   # an echo changes nothing


def test_every_field_is_an_activesync_tag() -> None:
    from gateway.activesync.contact_item import _namespace
    assert all((_namespace(name), name) in TOKENS for name in FIELDS)


# --- Change merges ------------------------------------------------------------------------------------------

PREVIOUS = """BEGIN:VCARD\r
VERSION:3.0\r
UID:keep-this-uid\r
FN:Dr. Who\r
N:Smith;John;;;\r
EMAIL;TYPE=work;X-CUSTOM=yes:john@work.example\r
EMAIL:b@example.com\r
EMAIL:c@example.com\r
EMAIL:fourth@example.com\r
TEL;TYPE=cell;X-SERVICE=signal:+1 555 0100\r
TEL;TYPE=home:+1 555 0101\r
TEL;TYPE=home:+1 555 0102\r
TEL;TYPE=home:+1 555 0103\r
X-SOCIALPROFILE;TYPE=mastodon:https://social.example/@john\r
X-EVOLUTION-FILE-AS:Johnny\r
NOTE:Keep this note\r
REV:2024-01-01T00:00:00Z\r
END:VCARD\r
"""


def test_change_replaces_values_and_keeps_unknown_properties() -> None:
    data = app(c("FirstName", "John"), c("LastName", "Smith"), c("FileAs", "Johnny"),
               c("Email1Address", '"John Smith" <john@new.example>'), c("Email2Address", "b@example.com"),
               c("MobilePhoneNumber", "+1 555 0100"), c("HomePhoneNumber", "+1 555 0101"),
               c("Home2PhoneNumber", "+1 555 0199"))
    stored = from_application_data(data, "16.1", PREVIOUS)
    assert_valid(stored)
    assert lines(stored) == [
        "BEGIN:VCARD", "VERSION:3.0", "UID:keep-this-uid", "FN:Dr. Who", "N:Smith;John;;;",
        "EMAIL;TYPE=work;X-CUSTOM=yes:john@new.example", "EMAIL:b@example.com", "EMAIL:fourth@example.com",
        "TEL;TYPE=cell;X-SERVICE=signal:+1 555 0100", "TEL;TYPE=home:+1 555 0101", "TEL;TYPE=home:+1 555 0199",
        "TEL;TYPE=home:+1 555 0103", "X-SOCIALPROFILE;TYPE=mastodon:https://social.example/@john",
        "X-EVOLUTION-FILE-AS:Johnny", "NOTE:Keep this note", "REV:2024-01-01T00:00:00Z", "END:VCARD", ""]


def test_change_of_the_name_rebuilds_fn_and_a_default_file_as_drops_the_custom_one() -> None:
    data = app(c("FirstName", "Jane"), c("LastName", "Smith"), c("FileAs", "Smith, Jane"))
    stored = from_application_data(data, "16.1", PREVIOUS)
    p = props(stored)
    assert p["FN"] == ["FN:Jane Smith"] and p["N"] == ["N:Smith;Jane;;;"] and "X-EVOLUTION-FILE-AS" not in p
    assert p["EMAIL"] == ["EMAIL:fourth@example.com"]           # the device dropped all three it had
    assert p["TEL"] == ["TEL;TYPE=home:+1 555 0103"] and p["NOTE"] == ["NOTE:Keep this note"]
    assert p["UID"] == ["UID:keep-this-uid"]


def test_body_absent_keeps_the_note_and_empty_body_removes_it() -> None:
    echo = to_application_data(PREVIOUS, "14.1", PLAIN)
    no_body = app(*[ch for ch in echo.children if ch.ns != "AirSyncBase"])
    assert from_application_data(no_body, "14.1", PREVIOUS) == PREVIOUS
    empty = app(*no_body.children, E("AirSyncBase", "Body", [E("AirSyncBase", "Type", text="1"),
                                                             E("AirSyncBase", "Data", text="")]))
    assert "NOTE" not in props(from_application_data(empty, "14.1", PREVIOUS))
    html = app(*no_body.children, E("AirSyncBase", "Body", [
        E("AirSyncBase", "Type", text="2"), E("AirSyncBase", "Data", text="<p>New <b>note</b></p>")]))
    assert props(from_application_data(html, "14.1", PREVIOUS))["NOTE"][0].startswith("NOTE:New note")


def test_legacy_25_body_is_read_and_written() -> None:
    data = app(c("FirstName", "Ann"), c("Body", "Old style\r\nbody"))
    stored = from_application_data(data, "2.5")
    assert props(stored)["NOTE"] == ["NOTE:Old style\\nbody"]
    element = to_application_data(stored, "2.5", BodyOptions(truncation=5))
    assert fields(element)["Body"] == "Old s" and fields(element)["BodyTruncated"] == "1"
    assert fields(element)["BodySize"] == "15" and element.find("Body", "AirSyncBase") is None


def test_oversized_photo_is_not_sent_and_survives_a_change() -> None:
    big = bytes(range(256)) * 200
    card = PREVIOUS.replace("NOTE:", "PHOTO;ENCODING=b;TYPE=JPEG:" + base64.b64encode(big).decode() + "\r\nNOTE:")
    element = to_application_data(card, "16.1", PLAIN)
    assert element.find("Picture", "Contacts") is None
    stored = from_application_data(app(c("FirstName", "John"), c("LastName", "Smith")), "16.1", card)
    assert any(line.startswith("PHOTO;ENCODING=b;TYPE=JPEG:") for line in lines(stored))
    small = app(c("LastName", "Smith"), c("Picture", base64.b64encode(JPEG).decode()))
    replaced = from_application_data(small, "16.1", card)
    assert "PHOTO;ENCODING=b;TYPE=JPEG:" + base64.b64encode(JPEG).decode() in lines(replaced)


def test_ghosted_fields_are_kept_and_others_removed() -> None:
    data = app(c("FirstName", "John"), c("LastName", "Smith"))
    stored = from_application_data(data, "14.1", PREVIOUS, ghosted=["MobilePhoneNumber", "Email1Address"])
    p = props(stored)
    assert p["TEL"] == ["TEL;TYPE=cell;X-SERVICE=signal:+1 555 0100", "TEL;TYPE=home:+1 555 0103"]
    assert p["EMAIL"] == ["EMAIL;TYPE=work;X-CUSTOM=yes:john@work.example", "EMAIL:fourth@example.com"]


def test_add_gets_a_fresh_uid_and_vcard_30() -> None:
    first = from_application_data(app(c("CompanyName", "Acme")), "16.1")
    second = from_application_data(app(c("CompanyName", "Acme")), "16.1")
    assert_valid(first)
    assert props(first)["UID"] != props(second)["UID"]
    assert lines(first)[1] == "VERSION:3.0" and props(first)["FN"] == ["FN:Acme"]
    assert props(first)["N"] == ["N:;;;;"]
    nothing = from_application_data(app(), "16.1")
    assert_valid(nothing)


# --- details of the vCard syntax ----------------------------------------------------------------------------

def test_long_lines_are_folded_without_splitting_characters_and_read_back() -> None:
    note = "é" * 100 + " ünïcödé, with; specials\\ and\nlines"
    stored = from_application_data(app(c("LastName", "X"), c("Body", note)), "2.5")
    assert_valid(stored)
    element = to_application_data(stored, "2.5", BodyOptions())
    assert fields(element)["Body"] == note.replace("\n", "\r\n")


def test_type_parameter_forms_are_equivalent() -> None:
    for tel in ("TEL;TYPE=work,fax:1", "TEL;TYPE=work;TYPE=fax:1", 'TEL;TYPE="work,fax":1', "TEL;WORK;FAX:1",
                "tel;type=WORK;type=FAX:1"):
        card = f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\nN:x;;;;\r\n{tel}\r\nEND:VCARD\r\n"
        assert fields(to_application_data(card, "14.1", PLAIN))["BusinessFaxNumber"] == "1", tel


def test_birthday_dates_are_rounded_to_the_nearest_day() -> None:
    for sent, stored in (("1980-05-16T22:00:00.000Z", "BDAY:1980-05-17"), ("1980-05-17T07:00:00.000Z",
                         "BDAY:1980-05-17"), ("19800517T000000Z", "BDAY:1980-05-17"),
                         ("1604-05-17T00:00:00.000Z", "BDAY;X-APPLE-OMIT-YEAR=1604:1604-05-17")):
        assert props(from_application_data(app(c("Birthday", sent)), "14.1"))["BDAY"] == [stored], sent
    card = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:x\r\nN:x;;;;\r\nBDAY:--0517\r\nEND:VCARD\r\n"
    assert fields(to_application_data(card, "14.1", PLAIN))["Birthday"] == "1604-05-17T00:00:00.000Z"


@pytest.mark.parametrize("data", [
    app(E("Email", "Subject", text="x")),
    app(c("FirstName", "a"), c("FirstName", "b")),
    app(c("Birthday", "yesterday")),
    app(c("Birthday", "2023-02-29T00:00:00.000Z")),
    app(c("Picture", "not base64!")),
    app(c("Picture", "A" * (PICTURE_MAX + 4))),
    app(E("Contacts", "FirstName", [c("LastName", "x")])),
    app(E("Contacts", "Categories", [c("Child", "x")])),
    app(E("Contacts2", "FirstName", text="x")),
    app(c("FirstName", "x" * 70000)),
    E("AirSync", "Add"),
])
def test_bad_device_data_is_an_item_error(data: Element) -> None:
    with pytest.raises(ItemError):
        from_application_data(data, "14.1")


@pytest.mark.parametrize("text", ["", "hello", "BEGIN:VCARD\r\nFN:x\r\n", "END:VCARD\r\n", b"\xff\xfe", 42])
def test_text_without_a_vcard_is_an_item_error(text: object) -> None:
    with pytest.raises(ItemError):
        to_application_data(text, "14.1", PLAIN)  # type: ignore[arg-type]


def test_bad_version_and_options_are_item_errors() -> None:
    with pytest.raises(ItemError):
        to_application_data(GOOGLE, "13.0", PLAIN)
    with pytest.raises(ItemError):
        to_application_data(GOOGLE, "14.1", None)  # type: ignore[arg-type]
    with pytest.raises(ItemError):
        from_application_data(app(), "1.0")


# --- fuzzing ------------------------------------------------------------------------------------------------

VCARD_BITS = st.sampled_from([
    "BEGIN:VCARD", "END:VCARD", "VERSION:2.1", "VERSION:3.0", "VERSION:4.0", "N:a;b;c;d;e;f", "FN:x\\", "ORG:;;",
    "TEL;TYPE=work,fax:1", "TEL;WORK;CELL:2", "TEL;VALUE=uri:tel:", "EMAIL:<>", "ADR;TYPE=home:;;;", "ADR:",
    "BDAY:--0229", "BDAY:0000-00-00", "BDAY:99999999", "BDAY;X-APPLE-OMIT-YEAR=1604:1604-02-29",
    "ANNIVERSARY:2001-13-40", "PHOTO;ENCODING=b:!!!", "PHOTO:data:image/png;base64,", "PHOTO:data:,%ff",
    "NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=nope:=C3=", "NOTE;QUOTED-PRINTABLE:a=", "item1.X-ABLabel:_$!<>!$_",
    "item1.TEL:3", 'X-X;A="unterminated:1', "CATEGORIES:,,,", "RELATED;TYPE=child;VALUE=text:\\,",
    "IMPP:xmpp:", "X-ABRELATEDNAMES:z", " folded", "\ttab", "=", ":", ";", "\\", "\x00", "\ud800"])
VCARD_TEXT = st.lists(st.one_of(VCARD_BITS, st.text(max_size=30)), max_size=30).map("\r\n".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VCARD_TEXT, st.sampled_from(VERSIONS))
def test_any_vcard_text_gives_an_item_or_item_error(text: str, version: str) -> None:
    try:
        element = to_application_data(text, version, PLAIN)
    except ItemError:
        return
    assert decode(encode(element)) == element
    stored = from_application_data(element, version, text)     # a Change against the same text
    card = parse_vcard(stored)
    assert {"VERSION", "UID", "FN", "N"} <= {p.name for p in card.props}
    assert to_application_data(stored, version, PLAIN) == element


CONTACT_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LEAF_NAMES = sorted(n for n in FIELDS if n not in ("Categories", "Children", "Body"))


def random_field(draw: st.DrawFn) -> Element:
    from gateway.activesync.contact_item import _namespace
    name = draw(st.sampled_from([*LEAF_NAMES, "Categories", "Children", "Body", "WeightedRank", "Bogus"]))
    ns = _namespace(name) if name != "Bogus" else draw(st.sampled_from(["Contacts", "Email"]))
    if name in ("Categories", "Children"):
        item = "Category" if name == "Categories" else "Child"
        return E(ns, name, [E("Contacts", item, text=t) for t in draw(st.lists(CONTACT_TEXT, max_size=3))])
    if name in ("Birthday", "Anniversary") and draw(st.booleans()):
        return E(ns, name, text=draw(st.dates()).isoformat() + "T" + draw(st.sampled_from(["00", "11", "12", "23"]))
                 + ":00:00.000Z")
    if name == "Picture" and draw(st.booleans()):
        return E(ns, name, text=base64.b64encode(draw(st.binary(max_size=64))).decode())
    return E(ns, "FirstName" if name == "Bogus" else name, text=draw(st.one_of(CONTACT_TEXT, st.none())))


@st.composite
def application_data(draw: st.DrawFn) -> Element:
    return app(*[random_field(draw) for _ in range(draw(st.integers(0, 12)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(application_data(), st.sampled_from(VERSIONS), st.sampled_from([None, APPLE, THUNDERBIRD, VCARD21, PREVIOUS]))
def test_any_application_data_gives_a_valid_vcard_or_item_error(data: Element, version: str,
                                                               previous: str | None) -> None:
    try:
        stored = from_application_data(data, version, previous)
    except ItemError:
        return
    assert_valid(stored, previous or "")
    element = to_application_data(stored, version, PLAIN)
    assert decode(encode(element)) == element
    again = from_application_data(element, version, stored)
    assert to_application_data(again, version, PLAIN) == element    # stable after one round


def test_a_nested_vcard_does_not_end_the_outer_one() -> None:
    # Found by hypothesis: the nested card's END:VCARD was read as a property of the outer card.
    text = "BEGIN:VCARD\r\nBEGIN:VCARD\r\nEND:VCARD\r\nVERSION:2.1\r\nEND:VCARD"
    element = to_application_data(text, "14.1", PLAIN)
    stored = from_application_data(element, "14.1", text)
    assert {"VERSION", "UID", "FN", "N"} <= {p.name for p in parse_vcard(stored).props}
    assert to_application_data(stored, "14.1", PLAIN) == element



def test_an_email_line_without_an_address_is_not_sent() -> None:
    # Found by hypothesis: "EMAIL:<>" went out as Email1Address "<>" and a Change read it back as empty.
    text = "BEGIN:VCARD\r\nEMAIL:<>\r\nEND:VCARD"
    for version in ("2.5", "16.1"):
        element = to_application_data(text, version, PLAIN)
        assert element.find("Email1Address", "Contacts") is None
        stored = from_application_data(element, version, text)
        assert "EMAIL:<>" in stored and to_application_data(stored, version, PLAIN) == element
