"""Notes class (MS-ASNOTE) <-> VJOURNAL: a Sync Add shaped like the protocol's example, round trips, the
MessageClass rule, Change merges, versions before 14.0, and fuzzing."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import date, datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icalendar import Calendar

from adapters.dav import CalDavCalendarStore
from adapters.interfaces import Credentials
from gateway.activesync.email_item import BodyOptions, BodyPreference, ItemError
from gateway.activesync.note_item import MESSAGE_CLASS, from_application_data, to_application_data
from gateway.activesync.wbxml import Element, decode, encode, from_xml, to_xml

NOW = datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc)
HEAD = '<ApplicationData xmlns="AirSync" xmlns:notes="Notes" xmlns:airsyncbase="AirSyncBase">'

# The ApplicationData of a note a client adds, in the form of the MS-ASNOTE Sync examples: a plain-text
# body, Subject, MessageClass IPM.StickyNote and Categories.
ADD = HEAD + """
  <airsyncbase:Body>
    <airsyncbase:Type>1</airsyncbase:Type>
    <airsyncbase:Data>Buy milk, eggs and bread.&#13;
Call the plumber.</airsyncbase:Data>
  </airsyncbase:Body>
  <notes:Subject>Errands</notes:Subject>
  <notes:MessageClass>IPM.StickyNote</notes:MessageClass>
  <notes:LastModifiedDate>2026-11-19T17:45:12.000Z</notes:LastModifiedDate>
  <notes:Categories>
    <notes:Category>Home</notes:Category>
    <notes:Category>Shopping, weekly</notes:Category>
  </notes:Categories>
</ApplicationData>"""


def journal(text: str):
    return Calendar.from_ical(text).walk("VJOURNAL")[0]


def fields(data: Element) -> list[tuple[str, object]]:
    """What a device reads of an item: the Notes elements in order, and the body's type and text."""
    body = data.find("Body", "AirSyncBase")
    out: list[tuple[str, object]] = [("Body", body.text_of("Type", "AirSyncBase"), body.text_of("Data", "AirSyncBase"))]
    for child in data.children:
        if child.ns == "Notes":
            out.append((child.name, tuple(c.text for c in child.children) if child.children else child.text))
    return out


def app(body: str) -> Element:
    return from_xml(HEAD + body + "</ApplicationData>")


def stored(*lines: str) -> str:
    return "\r\n".join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "BEGIN:VJOURNAL", "UID:note-1",
                        "DTSTAMP:20261101T000000Z", *lines, "END:VJOURNAL", "END:VCALENDAR", ""])


def test_add_is_stored_as_a_vjournal_and_goes_back_unchanged() -> None:
    request = from_xml(ADD)
    text = from_application_data(request, "14.1", now=NOW)
    note = journal(text)
    assert str(note["SUMMARY"]) == "Errands"
    assert str(note["DESCRIPTION"]) == "Buy milk, eggs and bread.\nCall the plumber."
    assert [str(c) for c in note["CATEGORIES"].cats] == ["Home", "Shopping, weekly"]
    assert note["LAST-MODIFIED"].dt == datetime(2026, 11, 19, 17, 45, 12, tzinfo=timezone.utc)
    assert note["DTSTAMP"].dt == NOW and note["DTSTART"].dt == date(2026, 11, 20)
    assert "X-EAS-MESSAGECLASS" not in note and len(str(note["UID"])) == 36

    answer = to_application_data(text, "14.1", BodyOptions((BodyPreference(1),)))
    assert fields(answer) == fields(request)
    assert [c.name for c in answer.children] == ["Body", "Subject", "MessageClass", "LastModifiedDate", "Categories"]
    assert answer.find("Body", "AirSyncBase").text_of("EstimatedDataSize", "AirSyncBase") == "44"
    assert decode(encode(answer)) == answer


def test_known_answer_with_html_body_and_dtstamp_as_last_modified() -> None:
    text = stored("SUMMARY:Plan", "DESCRIPTION:a < b\\nc")
    expected = """<?xml version="1.0" encoding="utf-8"?>
<ApplicationData xmlns="AirSync" xmlns:airsyncbase="AirSyncBase" xmlns:notes="Notes">
  <airsyncbase:Body>
    <airsyncbase:Type>2</airsyncbase:Type>
    <airsyncbase:EstimatedDataSize>%d</airsyncbase:EstimatedDataSize>
    <airsyncbase:Truncated>0</airsyncbase:Truncated>
    <airsyncbase:Data>%s</airsyncbase:Data>
  </airsyncbase:Body>
  <notes:Subject>Plan</notes:Subject>
  <notes:MessageClass>IPM.StickyNote</notes:MessageClass>
  <notes:LastModifiedDate>2026-11-01T00:00:00.000Z</notes:LastModifiedDate>
</ApplicationData>
"""
    data = to_application_data(text, "16.1", BodyOptions((BodyPreference(2),)))
    html = data.find("Body", "AirSyncBase").text_of("Data", "AirSyncBase")
    assert "a &lt; b" in html and "c" in html
    assert to_xml(data) == expected % (len(html.encode()), html.replace("&", "&amp;").replace("<", "&lt;")
                                       .replace(">", "&gt;").replace("\r", "&#13;"))


@pytest.mark.parametrize("version", ["2.5", "12.0", "12.1"])
def test_notes_do_not_exist_before_14_0(version: str) -> None:
    with pytest.raises(ItemError, match="14.0"):
        to_application_data(stored("SUMMARY:x"), version)
    with pytest.raises(ItemError, match="14.0"):
        from_application_data(from_xml(ADD), version)


@pytest.mark.parametrize("version", ["14.0", "14.1", "16.0", "16.1"])
def test_every_field_round_trips(version: str) -> None:
    sent = from_xml(ADD)
    text = from_application_data(sent, version, now=NOW)
    assert fields(to_application_data(text, version)) == fields(sent)
    assert from_application_data(sent, version, text, now=NOW) == text  # nothing changed but the stamps


def test_message_class_goes_out_as_sticky_note_and_another_one_is_kept() -> None:
    sent = app("<notes:Subject>s</notes:Subject><notes:MessageClass>IPM.StickyNote.Custom</notes:MessageClass>")
    text = from_application_data(sent, "14.1", now=NOW)
    assert str(journal(text)["X-EAS-MESSAGECLASS"]) == "IPM.StickyNote.Custom"
    assert to_application_data(text, "14.1").text_of("MessageClass", "Notes") == MESSAGE_CLASS
    back = from_application_data(app("<notes:MessageClass>IPM.StickyNote</notes:MessageClass>"), "14.1", text,
                                 now=NOW)
    assert "X-EAS-MESSAGECLASS" not in journal(back)
    assert journal(back)["LAST-MODIFIED"].dt == NOW  # the device sent no LastModifiedDate


def test_a_change_without_subject_or_body_keeps_them_and_without_categories_drops_them() -> None:
    text = stored("SUMMARY:Keep", "DESCRIPTION:body stays", "CATEGORIES:Gone", "X-EVOLUTION-CUSTOM:1",
                  "RELATED-TO:note-0", "ATTACH:https://example.com/sketch.png", "CLASS:PRIVATE",
                  "DTSTART;VALUE=DATE:20261101", "BEGIN:X-VENDOR-THING", "X-A:b", "END:X-VENDOR-THING")
    changed = from_application_data(app("<notes:MessageClass>IPM.StickyNote</notes:MessageClass>"), "14.1", text,
                                    now=NOW)
    note = journal(changed)
    assert str(note["SUMMARY"]) == "Keep" and str(note["DESCRIPTION"]) == "body stays"
    assert "CATEGORIES" not in note
    for line in ("X-EVOLUTION-CUSTOM:1", "RELATED-TO:note-0", "ATTACH:https://example.com/sketch.png",
                 "CLASS:PRIVATE", "DTSTART;VALUE=DATE:20261101", "BEGIN:X-VENDOR-THING", "UID:note-1"):
        assert line in changed, line
    emptied = from_application_data(app("<notes:Subject></notes:Subject><airsyncbase:Body><airsyncbase:Type>1"
                                        "</airsyncbase:Type><airsyncbase:Data></airsyncbase:Data></airsyncbase:Body>"),
                                    "14.1", text, now=NOW)
    assert "SUMMARY" not in journal(emptied) and "DESCRIPTION" not in journal(emptied)


def test_a_second_journal_entry_and_other_components_are_left_alone() -> None:
    text = stored("SUMMARY:main").replace("END:VCALENDAR", "BEGIN:VTODO\r\nUID:t\r\nSUMMARY:task\r\nEND:VTODO\r\n"
                                          "END:VCALENDAR")
    changed = from_application_data(app("<notes:Subject>new</notes:Subject>"), "14.1", text, now=NOW)
    assert "SUMMARY:new" in changed and "SUMMARY:task" in changed


@pytest.mark.parametrize("body", [
    "<notes:LastModifiedDate>soon</notes:LastModifiedDate>",
    "<notes:Subject><notes:Category>x</notes:Category></notes:Subject>",
    "<notes:Categories>text</notes:Categories>",
    "<airsyncbase:Body><airsyncbase:Type>4</airsyncbase:Type><airsyncbase:Data>x</airsyncbase:Data></airsyncbase:Body>",
])
def test_invalid_device_data_is_an_item_error(body: str) -> None:
    with pytest.raises(ItemError):
        from_application_data(app(body), "14.1")


def test_invalid_stored_text_is_an_item_error() -> None:
    for text in ("", "junk", stored().replace("VJOURNAL", "VTODO")):
        with pytest.raises(ItemError):
            to_application_data(text, "14.1")
        with pytest.raises(ItemError):
            from_application_data(from_xml(ADD), "14.1", text)


TAGS = ["Subject", "MessageClass", "LastModifiedDate", "Category", "Categories"]
TEXTS = st.none() | st.text(max_size=16) | st.sampled_from(["2026-11-28T10:00:00.000Z", "20261128T100000Z",
                                                            "IPM.StickyNote", "9999-12-31T00:00:00.000Z"])
LEAF = st.builds(lambda name, text, opaque: Element("Notes", name, text=None if opaque else text,
                                                    opaque=b"\x00" if opaque else None),
                 st.sampled_from(TAGS), TEXTS, st.sampled_from([False] * 9 + [True]))
APP_DATA = st.builds(
    lambda leaves, cats, body: Element("AirSync", "ApplicationData", leaves + cats + body),
    st.lists(LEAF, max_size=6),
    st.lists(LEAF, max_size=3).map(lambda kids: [Element("Notes", "Categories", kids)]) | st.just([]),
    st.builds(lambda kind, data: [Element("AirSyncBase", "Body", [Element("AirSyncBase", "Type", text=kind),
                                                                  Element("AirSyncBase", "Data", text=data)])],
              st.sampled_from(["1", "2", "3", ""]), st.text(max_size=30)) | st.just([]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(APP_DATA, st.sampled_from(["12.1", "14.0", "16.1"]), st.booleans())
def test_random_application_data_only_ever_raises_item_error(data: Element, version: str, change: bool) -> None:
    try:
        text = from_application_data(data, version, stored("SUMMARY:old", "X-KEEP:1") if change else None, now=NOW)
    except ItemError:
        assert version == "12.1" or data.children
        return
    assert version != "12.1"
    out = to_application_data(text, version)
    assert decode(encode(out)) == out
    assert out.text_of("MessageClass", "Notes") == MESSAGE_CLASS
    if change:
        assert "X-KEEP:1" in text


async def test_radicale_stores_converted_notes_and_gives_them_back(radicale, certs, users) -> None:
    login = "bob@example.test"
    async with AsyncExitStack() as stack:
        store = CalDavCalendarStore(radicale.url, Credentials(login, users[login]), certs.ca_cert, timeout=5)
        await store.start(stack)
        url = (await store.create_calendar(f"EAS notes {uuid.uuid4().hex[:8]}", ("VJOURNAL",))).url
        text = from_application_data(from_xml(ADD), "16.1", now=NOW)
        put = await store.put_event(url, text)
        assert set(await store.object_etags(url, "VJOURNAL")) == {put.href}
        [obj] = await store.fetch_objects(url, [put.href])
        assert fields(to_application_data(obj.ical, "16.1")) == fields(from_xml(ADD))
        change = app("<notes:Subject>Errands (done)</notes:Subject>")
        await store.replace_object(put.href, from_application_data(change, "16.1", obj.ical, now=NOW), obj.etag)
        [changed] = await store.fetch_objects(url, [put.href])
        assert fields(to_application_data(changed.ical, "16.1"))[:2] == [
            ("Body", "1", "Buy milk, eggs and bread.\r\nCall the plumber."), ("Subject", "Errands (done)")]


def test_a_message_class_with_line_breaks_is_kept_on_one_line() -> None:
    text = from_application_data(app("<notes:MessageClass>IPM.StickyNote&#13;\nOdd</notes:MessageClass>"), "14.1",
                                 now=NOW)
    assert str(journal(text)["X-EAS-MESSAGECLASS"]) == "IPM.StickyNote Odd"
