"""Demo seed content: mail parses and round-trips, calendars expand, vCards parse, output is repeatable."""

from __future__ import annotations

import base64
import email
import re
from datetime import date, datetime, timedelta, timezone
from email.policy import default
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events
import vobject
from hypothesis import given, settings, strategies as st

from gateway.demo import sample_data as sd

NOW = datetime(2024, 10, 20, 13, 37, 12, 5000, tzinfo=timezone.utc)
PEOPLE = sd.demo_people()
USERS = [addr for _, addr in PEOPLE]


def parsed(address: str, now: datetime = NOW, seed: int = 0):
    msgs = sd.messages_for(address, PEOPLE, now, seed)
    return [(m, email.message_from_bytes(m.raw, policy=default)) for m in msgs]


def by_subject(pairs, subject: str):
    return [(m, p) for m, p in pairs if p["Subject"] == subject]


def calendars(address: str, now: datetime = NOW, seed: int = 0):
    return [(e, icalendar.Calendar.from_ical(e.ical)) for e in sd.events_for(address, PEOPLE, now, seed)]


def events_with(cals, prop: str, value: str):
    return [ev for _, cal in cals for ev in cal.walk("VEVENT") if str(ev.get(prop, "")) == value]


def test_demo_people_uses_the_domain():
    assert sd.demo_people("corp.example") == [
        ("Alice Example", "alice@corp.example"), ("Bob Example", "bob@corp.example"),
        ("Carol Example", "carol@corp.example")]
    assert sd.demo_people() == [(n, a.replace("corp.example", "example.test")) for n, a in
                                sd.demo_people("corp.example")]


# -- mail ---------------------------------------------------------------------------------------

def test_every_message_parses_with_required_headers_and_crlf():
    for address in USERS:
        pairs = parsed(address)
        assert 12 <= len(pairs) <= 20
        for m, p in pairs:
            for header in ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version"):
                assert p[header], (header, p["Subject"])
            assert p["MIME-Version"] == "1.0"
            assert p["Message-ID"].endswith("@example.test>")
            assert p["Date"].datetime == m.date and m.date.tzinfo is not None
            assert m.raw.count(b"\n") == m.raw.count(b"\r\n") > 0
            assert not p.defects and all(not part.defects for part in p.walk())
            assert m.raw.isascii()  # non-ASCII text travels encoded (RFC 2047, RFC 2231, base64/QP)


def test_folders_and_flags():
    pairs = parsed("bob@example.test")
    folders = [m.folder for m, _ in pairs]
    assert set(folders) == {"INBOX", "Sent", "Drafts"}
    drafts = [(m, p) for m, p in pairs if m.folder == "Drafts"]
    assert len(drafts) == 1 and "\\Draft" in drafts[0][0].flags
    assert all(p["From"].addresses[0].addr_spec == "bob@example.test" for m, p in pairs if m.folder != "INBOX")
    assert sum("\\Flagged" in m.flags for m, _ in pairs) == 1
    assert sum("\\Seen" in m.flags for m, _ in pairs if m.folder == "INBOX") >= 2
    assert any("\\Seen" not in m.flags for m, _ in pairs if m.folder == "INBOX")
    assert [m.date for m, _ in pairs] == sorted(m.date for m, _ in pairs)
    assert all(m.date < NOW for m, _ in pairs)


def test_html_message_is_multipart_alternative_with_css_link_and_remote_image():
    html_msgs = [p for _, p in parsed("alice@example.test") if p.get_content_type() == "multipart/alternative"]
    assert len(html_msgs) == 1
    parts = [part.get_content_type() for part in html_msgs[0].iter_parts()]
    assert parts == ["text/plain", "text/html"]
    html = html_msgs[0].get_body(("html",)).get_content()
    assert 'style="' in html
    assert re.search(r'<a href="https://[^"]+"', html)
    assert re.search(r'<img src="https://[^"]+"', html)
    assert "https://" in html_msgs[0].get_body(("plain",)).get_content()


def test_attachments_round_trip_bytes_and_filenames():
    pairs = parsed("carol@example.test")
    atts = [part for _, p in pairs for part in p.iter_attachments()]
    names = sorted(a.get_filename() for a in atts)
    assert names == sorted([sd.PDF_NAME, sd.CSV_NAME, sd.NON_ASCII_CSV_NAME])
    for a in atts:
        name = a.get_filename()
        assert a.get_content_disposition() == "attachment"
        assert a["Content-Transfer-Encoding"] == "base64"
        raw_b64 = a.get_payload(decode=False).replace("\r\n", "").replace("\n", "")
        expected = sd._pdf_blob(name) if name.endswith(".pdf") else sd._csv_blob(name)
        assert base64.b64decode(raw_b64, validate=True) == expected
        assert a.get_payload(decode=True) == expected
        assert a.get_content_type() == ("application/pdf" if name.endswith(".pdf") else "text/csv")
    pdf = next(a for a in atts if a.get_filename() == sd.PDF_NAME).get_payload(decode=True)
    assert pdf.startswith(b"%PDF-") and pdf.endswith(b"%%EOF\n") and not pdf.isascii()
    raw = b"".join(m.raw for m, _ in pairs)
    assert b"filename*=utf-8''Reisekosten%20%C3%9Cbersicht%20M%C3%A4rz.csv" in raw


def test_thread_headers_link_and_are_shared_between_users():
    threads = {}
    for address in USERS:
        pairs = [p for _, p in parsed(address) if p["Subject"].removeprefix("Re: ") == sd.THREAD_SUBJECT]
        assert len(pairs) == 3
        first, second, third = sorted(pairs, key=lambda p: p["Date"].datetime)
        ids = [p["Message-ID"] for p in (first, second, third)]
        assert len(set(ids)) == 3
        assert first["Subject"] == sd.THREAD_SUBJECT and "In-Reply-To" not in first and "References" not in first
        assert second["Subject"] == third["Subject"] == "Re: " + sd.THREAD_SUBJECT
        assert second["In-Reply-To"] == ids[0] and second["References"].split() == ids[:1]
        assert third["In-Reply-To"] == ids[1] and third["References"].split() == ids[:2]
        senders = {p["From"].addresses[0].addr_spec for p in (first, second, third)}
        assert senders == set(USERS)
        threads[address] = ids
    assert threads["alice@example.test"] == threads["bob@example.test"] == threads["carol@example.test"]
    sent = [m for m, p in parsed("alice@example.test") if p["Message-ID"] in threads["alice@example.test"]]
    assert [m.folder for m in sent].count("Sent") == 1


def test_non_ascii_subject_is_rfc2047_encoded():
    pairs = by_subject(parsed("alice@example.test"), sd.NON_ASCII_SUBJECT)
    assert len(pairs) == 1
    m, p = pairs[0]
    raw_subject = re.search(rb"^Subject:(.*?)\r\n(?! )", m.raw, re.M | re.S).group(1)
    assert b"=?utf-8?" in raw_subject.lower()
    assert "é" in p["Subject"] and "Ü" in p["Subject"]
    assert "résumé" in p.get_body(("plain",)).get_content()


def test_messages_are_deterministic_and_vary_by_user_seed_and_now():
    a = sd.messages_for("alice@example.test", PEOPLE, NOW, seed=7)
    assert a == sd.messages_for("alice@example.test", PEOPLE, NOW, seed=7)
    assert [m.raw for m in a] != [m.raw for m in sd.messages_for("alice@example.test", PEOPLE, NOW, seed=8)]
    later = sd.messages_for("alice@example.test", PEOPLE, NOW + timedelta(days=1), seed=7)
    assert max(m.date for m in later) - max(m.date for m in a) == timedelta(days=1)

    def ids(address):
        return {p["Message-ID"] for _, p in parsed(address)}
    thread = {p["Message-ID"] for _, p in parsed("alice@example.test")
              if p["Subject"].removeprefix("Re: ") == sd.THREAD_SUBJECT}
    assert len(thread) == 3
    assert ids("alice@example.test") & ids("bob@example.test") == thread
    assert len(ids("alice@example.test")) == len(parsed("alice@example.test"))


# -- calendars ----------------------------------------------------------------------------------

def test_every_calendar_parses_with_required_properties():
    for address in USERS:
        events = sd.events_for(address, PEOPLE, NOW)
        assert len({e.uid for e in events}) == len(events) >= 9
        for e in events:
            cal = icalendar.Calendar.from_ical(e.ical)
            assert str(cal["VERSION"]) == "2.0" and cal["PRODID"]
            assert e.ical.count("\n") == e.ical.count("\r\n")
            assert all(len(line.encode()) <= 75 for line in e.ical.split("\r\n"))
            vevents = cal.walk("VEVENT")
            assert vevents
            for ev in vevents:
                assert str(ev["UID"]) == e.uid and ev["SUMMARY"] and ev.get("DTSTAMP")
                assert ev.get("LOCATION")


def test_timed_events_fall_in_the_next_two_weeks_on_whole_hours():
    singles = [cal.walk("VEVENT")[0] for _, cal in calendars("alice@example.test")
               if len(cal.walk("VEVENT")) == 1 and "RRULE" not in cal.walk("VEVENT")[0]]
    timed = [ev["DTSTART"].dt for ev in singles if isinstance(ev["DTSTART"].dt, datetime)]
    assert len(timed) >= 6
    for start in timed:
        assert start.tzinfo is not None
        assert NOW < start < NOW + timedelta(days=14)
        assert start.minute == start.second == 0


def test_all_day_event_uses_date_values():
    cals = calendars("bob@example.test")
    all_day = [ev for _, cal in cals for ev in cal.walk("VEVENT") if type(ev["DTSTART"].dt) is date]
    assert len(all_day) == 1
    ev = all_day[0]
    assert ev["DTSTART"].params.get("VALUE") == "DATE"
    assert ev["DTEND"].dt - ev["DTSTART"].dt == timedelta(days=1)
    assert "DTSTART;VALUE=DATE:" in next(e.ical for e, _ in cals if "VALUE=DATE" in e.ical)


def test_weekly_meeting_expands_with_exdate_and_moved_instance():
    recurring = [(e, cal) for e, cal in calendars("carol@example.test")
                 if any("RRULE" in ev for ev in cal.walk("VEVENT"))]
    assert len(recurring) == 1
    e, cal = recurring[0]
    master, override = cal.walk("VEVENT")
    assert master["RRULE"]["FREQ"] == ["WEEKLY"] and master["RRULE"]["COUNT"] == [6]
    first = master["DTSTART"].dt
    exdates = [d.dt for d in master["EXDATE"].dts]
    assert exdates == [first + timedelta(weeks=2)]
    assert str(override["UID"]) == e.uid
    assert override["RECURRENCE-ID"].dt == first + timedelta(weeks=1)
    assert override["DTSTART"].dt == first + timedelta(weeks=1, hours=1)

    starts = sorted(ev["DTSTART"].dt for ev in
                    recurring_ical_events.of(cal).between(NOW, NOW + timedelta(weeks=10)))
    expected = [first + timedelta(weeks=w) for w in range(6) if w != 2]
    expected[1] += timedelta(hours=1)
    assert starts == expected


def test_berlin_event_has_full_vtimezone_and_tzid():
    berlin = [(e, cal) for e, cal in calendars("alice@example.test") if "VTIMEZONE" in e.ical]
    assert len(berlin) == 1
    e, cal = berlin[0]
    tz = cal.walk("VTIMEZONE")[0]
    assert str(tz["TZID"]) == "Europe/Berlin"
    kinds = {sub.name: sub for sub in tz.subcomponents}
    assert set(kinds) == {"STANDARD", "DAYLIGHT"}
    assert kinds["STANDARD"]["TZOFFSETTO"].td == timedelta(hours=1)
    assert kinds["DAYLIGHT"]["TZOFFSETTO"].td == timedelta(hours=2)
    assert kinds["DAYLIGHT"]["RRULE"]["BYMONTH"] == [3] and kinds["STANDARD"]["RRULE"]["BYMONTH"] == [10]
    assert kinds["DAYLIGHT"]["RRULE"]["BYDAY"] == kinds["STANDARD"]["RRULE"]["BYDAY"] == ["-1SU"]
    ev = cal.walk("VEVENT")[0]
    assert ev["DTSTART"].params["TZID"] == ev["DTEND"].params["TZID"] == "Europe/Berlin"
    start = ev["DTSTART"].dt
    assert start.hour == 15 and start.minute == 0
    # 20 October 2024 + 3..6 days straddles the switch to CET on the 27th: check against the tz database.
    assert start.utcoffset() == start.replace(tzinfo=ZoneInfo("Europe/Berlin")).utcoffset()
    assert "DTSTART;TZID=Europe/Berlin:" in e.ical


def test_status_transparency_and_class_variants():
    cals = calendars("bob@example.test")
    assert len(events_with(cals, "STATUS", "TENTATIVE")) == 1
    assert len(events_with(cals, "CLASS", "PRIVATE")) == 1
    assert len(events_with(cals, "TRANSP", "TRANSPARENT")) >= 1
    assert events_with(cals, "TRANSP", "TRANSPARENT")[0]["DTSTART"].dt.hour == 12


def test_meeting_organised_by_user_invites_the_others():
    for address in USERS:
        meetings = [ev for _, cal in calendars(address) for ev in cal.walk("VEVENT") if "ORGANIZER" in ev]
        assert len(meetings) == 1
        ev = meetings[0]
        assert str(ev["ORGANIZER"]) == f"mailto:{address}"
        attendees = {str(a).removeprefix("mailto:"): a.params for a in ev["ATTENDEE"]}
        assert set(attendees) == set(USERS)
        names = dict((a, n) for n, a in PEOPLE)
        for addr, params in attendees.items():
            assert params["CN"] == names[addr]
            assert params["ROLE"] in {"CHAIR", "REQ-PARTICIPANT", "OPT-PARTICIPANT"}
            assert params["PARTSTAT"] in {"ACCEPTED", "NEEDS-ACTION", "TENTATIVE"}
        assert attendees[address]["ROLE"] == "CHAIR"


def test_events_deterministic_and_vary_by_user():
    a = sd.events_for("alice@example.test", PEOPLE, NOW, seed=3)
    assert a == sd.events_for("alice@example.test", PEOPLE, NOW, seed=3)
    b = sd.events_for("bob@example.test", PEOPLE, NOW, seed=3)
    assert not {e.uid for e in a} & {e.uid for e in b}


# -- contacts -----------------------------------------------------------------------------------

def test_every_vcard_parses_with_the_expected_fields():
    for address in USERS:
        contacts = sd.contacts_for(address, PEOPLE)
        cards = [vobject.readOne(c.vcard) for c in contacts]
        emails = [card.email.value for card in cards]
        others = [a for a in USERS if a != address]
        assert emails[:2] == others and address not in emails
        assert 2 + 3 <= len(cards) <= 2 + 5
        assert len({c.uid for c in contacts}) == len(contacts)
        for c, card in zip(contacts, cards):
            assert c.vcard.count("\n") == c.vcard.count("\r\n") and c.vcard.endswith("END:VCARD\r\n")
            assert card.version.value == "3.0" and card.uid.value == c.uid
            assert card.email.params["TYPE"][0] == "INTERNET"
            tel_types = {t for tel in card.contents["tel"] for t in tel.params["TYPE"]}
            assert {"WORK", "VOICE", "CELL"} <= tel_types
            for field in ("fn", "n", "adr", "org", "title", "bday", "note", "categories"):
                assert field in card.contents, field
            assert card.n.value.family and card.adr.value.city
            date.fromisoformat(card.bday.value)
        assert any(not card.fn.value.isascii() for card in cards)
        zoe = next(card for card in cards if card.fn.value == "Zoë Ångström")
        assert zoe.n.value.given == "Zoë" and "Malmö workshop; prefers" in zoe.note.value


def test_contacts_deterministic_and_vary_by_seed():
    assert sd.contacts_for("alice@example.test", PEOPLE, 5) == sd.contacts_for("alice@example.test", PEOPLE, 5)
    runs = {tuple(c.vcard for c in sd.contacts_for("alice@example.test", PEOPLE, s)) for s in range(4)}
    assert len(runs) == 4


# -- any seed, any moment -----------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1),
                                                   timezones=st.just(timezone.utc)))
def test_any_seed_and_now_gives_valid_content(seed, now):
    msgs = sd.messages_for("alice@example.test", PEOPLE, now, seed)
    assert 12 <= len(msgs) <= 20
    for m in msgs:
        p = email.message_from_bytes(m.raw, policy=default)
        assert p["Date"].datetime == m.date and not p.defects
    for e in sd.events_for("alice@example.test", PEOPLE, now, seed):
        cal = icalendar.Calendar.from_ical(e.ical)
        if "EXDATE" in e.ical:
            assert len(recurring_ical_events.of(cal).between(now, now + timedelta(weeks=10))) == 5
    for c in sd.contacts_for("alice@example.test", PEOPLE, seed):
        assert vobject.readOne(c.vcard).fn.value
