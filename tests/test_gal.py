"""The global address list: LDAP (a real slapd) and a shared CardDAV book (the session Radicale) merged with the
directory; Search GAL, ResolveRecipients (certificates, photos) and Find through the commands and through a
gateway driven by pyactivesync; escaping, failing and hanging sources, and no password in the logs."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import uuid
from contextlib import AsyncExitStack
from types import SimpleNamespace

import pytest
import pytest_asyncio
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ldap3.operation.search import parse_filter
from pyactivesync import Client

from adapters.dav import CardDavContactStore
from adapters.errors import AuthenticationFailed, BackendUnavailable, NotFound
from adapters.interfaces import Credentials
from adapters.ldap import LdapDirectory, LdapSettings, search_filter
from fixtures_ldap import LDAP_PEOPLE, LDAP_READER, Slapd, fake_jpeg, ldif, people
from gateway import tls
from gateway.activesync import wbxml
from gateway.activesync.commands import EasError
from gateway.activesync.commands import find as find_command
from gateway.activesync.commands import gal as gal_commands
from gateway.activesync.wbxml import Element
from gateway.config import ConfigError, from_dict
from gateway.demo.procs import free_port
from gateway.services.directory import StaticDirectory, parse_users
from gateway.services.gal import Gal, GalEntry, entry_of_vcard, merge
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

PHONE, TABLET = "phone@example.test", "tablet@example.test"
WBXML = "application/vnd.ms-sync.wbxml"
RR = "ResolveRecipients"
HANK_PHOTO = fake_jpeg(300, 7)
IVY_PHOTO = fake_jpeg(200, 8)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A vCard 4 photo as a data: URI. Not stored in the shared book: Radicale re-serializes cards with vobject,
# which cuts such a value at its comma.
IVY_V4 = ("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:ivy\r\nFN:Ivy Card\r\nN:Card;Ivy;;;\r\n"
          "EMAIL:ivy@partner.test\r\nTEL;VALUE=uri;TYPE=\"voice,home\":tel:+1-555-0203\r\n"
          f"PHOTO:data:image/jpeg;base64,{_b64(IVY_PHOTO)}\r\nEND:VCARD\r\n")

# Cards of the shared book: vCard 3 with an inline photo, vCard 4, and a second view of an LDAP person (Erin),
# whose home phone only the book knows.
CARDS = {
    "hank": ("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:hank\r\nFN:Hank Card\r\nN:Card;Hank;;;\r\n"
             "EMAIL;TYPE=INTERNET:hank.other@partner.test\r\nEMAIL;TYPE=INTERNET,PREF:hank@partner.test\r\n"
             "TEL;TYPE=CELL:+1 555 0201\r\nTEL;TYPE=WORK,VOICE:+1 555 0202\r\nORG:Partner Ltd;Sales\r\n"
             f"TITLE:Buyer\r\nPHOTO;ENCODING=b;TYPE=JPEG:{_b64(HANK_PHOTO)}\r\nEND:VCARD\r\n"),
    "ivy": IVY_V4.replace(f"PHOTO:data:image/jpeg;base64,{_b64(IVY_PHOTO)}\r\n", ""),
    "erin": ("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:erin-card\r\nFN:Erin From The Book\r\nN:Ldap;Erin;;;\r\n"
             "EMAIL:erin@example.test\r\nTEL;TYPE=HOME:+1 555 0204\r\nEND:VCARD\r\n"),
}


# --- fixtures ----------------------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module")
async def shared_book(radicale, certs, service_user) -> str:
    """A book owned by the service account (which may write its own collections) with CARDS in it."""
    store = CardDavContactStore(radicale.url, Credentials(*service_user), str(certs.ca_cert))
    async with AsyncExitStack() as stack:
        await store.start(stack)
        book = await store.create_address_book(f"GAL {uuid.uuid4().hex[:6]}")
        for uid, card in CARDS.items():
            await store.put_contact(book.url, card, uid)
    return book.url


def _config(certs, *, radicale=None, service_user=None, book="", **gal):
    backends = {"mail": {"type": "imap", "url": "imaps://127.0.0.1:1"}}
    if radicale is not None:
        backends["dav"] = {"type": "carddav", "url": radicale.url, "service_login": service_user[0],
                           "service_password": service_user[1]}
        gal.update(carddav_backend="dav", carddav_book=book)
    return from_dict({"tls": {"ca_file": str(certs.ca_cert)}, "backends": backends,
                      "domains": {"example.test": {"imap": "mail"}}, "gal": gal})


def _directory(config) -> StaticDirectory:
    rows = [{"address": PHONE, "name": "Phone Example"}, {"address": TABLET, "name": "Tablet Example"},
            {"address": "alice@example.test", "name": "Alice Example", "aliases": ["ali@example.test"]}]
    return StaticDirectory(config, parse_users(config, {"user": rows}))


def _ldap(slapd: Slapd, *, port: int | None = None, password: str = LDAP_READER[1], scheme: str = "ldaps") -> dict:
    port = port or (slapd.ldaps_port if scheme == "ldaps" else slapd.port)
    return {"ldap_url": f"{scheme}://127.0.0.1:{port}", "ldap_base": LDAP_PEOPLE, "ldap_bind_dn": LDAP_READER[0],
            "ldap_password": password}


def _gal(certs, **kw) -> Gal:
    config = _config(certs, **kw)
    return Gal.from_config(config, _directory(config))


@pytest_asyncio.fixture
async def gal(slapd, certs, radicale, service_user, shared_book):
    made = _gal(certs, radicale=radicale, service_user=service_user, book=shared_book, **_ldap(slapd))
    yield made
    await made.close()


def _call(gal: Gal, body: Element | None = None, version: tuple[int, int] = (16, 1)) -> SimpleNamespace:
    """What the GAL commands read of an EasCall."""
    return SimpleNamespace(services=SimpleNamespace(gal=gal), ctx=SimpleNamespace(directory=gal._directory),
                           version_tuple=version, body=body)


# --- the LDAP adapter -----------------------------------------------------------------------------------

def _settings(slapd, certs, scheme="ldaps", **kw) -> LdapSettings:
    port = slapd.ldaps_port if scheme == "ldaps" else slapd.port
    base = {"base": LDAP_PEOPLE, "bind_dn": LDAP_READER[0], "password": LDAP_READER[1],
            "ca_file": str(certs.ca_cert), "filter_template": "(|(cn={text}*)(mail={text}*)(uid={text}*))"}
    return LdapSettings.from_url(f"{scheme}://127.0.0.1:{port}", **{**base, **kw})


@pytest.mark.parametrize("scheme", ["ldaps", "ldap"])
async def test_ldap_over_ldaps_and_starttls_maps_inetorgperson(slapd, certs, scheme):
    settings = _settings(slapd, certs, scheme)
    assert settings.tls_mode == ("implicit" if scheme == "ldaps" else "starttls")
    (frank,) = await LdapDirectory(settings).search("frank", 10)
    assert frank["email"] == ["frank@example.test", "f.ldap@example.test"]
    assert frank["display_name"] == ["Frank Ldap"] and frank["home_phone"] == ["+1 555 0103"]
    assert frank["certificates"] == slapd.people["frank"]["userCertificate;binary"]
    (erin,) = await LdapDirectory(settings).search("erin@", 10)
    assert erin["picture"] == slapd.people["erin"]["jpegPhoto"]
    assert (erin["office"], erin["company"], erin["mobile_phone"]) == (["Building 4"], ["Example Corp"],
                                                                       ["+1 555 0102"])


async def test_ldap_errors_become_adapter_errors_without_the_password(slapd, certs, workdir):
    with pytest.raises(AuthenticationFailed) as refused:
        await LdapDirectory(_settings(slapd, certs, password="not-the-secret-1")).search("erin", 5)
    assert "not-the-secret-1" not in str(refused.value) and "not-the-secret-1" not in repr(refused.value)
    nobody_there = LdapSettings.from_url(f"ldaps://127.0.0.1:{free_port()}", base=LDAP_PEOPLE,
                                         ca_file=str(certs.ca_cert), timeout=2)
    with pytest.raises(BackendUnavailable):
        await LdapDirectory(nobody_there).search("erin", 5)
    # A server whose certificate another CA signed is refused, on both ports.
    other, _ = tls.init_certs(workdir / f"other-ca-{free_port()}", "other.test")
    for scheme in ("ldaps", "ldap"):
        with pytest.raises(BackendUnavailable):
            await LdapDirectory(_settings(slapd, certs, scheme, ca_file=str(other.ca_cert))).search("erin", 5)
    assert "ldap-reader-secret" not in repr(_settings(slapd, certs))


async def test_anonymous_binds_see_nothing(slapd, certs):
    # slapd hides what an anonymous client may not read, the search base included.
    with pytest.raises(NotFound):
        await LdapDirectory(_settings(slapd, certs, bind_dn="", password="")).search("erin", 5)
    assert len(await LdapDirectory(_settings(slapd, certs)).search("erin", 5)) == 1


@pytest.mark.parametrize("hostile", ["*", ")(uid=*", "*)(|(cn=*", "\\", "\x00", "(", "a*)(objectClass=*"])
async def test_hostile_text_is_matched_literally(slapd, certs, hostile):
    found = await LdapDirectory(_settings(slapd, certs)).search(hostile, 50)
    # Unescaped, every one of these would match (or break) the whole tree; escaped, only a name that really
    # starts with the text does: "*Star (Quoted) Ldap" for "*".
    assert [p["email"][0] for p in found] == (["star@example.test"] if hostile == "*" else [])
    assert len(await LdapDirectory(_settings(slapd, certs)).search("(Quoted", 50)) == 0  # not a prefix
    assert len(await LdapDirectory(_settings(slapd, certs)).search("*Star (Quoted)", 50)) == 1


@given(st.text(min_size=1, max_size=40))  # empty text never reaches the server
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_escaped_filters_keep_the_template_shape(text):
    template = "(&(objectClass=person)(|(cn={text}*)(mail={text})))"

    def shape(node) -> list:
        return [node.tag, [shape(c) for c in node.elements]]
    parsed = parse_filter(search_filter(template, text), None, False, True, None, False)
    plain = parse_filter(search_filter(template, "x"), None, False, True, None, False)
    assert shape(parsed) == shape(plain)
    assert not re.search(r"[*()\x00]|\\(?![0-9a-f]{2})", search_filter("{text}", text))


# --- vCards from the shared book ------------------------------------------------------------------------

def test_vcards_become_gal_entries():
    hank = entry_of_vcard(CARDS["hank"])
    assert (hank.email, hank.aliases, hank.first_name, hank.last_name) == (
        "hank@partner.test", ("hank.other@partner.test",), "Hank", "Card")
    assert (hank.mobile_phone, hank.phone, hank.company, hank.title) == ("+1 555 0201", "+1 555 0202",
                                                                        "Partner Ltd", "Buyer")
    assert hank.picture == HANK_PHOTO
    ivy = entry_of_vcard(IVY_V4)
    assert (ivy.display_name, ivy.home_phone, ivy.picture) == ("Ivy Card", "+1-555-0203", IVY_PHOTO)
    key = ("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:K\r\nEMAIL:k@x.test\r\nKEY;ENCODING=b;TYPE=X509:AAEC\r\n"
           "PHOTO;VALUE=uri:https://example.test/k.jpg\r\nEND:VCARD\r\n")
    assert entry_of_vcard(key).certificates == (b"\x00\x01\x02",) and entry_of_vcard(key).picture is None
    assert entry_of_vcard("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:No Mail\r\nEND:VCARD\r\n") is None
    assert entry_of_vcard("not a card") is None


@given(st.text(max_size=300))
@settings(max_examples=200)
def test_any_text_gives_an_entry_or_none(text):
    card = f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\nEMAIL:a@b.test\r\n{text}\r\nEND:VCARD\r\n"
    for candidate in (text, card):
        assert entry_of_vcard(candidate) is None or isinstance(entry_of_vcard(candidate), GalEntry)


# --- merging and the service ----------------------------------------------------------------------------

def test_merge_keeps_directory_order_and_fills_gaps():
    own = [GalEntry("Zed Own", "zed@example.test"), GalEntry("Amy Own", "amy@example.test")]
    others = [GalEntry("Bob Other", "bob@other.test"), GalEntry("Zed Elsewhere", "zed@example.test", phone="1"),
              GalEntry("Amy Alias", "amy.alias@example.test", aliases=("AMY@example.test",), title="Boss"),
              GalEntry("Abe Other", "abe@other.test")]
    merged = merge(own, others)
    assert [e.email for e in merged] == ["zed@example.test", "amy@example.test", "abe@other.test", "bob@other.test"]
    assert merged[0].display_name == "Zed Own" and merged[0].phone == "1"
    assert merged[1].title == "Boss" and merged[1].aliases == ("amy.alias@example.test",)


async def test_sources_merge_directory_first(gal, slapd):
    phone = await gal.search("phone", 100)
    assert len(phone) == 1
    assert (phone[0].display_name, phone[0].email, phone[0].phone, phone[0].title) == (
        "Phone Example", PHONE, "+1 555 0199", "Tester")
    found = await gal.search("ldap", 100)
    # By name: "*Star..." sorts before the letters.
    assert [e.email for e in found] == ["star@example.test", "erin@example.test", "frank@example.test",
                                        "gina@example.test", "unal@example.test"]
    erin = found[1]
    # LDAP's fields win over the book's, which fills in what LDAP lacks.
    assert (erin.display_name, erin.phone, erin.home_phone) == ("Erin Ldap", "+1 555 0101", "+1 555 0204")
    assert [e.email for e in await gal.search("card", 100)] == ["hank@partner.test", "ivy@partner.test"]
    assert [e.email for e in await gal.search("ünal", 100)] == ["unal@example.test"]
    everyone = await gal.search("e", 100)
    assert [e.email for e in everyone[:3]] == ["alice@example.test", PHONE, TABLET]  # the directory's first
    assert [e.email for e in everyone[3:]] == ["erin@example.test"]


async def test_resolve_exact_addresses_aliases_and_names(gal, slapd):
    (frank,) = await gal.resolve("F.Ldap@example.test")
    assert frank.email == "frank@example.test" and frank.certificates
    (alice,) = await gal.resolve("ali@example.test")
    assert alice.email == "alice@example.test"
    assert len(await gal.resolve("Ldap")) == 5
    assert await gal.resolve("nobody@nowhere.test") == []


async def test_a_dead_or_hanging_source_leaves_the_directory_intact(certs, caplog):
    dead = _gal(certs, ldap_url=f"ldaps://127.0.0.1:{free_port()}", ldap_base="dc=x", ldap_bind_dn="cn=r",
                ldap_password="dead-ldap-secret-5", timeout=2)
    assert [e.email for e in await dead.search("phone", 10)] == [PHONE]
    assert "dead-ldap-secret-5" not in caplog.text and "GAL source ldap skipped" in caplog.text
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # accepts connections (the kernel does) and never answers: a hung server
    try:
        hung = _gal(certs, ldap_url=f"ldap://127.0.0.1:{listener.getsockname()[1]}", ldap_tls="none",
                    ldap_base="dc=x", timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert [e.email for e in await hung.search("tablet", 10)] == [TABLET]
        assert loop.time() - started < 3
        # Skipped for cache_ttl now: the next search does not wait again.
        started = loop.time()
        assert [e.email for e in await hung.resolve(PHONE)] == [PHONE]
        assert loop.time() - started < 0.3
    finally:
        listener.close()


async def test_answers_are_cached_for_the_ttl(certs, workdir):
    server = Slapd(workdir / f"slapd-cache-{free_port()}", certs, ldif(people())).start()
    now = [1000.0]
    try:
        config = _config(certs, cache_ttl=30, **_ldap(server))
        gal = Gal(_directory(config), Gal.from_config(config, _directory(config)).sources, 30, 5,
                  clock=lambda: now[0])
        assert [e.email for e in await gal.search("gina", 10)] == ["gina@example.test"]
    finally:
        server.stop()
    now[0] += 29
    assert [e.email for e in await gal.search("gina", 10)] == ["gina@example.test"]  # from the cache
    now[0] += 2
    assert await gal.search("gina", 10) == []  # expired, and the server is gone


def test_config_checks(certs, radicale, service_user):
    with pytest.raises(ConfigError, match="gal.ldap_url"):
        _config(certs, ldap_url="http://ldap.example.test")
    with pytest.raises(ConfigError, match="gal.ldap_filter"):
        _config(certs, ldap_filter="(cn=*)")
    with pytest.raises(ConfigError, match="gal.ldap_attributes.shoe_size|gal.ldap_attributes"):
        _config(certs, ldap_attributes={"shoe_size": "x"})
    config = _config(certs, carddav_backend="mail", carddav_book="x/")
    with pytest.raises(ConfigError, match="gal.carddav_backend"):
        Gal.from_config(config, _directory(config))
    config = _config(certs, radicale=radicale, service_user=service_user, book="")
    with pytest.raises(ConfigError, match="gal.carddav_book"):
        Gal.from_config(config, _directory(config))
    assert "secret" not in repr(_config(certs, ldap_password="secret-9").gal)


# --- the commands, in process ---------------------------------------------------------------------------

def _search_store(query: str, *options: Element) -> Element:
    return Element("Search", "Store", [Element("Search", "Name", text="GAL"), Element("Search", "Query", text=query),
                                       Element("Search", "Options", list(options))])


def _picture(ns: str, max_size: int | None = None, max_pictures: int | None = None) -> Element:
    children = []
    if max_size is not None:
        children.append(Element(ns, "MaxSize", text=str(max_size)))
    if max_pictures is not None:
        children.append(Element(ns, "MaxPictures", text=str(max_pictures)))
    return Element(ns, "Picture", children)


def _props(result: Element, props: str = "Properties", ns: str = "Search") -> dict[str, object]:
    out: dict[str, object] = {}
    for p in result.find(props, ns).children:
        if p.name == "Picture":
            out["Picture"] = (p.text_of("Status", "GAL"), p.find("Data", "GAL").opaque
                              if p.find("Data", "GAL") is not None else None)
        else:
            out[p.name] = p.text
    return out


async def test_search_gal_store_with_pictures(gal, slapd):
    # MS-ASCMD 4.13.1: Search the GAL for "Anat" with a Range of 0-1; here "ldap" with a window of 0-2.
    store = await gal_commands.search_gal_store(_call(gal), _search_store(
        "ldap", Element("Search", "Range", text="1-3"), _picture("Search", max_size=1000, max_pictures=5)))
    wbxml.decode(wbxml.encode(Element("Search", "Search", [store])))  # it encodes with the code pages
    assert store.text_of("Status", "Search") == "1"
    assert (store.text_of("Range", "Search"), store.text_of("Total", "Search")) == ("1-3", "5")
    erin, frank, gina = [_props(r) for r in store.findall("Result", "Search")]
    assert erin["EmailAddress"] == "erin@example.test" and erin["Office"] == "Building 4"
    assert (erin["Company"], erin["Title"], erin["Phone"], erin["Alias"]) == ("Example Corp", "Engineer",
                                                                              "+1 555 0101", "erin")
    assert erin["Picture"] == ("1", slapd.people["erin"]["jpegPhoto"][0])
    assert frank["Picture"] == ("173", None) and frank["HomePhone"] == "+1 555 0103"
    assert gina["Picture"] == ("174", None)  # 4000 bytes, over MaxSize
    limited = await gal_commands.search_gal_store(_call(gal), _search_store(
        "ldap", _picture("Search", max_pictures=1)))
    assert [_props(r)["Picture"][0] for r in limited.findall("Result", "Search")] == ["173", "1", "173", "175", "173"]
    cards = await gal_commands.search_gal_store(_call(gal), _search_store("card", _picture("Search")))
    assert [_props(r)["Picture"] for r in cards.findall("Result", "Search")] == [("1", HANK_PHOTO), ("173", None)]
    older = await gal_commands.search_gal_store(_call(gal, version=(14, 0)), _search_store(
        "card", _picture("Search")))
    assert all("Picture" not in _props(r) for r in older.findall("Result", "Search"))
    for bad in ("9-1", "x", "0-"):
        store = await gal_commands.search_gal_store(_call(gal), _search_store(
            "ldap", Element("Search", "Range", text=bad)))
        assert store.text_of("Status", "Search") == "2"


def _rr(*to: str, retrieval: str | None = None, picture: Element | None = None, **counts: int) -> Element:
    options = [Element(RR, "CertificateRetrieval", text=retrieval)] if retrieval else []
    options += [Element(RR, name, text=str(n)) for name, n in counts.items()]
    options += [picture] if picture is not None else []
    return Element(RR, "ResolveRecipients", [*(Element(RR, "To", text=t) for t in to),
                                             Element(RR, "Options", options)])


async def test_resolve_recipients_with_certificates_and_pictures(gal, slapd):
    cert = slapd.people["frank"]["userCertificate;binary"][0]
    doc = await gal_commands.resolve_recipients(_call(gal, _rr("frank@example.test", "Ldap", "hank@partner.test",
                                                               retrieval="2", picture=_picture(RR))))
    wbxml.decode(wbxml.encode(doc))
    frank, ldap, hank = doc.findall("Response")
    recipient = frank.find("Recipient")
    assert (frank.text_of("Status"), recipient.text_of("EmailAddress")) == ("1", "frank@example.test")
    certificates = recipient.find("Certificates")
    assert (certificates.text_of("Status"), certificates.text_of("CertificateCount")) == ("1", "1")
    assert base64.b64decode(certificates.text_of("Certificate")) == cert
    assert recipient.find("Picture").text_of("Status") == "173"
    assert ldap.text_of("Status") == "2" and ldap.text_of("RecipientCount") == "5"
    hank_recipient = hank.find("Recipient")
    assert hank_recipient.find("Certificates").text_of("Status") == "7"
    assert hank_recipient.find("Picture").find("Data").opaque == HANK_PHOTO
    mini = await gal_commands.resolve_recipients(_call(gal, _rr("frank@example.test", retrieval="3")))
    assert base64.b64decode(mini.find("Response").find("Recipient").find("Certificates")
                            .text_of("MiniCertificate")) == cert
    capped = await gal_commands.resolve_recipients(_call(gal, _rr("frank@example.test", retrieval="2",
                                                                  MaxCertificates=0)))
    capped_certs = capped.find("Response").find("Recipient").find("Certificates")
    assert capped_certs.text_of("Status") == "8" and capped_certs.find("Certificate") is None
    partial = await gal_commands.resolve_recipients(_call(gal, _rr("Ldap", MaxAmbiguousRecipients=2)))
    assert partial.find("Response").text_of("Status") == "3" and len(partial.find("Response").findall("Recipient")) == 2
    for bad in (_rr("x", retrieval="9"), _rr("x", MaxAmbiguousRecipients=-1), _rr(*["x"] * 101),
                _rr("x", picture=Element(RR, "Picture", [Element(RR, "MaxSize", text="big")]))):
        with pytest.raises(EasError):
            await gal_commands.resolve_recipients(_call(gal, bad))


def _find_gal(query: str | None, *options: Element, name: str = "GalSearchCriterion") -> Element:
    criterion = [Element("Find", "Query", text=query)] if query is not None else []
    return Element("Find", "Find", [Element("Find", "SearchId", text=str(uuid.uuid4())), Element(
        "Find", "ExecuteSearch", [Element("Find", name, [*criterion, Element("Find", "Options", list(options))])])])


async def test_find_in_the_gal(gal, slapd):
    doc = await find_command.run(_call(gal, _find_gal("Card", Element("Find", "Range", text="0-0"),
                                                      _picture("Find", max_size=100000))))
    wbxml.decode(wbxml.encode(doc))
    assert doc.text_of("Status") == "1"
    response = doc.find("Response")
    assert response.text_of("Store", "ItemOperations") == "GAL" and response.text_of("Status") == "1"
    assert (response.text_of("Range"), response.text_of("Total")) == ("0-0", "2")
    (hank,) = [_props(r, ns="Find") for r in response.findall("Result")]
    assert (hank["DisplayName"], hank["EmailAddress"], hank["MobilePhone"]) == ("Hank Card", "hank@partner.test",
                                                                               "+1 555 0201")
    assert hank["Picture"] == ("1", HANK_PHOTO)
    nobody = await find_command.run(_call(gal, _find_gal("zzzz-nobody")))
    assert nobody.find("Response").text_of("Total") == "0" and nobody.find("Response").find("Result") is None
    assert (await find_command.run(_call(gal, _find_gal(None)))).text_of("Status") == "2"
    assert (await find_command.run(_call(gal, _find_gal("x" * 257)))).text_of("Status") == "2"
    assert (await find_command.run(_call(gal, _find_gal("Card", Element("Find", "Range", text="5-1"))))
            ).text_of("Status") == "2"


_texts = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["0-1", "1", "99-0", "0-99999", "-1", "ldap"]))
_names = st.sampled_from(["To", "Options", "CertificateRetrieval", "MaxAmbiguousRecipients", "MaxCertificates",
                          "Availability", "StartTime", "EndTime", "Picture", "MaxSize", "MaxPictures", "Query",
                          "Range", "GalSearchCriterion", "ExecuteSearch", "Store", "Name", "Status"])


def _elements(ns: str):
    leaf = st.builds(lambda n, t: Element(ns, n, text=t), _names, _texts)
    return st.recursive(leaf, lambda kids: st.builds(lambda n, c: Element(ns, n, c), _names,
                                                     st.lists(kids, max_size=4)), max_leaves=12)


@given(rr=_elements(RR), find=_elements("Find"), search=_elements("Search"))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_requests_give_answers_or_protocol_errors(certs, rr, find, search):
    gal = _gal(certs)  # the directory alone: fast, and every branch of the commands still runs

    async def run() -> None:
        for command, body in ((gal_commands.resolve_recipients, Element(RR, "ResolveRecipients", [rr])),
                              (find_command.run, Element("Find", "Find", [find]))):
            try:
                wbxml.encode(await command(_call(gal, body)))
            except EasError:
                pass
        wbxml.encode(await gal_commands.search_gal_store(_call(gal), Element("Search", "Store", [search])))
    asyncio.run(run())


# --- end to end through a gateway -----------------------------------------------------------------------

def _gal_toml(ldap: dict, extra: dict | None = None) -> str:
    values = {**ldap, **(extra or {})}
    return "[gal]\n" + "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in values.items())


@pytest.fixture(scope="module")
def gal_gateway(workdir, certs, dovecot, slapd, radicale, service_user, shared_book):
    root = workdir / f"gal-{free_port()}"
    https = free_port()
    extra = (f'[backends.dav]\ntype = "carddav"\nurl = "{radicale.url}"\nservice_login = "{service_user[0]}"\n'
             f'service_password = "{service_user[1]}"\n[domains."example.test"]\nimap = "dovecot"\n'
             '[log]\nlevel = "debug"\n'
             + _gal_toml(_ldap(slapd), {"carddav_backend": "dav", "carddav_book": shared_book}))
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([PHONE, TABLET]))
    proc = start_gateway(root, [https])
    yield {"port": https, "ca": str(certs.ca_cert), "root": root}
    stop_gateway(proc)


def _client(gw, users, who=TABLET) -> Client:
    c = Client(f"127.0.0.1:{gw['port']}", who, users[who], device_id=uuid.uuid4().hex[:16].upper(),
               verify_ssl=True)
    c._transport.session.verify = gw["ca"]
    c._transport.session.trust_env = False
    return c


def _post(gw, c: Client, who, users, cmd, body: Element, version="16.1") -> Element:
    headers = {"Content-Type": WBXML, "MS-ASProtocolVersion": version, "X-MS-PolicyKey": str(c._transport.policy_key)}
    params = {"Cmd": cmd, "User": who, "DeviceId": c._transport.device_id, "DeviceType": "TestPhone"}
    response = requests.post(f"https://127.0.0.1:{gw['port']}/Microsoft-Server-ActiveSync", params=params,
                             data=wbxml.encode(body), headers=headers, auth=(who, users[who]), verify=gw["ca"],
                             timeout=30)
    assert response.status_code == 200, response.text
    return wbxml.decode(response.content)


def test_pyactivesync_search_gal_reaches_ldap_and_carddav(gal_gateway, users):
    with _client(gal_gateway, users) as c:
        erin = next(g for g in c.search_gal("erin") if g.email_address == "erin@example.test")
        assert (erin.display_name, erin.phone, erin.office, erin.company, erin.title, erin.mobile_phone) == (
            "Erin Ldap", "+1 555 0101", "Building 4", "Example Corp", "Engineer", "+1 555 0102")
        (phone,) = c.search_gal("phone")
        assert (phone.email_address, phone.display_name, phone.phone) == (PHONE, "Phone Example", "+1 555 0199")
        assert [g.email_address for g in c.search_gal("card")] == ["hank@partner.test", "ivy@partner.test"]


def test_pyactivesync_finds_and_resolves_through_the_gateway(gal_gateway, users, slapd):
    with _client(gal_gateway, users) as c:
        found = c.find_gal("Card")
        assert [(i.fields["GAL.DisplayName"], i.fields["GAL.EmailAddress"]) for i in found.items] == [
            ("Hank Card", "hank@partner.test"), ("Ivy Card", "ivy@partner.test")]
        assert found.status == "1"
        (frank,) = c.resolve_recipients("frank@example.test")
        assert (frank.display_name, frank.email_address) == ("Frank Ldap", "frank@example.test")
        assert [r.email_address for r in c.resolve_recipients("tablet@example.test")] == [TABLET]
        assert c.resolve_recipients("nobody@nowhere.test") == []
        # Certificates and photos, which pyactivesync does not ask for, with raw requests.
        doc = _post(gal_gateway, c, TABLET, users, "ResolveRecipients",
                    _rr("f.ldap@example.test", "erin@example.test", retrieval="2", picture=_picture(RR, 1000)))
        frank_rr, erin_rr = doc.findall("Response")
        assert base64.b64decode(frank_rr.find("Recipient").find("Certificates").text_of("Certificate")) == \
            slapd.people["frank"]["userCertificate;binary"][0]
        assert erin_rr.find("Recipient").find("Picture").find("Data").opaque == slapd.people["erin"]["jpegPhoto"][0]
        doc = _post(gal_gateway, c, TABLET, users, "Find", _find_gal("gina", _picture("Find", max_size=100000)))
        (gina,) = doc.find("Response").findall("Result")
        assert _props(gina, ns="Find")["Picture"] == ("1", slapd.people["gina"]["jpegPhoto"][0])
    log = (gal_gateway["root"] / "gateway.log").read_text()
    assert LDAP_READER[1] not in log


def test_a_gateway_whose_ldap_is_down_still_answers_from_the_directory(workdir, certs, dovecot, users):
    root = workdir / f"gal-down-{free_port()}"
    https = free_port()
    dead = {"ldap_url": f"ldaps://127.0.0.1:{free_port()}", "ldap_base": LDAP_PEOPLE,
            "ldap_bind_dn": LDAP_READER[0], "ldap_password": "down-ldap-secret-3"}
    extra = '[domains."example.test"]\nimap = "dovecot"\n[log]\nlevel = "debug"\n' + _gal_toml(dead, {"timeout": 2})
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([PHONE, TABLET]))
    proc = start_gateway(root, [https])
    try:
        with _client({"port": https, "ca": str(certs.ca_cert)}, users) as c:
            assert [i.fields["GAL.EmailAddress"] for i in c.find_gal("phone").items] == [PHONE]
            assert [r.email_address for r in c.resolve_recipients(PHONE)] == [PHONE]
    finally:
        stop_gateway(proc)
    log = (root / "gateway.log").read_text()
    assert "GAL source ldap skipped" in log and "down-ldap-secret-3" not in log
