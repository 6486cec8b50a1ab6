"""Meetings by mail, pure: the Email:MeetingRequest of an invitation, and the answer a MeetingResponse makes."""

from __future__ import annotations

import base64
import datetime as dt

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.activesync import wbxml
from gateway.activesync.email_item import ItemError
from gateway.activesync.meeting import (ACCEPTED, DECLINED, TENTATIVE, global_object_id, meeting_request,
                                        reply_message, respond)

INVITE = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
          "UID:weekly-1@example.test\r\nDTSTAMP:20261120T090000Z\r\nDTSTART:20261201T140000Z\r\n"
          "DTEND:20261201T150000Z\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\nSUMMARY:Sync\r\nCLASS:PRIVATE\r\n"
          "ORGANIZER:mailto:boss@example.test\r\n"
          "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:Me@Example.test\r\n"
          "ATTENDEE;PARTSTAT=ACCEPTED:mailto:other@example.test\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def test_meeting_request_of_a_recurring_private_meeting():
    element = meeting_request(INVITE, (14, 1))
    assert element.text_of("InstanceType") == "1"  # the master of a recurring meeting
    assert element.text_of("Sensitivity") == "2"
    assert element.text_of("StartTime") == "2026-12-01T14:00:00.000Z"
    assert element.text_of("Organizer") == "boss@example.test"
    assert element.text_of("MeetingMessageType", "Email2") == "1"
    assert len(base64.b64decode(element.text_of("TimeZone"))) == 172
    wbxml.decode(wbxml.encode(element))  # every tag exists in the code pages
    assert meeting_request(INVITE, (14, 0)).find("MeetingMessageType", "Email2") is None


def test_global_object_id_wraps_a_foreign_uid_and_keeps_an_outlook_one():
    goid = global_object_id("weekly-1@example.test")
    assert goid[:16] == bytes.fromhex("040000008200E00074C5B7101A82E008")
    assert goid.endswith(b"vCal-Uid\x01\x00\x00\x00weekly-1@example.test\x00")
    assert int.from_bytes(goid[36:40], "little") == len(goid) - 40
    outlook = "040000008200E00074C5B7101A82E00800000000" + "00" * 16 + "10000000" + "AB" * 16
    assert global_object_id(outlook) == bytes.fromhex(outlook)
    assert global_object_id("x", dt.date(2026, 12, 8))[16:20] == bytes([0x07, 0xEA, 12, 8])


@pytest.mark.parametrize("response, partstat", [(ACCEPTED, "ACCEPTED"), (TENTATIVE, "TENTATIVE"),
                                                (DECLINED, "DECLINED")])
def test_respond_sets_only_my_partstat(response, partstat):
    keep, reply, organizer = respond(INVITE, {"me@example.test"}, response)
    assert organizer == "boss@example.test"
    kept = icalendar.Calendar.from_ical(keep)
    assert "METHOD" not in kept
    attendees = {str(a).lower(): a.params["PARTSTAT"] for a in kept.walk("VEVENT")[0]["ATTENDEE"]}
    assert attendees == {"mailto:me@example.test": partstat, "mailto:other@example.test": "ACCEPTED"}
    answer = icalendar.Calendar.from_ical(reply)
    assert str(answer["METHOD"]) == "REPLY"
    [event] = answer.walk("VEVENT")
    assert str(event["UID"]) == "weekly-1@example.test"
    attendee = event["ATTENDEE"]
    assert not isinstance(attendee, list) and attendee.params["PARTSTAT"] == partstat
    message = reply_message(reply, "me@example.test", "Me", organizer, "Sync", response, "example.test")
    assert b"method=REPLY" in message.replace(b'"', b"") and b"\r\nTo: boss@example.test\r\n" in message


def test_respond_for_someone_invited_through_a_list_still_answers_as_them():
    _, reply, _ = respond(INVITE, {"alias@example.test"}, ACCEPTED)
    [event] = icalendar.Calendar.from_ical(reply).walk("VEVENT")
    assert str(event["ATTENDEE"]).lower() == "mailto:alias@example.test"


@pytest.mark.parametrize("text", ["", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                                  INVITE.replace("UID:weekly-1@example.test\r\n", "")])
def test_unusable_invitations_are_item_errors(text):
    with pytest.raises(ItemError):
        respond(text, {"me@example.test"}, ACCEPTED)


def test_a_response_out_of_range_is_refused():
    with pytest.raises(ItemError):
        respond(INVITE, {"me@example.test"}, 4)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_junk_never_raises_anything_but_item_error(junk):
    for text in (junk, INVITE.replace("SUMMARY:Sync", junk[:50])):
        try:
            meeting_request(text, (16, 1))
        except ItemError:
            pass
