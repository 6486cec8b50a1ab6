"""Pure parts of the ActiveSync front end: the policy document, folder types and ids, sync keys, sync state."""

from __future__ import annotations

import asyncio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.interfaces import Folder
from gateway.activesync import policy, wbxml
from gateway.activesync.commands.sync import _wanted_flags
from gateway.services.mailsync import (FolderState, categories, category_keyword, diff, flag_bits, keyword_category,
                                      rebase)
from gateway.activesync.folders import (DELETED, DRAFTS, INBOX, SENT, USER_MAIL, FolderMap, first_key,
                                        folder_types, next_key, valid_key)
from gateway.activesync.pimfolders import folder_key
from gateway.activesync.wbxml import Element
from gateway.state import open_store


def test_policy_defaults_and_overrides_by_version():
    doc = policy.provision_doc({"DevicePasswordEnabled": 1, "MinDevicePasswordLength": 6,
                                "ApprovedApplicationList": ["abc"]}, "14.1")
    values = {c.name: c.text for c in doc.children}
    assert values["DevicePasswordEnabled"] == "1" and values["MinDevicePasswordLength"] == "6"
    assert values["AllowBluetooth"] == "2" and values["MaxAttachmentSize"] is None
    assert doc.find("ApprovedApplicationList").children[0].text == "abc"
    wbxml.encode(Element("Provision", "Data", [doc]))  # every name exists in the Provision code page
    old = policy.provision_doc({}, "12.0")
    assert len(old.children) == 12 and old.find("AllowBluetooth") is None


@pytest.mark.parametrize("bad", [{"NoSuchSetting": 1}, {"DevicePasswordEnabled": 2}, {"AllowBluetooth": 3},
                                 {"MinDevicePasswordLength": "six"}, {"ApprovedApplicationList": "x"}])
def test_policy_overrides_are_checked(bad):
    assert policy.check_overrides(bad)


def test_wap_policy_for_2_5_is_xml():
    from lxml import etree
    text = policy.wap_provisioning_xml({"DevicePasswordEnabled": 1})
    root = etree.fromstring(text.encode())
    assert root.tag == "wap-provisioningdoc" and b"4131" in text.encode()


def _folder(name, special=None, delim="/"):
    return Folder(name, delim, special, ())


def test_folder_types_special_use_then_names_then_user_mail():
    folders = [_folder("INBOX"), _folder("Entwürfe"), _folder("Drafts", "\\Drafts"), _folder("Sent Items"),
               _folder("Trash", "\\Trash"), _folder("Deleted Items"), _folder("Junk", "\\Junk"),
               _folder("Projects/Sent")]
    types = folder_types(folders)
    assert types["INBOX"] == INBOX and types["Drafts"] == DRAFTS and types["Entwürfe"] == USER_MAIL
    assert types["Sent Items"] == SENT and types["Trash"] == DELETED and types["Deleted Items"] == USER_MAIL
    assert types["Junk"] == USER_MAIL and types["Projects/Sent"] == USER_MAIL


def test_sync_keys_follow_each_other():
    k = first_key()
    assert valid_key(k) and next_key(k) != k and next_key(k) == next_key(k)
    assert valid_key(next_key(next_key(k)))
    for bad in ("", "0", "1", "{x", "abc}1", "{" + "a" * 70 + "}1", "{ab}", "{ab}-1"):
        assert not valid_key(bad)


@given(st.dictionaries(st.integers(1, 2**32 - 1), st.integers(0, 3), max_size=200),
       st.lists(st.integers(1, 2**32 - 1), max_size=50), st.integers(0, 8))
def test_folder_state_round_trips(known, pending, filter_type):
    state = FolderState(7, (12, 40, 33), known, pending, filter_type)
    back = FolderState.load(state.dump())
    assert back == FolderState(7, (12, 40, 33), known, pending, filter_type)


def test_client_read_flag_and_categories_become_imap_flags():
    data = Element("AirSync", "ApplicationData", [
        Element("Email", "Read", text="1"), Element("Email", "Flag", [Element("Email", "Status", text="2")]),
        Element("Email", "Categories", [Element("Email", "Category", text="To Do"),
                                        Element("Email", "Category", text="Blue category")])])
    flags = _wanted_flags(data, {"\\Answered", "Old_one"})
    assert flags == {"\\Answered", "\\Seen", "\\Flagged", "$label4", "Blue_category"}
    assert flag_bits(flags) & 3 == 3 and flag_bits(flags) >> 2 != 0
    cleared = _wanted_flags(Element("AirSync", "ApplicationData", [Element("Email", "Flag"),
                                                                   Element("Email", "Categories")]), flags)
    assert cleared == {"\\Answered", "\\Seen"} and flag_bits(cleared) == 1
    assert _wanted_flags(None, {"\\Seen"}) == {"\\Seen"}
    # A category change alone changes the bits, so other devices hear of it.
    assert flag_bits(["\\Seen", "Work"]) != flag_bits(["\\Seen", "Home"])


async def test_folder_ids_are_stable_and_shared(tmp_path):
    store = open_store("sqlite", path=str(tmp_path / "s.db"), purge_interval=None)
    await store.start()
    try:
        a, b = FolderMap(store), FolderMap(store)  # two nodes
        first = await a.assign("u@x", ["INBOX", "Sent", "Work"])
        assert len(set(first.values())) == 3
        again = await b.assign("u@x", ["INBOX", "Sent", "Work", "New"])
        assert {k: again[k] for k in first} == first and again["New"] not in first.values()
        assert await a.name_of("u@x", again["New"]) == "New"
        await b.rename("u@x", "Work", "Jobs", "/")
        assert await b.id_of("u@x", "Jobs") == first["Work"]
        gone = await a.assign("u@x", ["INBOX", "Sent", "Jobs"])
        assert "New" not in gone
        back = await a.assign("u@x", ["INBOX", "Sent", "Jobs", "New"])
        assert back["New"] != again["New"]  # a folder made again is a new folder
        # DAV folders (NUL-prefixed keys) keep their ids when a mail-only list is assigned.
        cal = folder_key("Calendar", "https://dav/u/calendar/")
        with_dav = await a.assign("u@x", ["INBOX", "Sent", cal])
        kept = await b.assign("u@x", ["INBOX", "Sent", "Archive"], mail_only=True)
        assert kept[cal] == with_dav[cal] and "Archive" in kept
        assert cal not in await a.assign("u@x", ["INBOX"])
    finally:
        await store.close()


def _cert(subject: str, issuer_name: str, key, issuer_key, *, ca=False, days=(-1, 30), eku=None):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def test_validate_cert_statuses():
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID as E

    from gateway.activesync.commands import validatecert as vc
    root_key, mid_key, leaf_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("Root", "Root", root_key, root_key, ca=True, days=(-10, 3650))
    mid = _cert("Mid", "Root", mid_key, root_key, ca=True, days=(-10, 3650))
    now = dt.datetime.now(dt.timezone.utc)
    good = _cert("alice", "Mid", leaf_key, mid_key, eku=[E.EMAIL_PROTECTION])
    assert vc.check(good, [mid], (root,), now) == vc.OK
    assert vc.check(good, [], (root,), now) == vc.UNTRUSTED  # the intermediate is missing
    assert vc.check(good, [mid], (), now) == vc.UNTRUSTED
    assert vc.check(_cert("a", "Mid", leaf_key, mid_key, days=(-30, -1)), [mid], (root,), now) == vc.EXPIRED
    assert vc.check(_cert("a", "Mid", leaf_key, mid_key, eku=[E.SERVER_AUTH]), [mid], (root,), now) == vc.NOT_FOR_EMAIL
    forged = _cert("a", "Mid", leaf_key, other_key, eku=[E.EMAIL_PROTECTION])  # names Mid, signed by someone else
    assert vc.check(forged, [mid], (root,), now) == vc.BAD_SIGNATURE
    assert vc.check(root, [], (root,), now) == vc.OK


def test_category_keywords_round_trip():
    for name in ("To Do", "Work", "Blue category", "Überfällig"):
        keyword = category_keyword(name)
        assert keyword.isascii() and " " not in keyword and keyword[0] not in "\\$" or keyword.startswith("$label")
        assert keyword_category(keyword).lower() == name.lower() or not name.isascii()
    assert categories(["\\Seen", "$Forwarded", "Junk", "$label2", "work", "Big_project"]) == ["Work", "Big project"]


def test_rebase_and_diff():
    state = FolderState(1, (5, 10, 4), {1: 1, 2: 0, 3: 2}, [9, 8], 0)
    current = {1: 1, 2: 1, 8: 0, 10: 0}  # 3 gone, 2 read elsewhere, 9 gone before it was sent, 10 new
    rebase(state, current)
    assert state.pending == [10, 8]
    assert diff(state, current) == ([3], [2])


async def test_two_first_foldersyncs_at_once_agree_on_ids(tmp_path):
    # Two phones of one user listing the folders for the first time at the same moment (seen in the
    # Ping scale bench): each must see the other's ids, not a map the other overwrote.
    store = open_store("sqlite", path=str(tmp_path / "s.db"), purge_interval=None)
    await store.start()
    try:
        folders = FolderMap(store)
        first, second = await asyncio.gather(folders.assign("u@x", ["INBOX", "Sent", "Work"]),
                                             folders.assign("u@x", ["INBOX", "Sent", "Work"]))
        assert first == second
        assert {n: await folders.id_of("u@x", n) for n in first} == first
    finally:
        await store.close()
