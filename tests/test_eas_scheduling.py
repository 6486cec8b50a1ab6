"""Meetings a phone organizes, pure: which iMIP mails a change sends, and the SEQUENCE it stores."""

from __future__ import annotations

import email

import icalendar
import pytest

from gateway.activesync.email_item import ItemError
from gateway.activesync.scheduling import plan

ME = {"me@example.test"}


def event(*lines: str, uid: str = "m-1") -> str:
    body = "\r\n".join(lines)
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:20261120T090000Z\r\nDTSTART:20261201T140000Z\r\nDTEND:20261201T150000Z\r\n"
            f"SUMMARY:Plan\r\n{body}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").replace("\r\n\r\n", "\r\n")


A = "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:a@example.test"
B = "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:b@example.test"
ORG = "ORGANIZER:mailto:me@example.test"


def calendar_of(mail) -> tuple[str, icalendar.Calendar]:
    parsed = email.message_from_bytes(mail.message)
    [part] = [p for p in parsed.walk() if p.get_content_type() == "text/calendar"]
    return part.get_param("method"), icalendar.Calendar.from_ical(part.get_payload(decode=True))


def test_a_new_meeting_invites_its_attendees_and_names_me_organizer():
    text, mails = plan(None, event(A, B), ME, "Me")
    [mail] = mails
    assert mail.recipients == ("a@example.test", "b@example.test")
    method, cal = calendar_of(mail)
    assert method == "REQUEST" and str(cal["METHOD"]) == "REQUEST"
    assert str(cal.walk("VEVENT")[0]["ORGANIZER"]).lower() == "mailto:me@example.test"
    stored = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
    assert str(stored["ORGANIZER"]).lower() == "mailto:me@example.test" and "METHOD" not in text


def test_an_appointment_without_attendees_sends_nothing():
    assert plan(None, event(), ME, "Me") == (None, [])


def test_a_meeting_i_was_invited_to_sends_nothing_when_i_change_it():
    old = event("ORGANIZER:mailto:boss@example.test", A)
    assert plan(old, old.replace("Plan", "Plan (my note)"), ME, "Me") == (None, [])


def test_a_significant_change_updates_everyone_and_bumps_the_sequence():
    old = event(ORG, A, B, "SEQUENCE:2")
    new = old.replace("DTSTART:20261201T140000Z", "DTSTART:20261201T150000Z").replace(B + "\r\n", "")
    text, mails = plan(old, new, ME, "Me")
    assert int(icalendar.Calendar.from_ical(text).walk("VEVENT")[0]["SEQUENCE"]) == 3
    by_method = {calendar_of(m)[0]: m for m in mails}
    assert by_method["REQUEST"].recipients == ("a@example.test",)
    assert by_method["CANCEL"].recipients == ("b@example.test",)


def test_an_insignificant_change_sends_nothing():
    old = event(ORG, A)
    assert plan(old, old.replace("DTSTAMP:20261120T090000Z", "DTSTAMP:20261121T090000Z"), ME, "Me") == (None, [])


def test_deleting_a_meeting_cancels_it_for_everyone():
    _, [mail] = plan(event(ORG, A, B), None, ME, "Me")
    method, cal = calendar_of(mail)
    assert method == "CANCEL" and str(cal.walk("VEVENT")[0]["STATUS"]) == "CANCELLED"
    assert mail.recipients == ("a@example.test", "b@example.test")


def test_junk_is_an_item_error():
    with pytest.raises(ItemError):
        plan(None, "not a calendar", ME, "Me")
