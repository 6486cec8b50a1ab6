"""iCalendar VEVENT <-> EAS Calendar item (MS-ASCAL): Sync transcripts, recurrence round trips, all-day events,
daylight saving, per-version output, Change merges that keep what EAS cannot carry, and fuzzing."""

from __future__ import annotations

import base64
import datetime as dt
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.activesync.calendar_item import ItemError, delete_instance, from_application_data, to_application_data
from gateway.activesync.email_item import BodyOptions, BodyPreference
from gateway.activesync.tzblob import Change, Rule, blob_for, pack_rule, rule_for
from gateway.activesync.wbxml import Element, decode, encode, from_xml

VERSIONS = ("2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1")
UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
PACIFIC_B64 = ("4AEAAFAAYQBjAGkAZgBpAGMAIABTAHQAYQBuAGQAYQByAGQAIABUAGkAbQBlAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAsAAAAB"
               "AAIAAAAAAAAAAAAAAFAAYQBjAGkAZgBpAGMAIABEAGEAeQBsAGkAZwBoAHQAIABUAGkAbQBlAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
               "AAAAAAMAAAACAAIAAAAAAAAAxP///w==")
OPTIONS = BodyOptions((BodyPreference(1, 32768),))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def nameless_blob(zone, year=2026) -> str:
    """A zone's blob without names, as a phone that knows Windows names (or none) sends it."""
    rule = rule_for(zone, year)
    return b64(pack_rule(Rule(rule.bias, rule.standard, rule.daylight, rule.standard_bias, rule.daylight_bias)))


def app(xml_body: str) -> Element:
    return from_xml('<ApplicationData xmlns="AirSync:" xmlns:calendar="Calendar:" '
                    f'xmlns:airsyncbase="AirSyncBase:">{xml_body}</ApplicationData>')


def master(text: str):
    cal = icalendar.Calendar.from_ical(text)
    return next(e for e in cal.walk("VEVENT") if "RECURRENCE-ID" not in e)


def starts(text: str, first=(2026, 1, 1), last=(2027, 12, 31)) -> list[dt.datetime]:
    """The start of every instance, as UTC (dates as dates), sorted."""
    cal = icalendar.Calendar.from_ical(text)
    out = []
    for event in recurring_ical_events.of(cal).between(first, last):
        start = event["DTSTART"].dt
        out.append(start.astimezone(UTC) if isinstance(start, dt.datetime) else start)
    return sorted(out, key=str)


def values(element: Element, name: str, ns: str = "Calendar") -> list[str | None]:
    return [e.text for e in element.iter() if e.name == name and e.ns == ns]


def wire(element: Element) -> Element:
    """The element after a trip through WBXML, which must encode with the code pages."""
    back = decode(encode(element))
    assert back == element
    return back


def event_text(body: str, *, extra: str = "") -> str:
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n" + extra +
            "BEGIN:VEVENT\r\nUID:evt-1@example.com\r\nDTSTAMP:20260101T120000Z\r\n" + body +
            "END:VEVENT\r\nEND:VCALENDAR\r\n")


# --- MS-ASCMD / MS-ASCAL Sync transcripts -------------------------------------------------------------------

# A Sync Add of a meeting with attendees, in the shape of the MS-ASCMD Sync example (protocol 14.1).
MEETING_ADD = f"""
  <calendar:Timezone>{PACIFIC_B64}</calendar:Timezone>
  <calendar:AllDayEvent>0</calendar:AllDayEvent>
  <airsyncbase:Body><airsyncbase:Type>1</airsyncbase:Type><airsyncbase:Data>Quarterly numbers</airsyncbase:Data>
  </airsyncbase:Body>
  <calendar:BusyStatus>2</calendar:BusyStatus>
  <calendar:DtStamp>20261110T180000Z</calendar:DtStamp>
  <calendar:EndTime>20261201T190000Z</calendar:EndTime>
  <calendar:Location>Conference Room 1</calendar:Location>
  <calendar:Reminder>15</calendar:Reminder>
  <calendar:Sensitivity>0</calendar:Sensitivity>
  <calendar:Subject>Budget review</calendar:Subject>
  <calendar:StartTime>20261201T180000Z</calendar:StartTime>
  <calendar:UID>040000008200E00074C5B7101A82E00800000000</calendar:UID>
  <calendar:MeetingStatus>1</calendar:MeetingStatus>
  <calendar:Attendees>
    <calendar:Attendee>
      <calendar:Email>chris@contoso.com</calendar:Email><calendar:Name>Chris Gray</calendar:Name>
      <calendar:AttendeeType>1</calendar:AttendeeType>
    </calendar:Attendee>
    <calendar:Attendee>
      <calendar:Email>dana@contoso.com</calendar:Email><calendar:Name>Dana Birkby</calendar:Name>
      <calendar:AttendeeType>2</calendar:AttendeeType>
    </calendar:Attendee>
  </calendar:Attendees>
  <calendar:ResponseRequested>1</calendar:ResponseRequested>
"""


def test_sync_add_of_a_meeting_with_attendees():
    text = from_application_data(wire(app(MEETING_ADD)), "14.1", owner="tom@contoso.com")
    cal = icalendar.Calendar.from_ical(text)
    event = master(text)
    assert str(event["UID"]) == "040000008200E00074C5B7101A82E00800000000"
    assert event["DTSTART"].dt == dt.datetime(2026, 12, 1, 10, tzinfo=ZoneInfo("America/Los_Angeles"))
    assert event["DTSTART"].params["TZID"] == "America/Los_Angeles"
    assert event["DTEND"].dt.astimezone(UTC) == dt.datetime(2026, 12, 1, 19, tzinfo=UTC)
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["America/Los_Angeles"]
    assert (str(event["SUMMARY"]), str(event["LOCATION"]), str(event["DESCRIPTION"])) == (
        "Budget review", "Conference Room 1", "Quarterly numbers")
    assert str(event["ORGANIZER"]) == "mailto:tom@contoso.com"
    attendees = {str(a): a.params for a in event["ATTENDEE"]}
    assert attendees["mailto:chris@contoso.com"]["CN"] == "Chris Gray"
    assert attendees["mailto:chris@contoso.com"]["ROLE"] == "REQ-PARTICIPANT"
    assert attendees["mailto:dana@contoso.com"]["ROLE"] == "OPT-PARTICIPANT"
    assert all(p["RSVP"] == "TRUE" for p in attendees.values())
    alarm = event.walk("VALARM")[0]
    assert alarm["TRIGGER"].dt == dt.timedelta(minutes=-15) and str(alarm["ACTION"]) == "DISPLAY"
    assert str(event["TRANSP"]) == "OPAQUE" and "CLASS" not in event

    out = wire(to_application_data(text, "14.1", OPTIONS, owner="tom@contoso.com"))
    assert values(out, "StartTime") == ["20261201T180000Z"] and values(out, "EndTime") == ["20261201T190000Z"]
    assert values(out, "Subject") == ["Budget review"] and values(out, "Location") == ["Conference Room 1"]
    assert values(out, "Email") == ["chris@contoso.com", "dana@contoso.com"]
    assert values(out, "AttendeeType") == ["1", "2"]
    assert values(out, "AttendeeStatus") == ["0", "0"]  # the phone sent no status: response unknown
    assert values(out, "MeetingStatus") == ["1"] and values(out, "ResponseType") == ["1"]
    assert values(out, "ResponseRequested") == ["1"] and values(out, "Reminder") == ["15"]
    assert values(out, "Data", "AirSyncBase") == ["Quarterly numbers"]
    assert values(out, "OrganizerEmail") == ["tom@contoso.com"]
    timezone = values(out, "Timezone")[0]
    assert base64.b64decode(timezone)[:4] == (480).to_bytes(4, "little")


# A recurring weekly meeting with one moved and one deleted occurrence, in the shape of the MS-ASCAL example.
WEEKLY_ADD = f"""
  <calendar:Timezone>{PACIFIC_B64}</calendar:Timezone>
  <calendar:AllDayEvent>0</calendar:AllDayEvent>
  <calendar:BusyStatus>2</calendar:BusyStatus>
  <calendar:StartTime>20260105T170000Z</calendar:StartTime>
  <calendar:EndTime>20260105T180000Z</calendar:EndTime>
  <calendar:Subject>Weekly sync</calendar:Subject>
  <calendar:UID>weekly-sync-1</calendar:UID>
  <calendar:Sensitivity>0</calendar:Sensitivity>
  <calendar:MeetingStatus>0</calendar:MeetingStatus>
  <calendar:Recurrence>
    <calendar:Type>1</calendar:Type>
    <calendar:Interval>1</calendar:Interval>
    <calendar:DayOfWeek>2</calendar:DayOfWeek>
    <calendar:Until>20260223T170000Z</calendar:Until>
  </calendar:Recurrence>
  <calendar:Exceptions>
    <calendar:Exception>
      <calendar:Deleted>1</calendar:Deleted>
      <calendar:ExceptionStartTime>20260119T170000Z</calendar:ExceptionStartTime>
    </calendar:Exception>
    <calendar:Exception>
      <calendar:ExceptionStartTime>20260126T170000Z</calendar:ExceptionStartTime>
      <calendar:Subject>Weekly sync (moved)</calendar:Subject>
      <calendar:StartTime>20260127T200000Z</calendar:StartTime>
      <calendar:EndTime>20260127T210000Z</calendar:EndTime>
      <calendar:Location>Cafe</calendar:Location>
    </calendar:Exception>
  </calendar:Exceptions>
"""


def test_sync_add_of_a_weekly_meeting_with_an_exception_and_a_deleted_occurrence():
    text = from_application_data(wire(app(WEEKLY_ADD)), "14.1")
    event = master(text)
    assert event["RRULE"]["FREQ"] == ["WEEKLY"] and event["RRULE"]["BYDAY"] == ["MO"]
    assert [d.dt.astimezone(UTC) for d in event["EXDATE"].dts] == [dt.datetime(2026, 1, 19, 17, tzinfo=UTC)]
    override = next(e for e in icalendar.Calendar.from_ical(text).walk("VEVENT") if "RECURRENCE-ID" in e)
    assert override["RECURRENCE-ID"].dt == dt.datetime(2026, 1, 26, 9, tzinfo=ZoneInfo("America/Los_Angeles"))
    assert str(override["SUMMARY"]) == "Weekly sync (moved)" and str(override["LOCATION"]) == "Cafe"
    assert str(override["TRANSP"]) == "OPAQUE"   # inherited from the series
    assert starts(text) == [dt.datetime(2026, 1, d, 17, tzinfo=UTC) for d in (5, 12)] + [
        dt.datetime(2026, 1, 27, 20, tzinfo=UTC)] + [dt.datetime(2026, 2, d, 17, tzinfo=UTC) for d in (2, 9, 16, 23)]

    out = wire(to_application_data(text, "14.1", OPTIONS))
    exceptions = out.find("Exceptions", "Calendar").findall("Exception")
    assert [e.text_of("ExceptionStartTime") for e in exceptions] == ["20260119T170000Z", "20260126T170000Z"]
    assert exceptions[0].text_of("Deleted") == "1"
    assert exceptions[1].text_of("Subject") == "Weekly sync (moved)"
    assert exceptions[1].text_of("StartTime") == "20260127T200000Z"
    assert values(out.find("Recurrence", "Calendar"), "Until") == ["20260223T170000Z"]
    out16 = wire(to_application_data(text, "16.1", OPTIONS))
    exceptions16 = out16.find("Exceptions", "Calendar").findall("Exception")
    instance_ids = [e.text_of("InstanceId", "AirSyncBase") for e in exceptions16]
    assert instance_ids == ["20260119T170000Z", "20260126T170000Z"]
    assert values(out16, "ExceptionStartTime") == []


# --- recurrence round trips ---------------------------------------------------------------------------------

RULES = [
    ("DTSTART;TZID=Europe/Berlin:20260105T090000", "FREQ=DAILY;INTERVAL=2;COUNT=10", 0),
    ("DTSTART;TZID=Europe/Berlin:20260105T090000", "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR;UNTIL=20260301T000000Z", 1),
    ("DTSTART;TZID=Europe/Berlin:20260105T090000", "FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20260401T000000Z", 1),
    ("DTSTART;TZID=Europe/Berlin:20260105T090000", "FREQ=WEEKLY;INTERVAL=3;COUNT=8;WKST=MO", 1),
    ("DTSTART;TZID=America/New_York:20260115T140000", "FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=15;COUNT=6", 2),
    ("DTSTART;TZID=America/New_York:20260113T140000", "FREQ=MONTHLY;BYDAY=2TU;COUNT=12", 3),
    ("DTSTART;TZID=America/New_York:20260130T140000", "FREQ=MONTHLY;BYDAY=-1FR;UNTIL=20261231T235959Z", 3),
    ("DTSTART;TZID=America/New_York:20260130T140000", "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;COUNT=9", 3),
    ("DTSTART;VALUE=DATE:20260314", "FREQ=YEARLY;BYMONTH=3;BYMONTHDAY=14", 5),
    ("DTSTART;TZID=Australia/Sydney:20261126T180000", "FREQ=YEARLY;BYMONTH=11;BYDAY=4TH;COUNT=3", 6),
    ("DTSTART;VALUE=DATE:20260101", "FREQ=YEARLY;INTERVAL=2;UNTIL=20300101", 5),
]


@pytest.mark.parametrize("dtstart, rrule, kind", RULES)
@pytest.mark.parametrize("version", ["12.1", "14.1", "16.1"])
def test_recurrence_round_trip(dtstart, rrule, kind, version):
    all_day = "VALUE=DATE" in dtstart
    end = "DTEND;VALUE=DATE:" + dtstart[-8:] if all_day else ""
    text = event_text(f"{dtstart}\r\n{end}\r\nRRULE:{rrule}\r\nSUMMARY:Series\r\n".replace("\r\n\r\n", "\r\n"))
    out = wire(to_application_data(text, version, OPTIONS))
    recurrence = out.find("Recurrence", "Calendar")
    assert recurrence is not None and recurrence.text_of("Type") == str(kind)
    stored = from_application_data(out, version)
    window = ((2026, 1, 1), (2031, 1, 1))
    assert starts(stored, *window) == starts(text, *window)
    assert len(starts(text, *window)) > 1
    again = wire(to_application_data(stored, version, OPTIONS))
    assert again.find("Recurrence", "Calendar") == recurrence


@pytest.mark.parametrize("rrule", ["FREQ=DAILY;BYHOUR=9,17", "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=1,-1",
                                   "FREQ=MINUTELY;INTERVAL=30", "FREQ=MONTHLY;BYMONTHDAY=1,15"])
def test_unexpressible_rule_goes_out_without_recurrence_and_stays(rrule):
    text = event_text(f"DTSTART;TZID=Europe/Berlin:20260105T090000\r\nDTEND;TZID=Europe/Berlin:20260105T100000\r\n"
                      f"RRULE:{rrule}\r\nSUMMARY:Odd\r\n")
    out = wire(to_application_data(text, "14.1", OPTIONS))
    assert out.find("Recurrence", "Calendar") is None and out.find("Exceptions", "Calendar") is None
    for element in out.children:
        if element.name == "Subject":
            element.text = "Odd, renamed"
    stored = master(from_application_data(out, "14.1", text))
    assert stored["RRULE"].to_ical().decode() == icalendar.vRecur.from_ical(rrule).to_ical().decode()
    assert str(stored["SUMMARY"]) == "Odd, renamed"


def test_removing_recurrence_drops_the_rule_and_its_exceptions():
    text = from_application_data(app(WEEKLY_ADD), "14.1")
    out = to_application_data(text, "14.1", OPTIONS)
    out.children = [c for c in out.children if c.name not in ("Recurrence", "Exceptions")]
    stored = from_application_data(out, "14.1", text)
    assert "RRULE" not in master(stored) and "EXDATE" not in master(stored)
    assert len(icalendar.Calendar.from_ical(stored).walk("VEVENT")) == 1


@pytest.mark.parametrize("body, message", [
    ("<calendar:Type>4</calendar:Type>", "Type"),
    ("<calendar:Type>2</calendar:Type><calendar:CalendarType>6</calendar:CalendarType>", "calendar type"),
    ("<calendar:Type>6</calendar:Type><calendar:DayOfWeek>4</calendar:DayOfWeek>", "WeekOfMonth"),
    ("<calendar:Type>1</calendar:Type><calendar:DayOfWeek>200</calendar:DayOfWeek>", "DayOfWeek"),
])
def test_bad_recurrence_is_refused(body, message):
    data = app(f"<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:Recurrence>{body}"
               "</calendar:Recurrence>")
    with pytest.raises(ItemError, match=message):
        from_application_data(data, "14.1")


def test_gregorian_calendar_types_are_accepted():
    data = app("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:Recurrence>"
               "<calendar:Type>1</calendar:Type><calendar:DayOfWeek>2</calendar:DayOfWeek>"
               "<calendar:CalendarType>6</calendar:CalendarType></calendar:Recurrence>")
    assert "FREQ=WEEKLY" in from_application_data(data, "14.1")  # weekly means the same in every calendar


# --- all-day events ---------------------------------------------------------------------------------------

ALL_DAY = event_text("DTSTART;VALUE=DATE:20261224\r\nDTEND;VALUE=DATE:20261226\r\nSUMMARY:Holidays\r\n"
                     "TRANSP:TRANSPARENT\r\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_all_day_event_out_and_back(version):
    out = wire(to_application_data(ALL_DAY, version, OPTIONS))
    assert values(out, "AllDayEvent") == ["1"] and values(out, "BusyStatus") == ["0"]
    assert values(out, "StartTime") == ["20261224T000000Z"] and values(out, "EndTime") == ["20261226T000000Z"]
    assert base64.b64decode(values(out, "Timezone")[0]) == blob_for(None, 2026)
    event = master(from_application_data(out, version, ALL_DAY))
    assert (event["DTSTART"].dt, event["DTEND"].dt) == (dt.date(2026, 12, 24), dt.date(2026, 12, 26))


@pytest.mark.parametrize("zone, start, end", [
    (BERLIN, "20261223T230000Z", "20261225T230000Z"),                    # local midnight, Exchange style
    (ZoneInfo("America/New_York"), "20261224T050000Z", "20261226T050000Z"),
    (ZoneInfo("America/New_York"), "20261224T000000Z", "20261226T000000Z"),  # EAS 16 "local midnight as UTC"
    (ZoneInfo("Asia/Tokyo"), "20261223T150000Z", "20261225T150000Z"),
])
def test_all_day_event_from_devices_in_other_zones(zone, start, end):
    data = app(f"<calendar:Timezone>{nameless_blob(zone)}</calendar:Timezone>"
               f"<calendar:AllDayEvent>1</calendar:AllDayEvent><calendar:StartTime>{start}</calendar:StartTime>"
               f"<calendar:EndTime>{end}</calendar:EndTime><calendar:Subject>Holidays</calendar:Subject>")
    text = from_application_data(data, "14.1")
    event = master(text)
    assert (event["DTSTART"].dt, event["DTEND"].dt) == (dt.date(2026, 12, 24), dt.date(2026, 12, 26))
    assert "TZID" not in text  # all-day events are floating dates and need no VTIMEZONE


# --- daylight saving --------------------------------------------------------------------------------------

@pytest.mark.parametrize("blob", [b64(blob_for(BERLIN, 2026)), nameless_blob(BERLIN)])
def test_berlin_weekly_meeting_stays_at_nine_local_across_dst(blob):
    data = app(f"<calendar:Timezone>{blob}</calendar:Timezone><calendar:StartTime>20260105T080000Z"
               "</calendar:StartTime><calendar:EndTime>20260105T090000Z</calendar:EndTime>"
               "<calendar:Subject>Standup</calendar:Subject><calendar:Recurrence><calendar:Type>1</calendar:Type>"
               "<calendar:DayOfWeek>2</calendar:DayOfWeek><calendar:Occurrences>52</calendar:Occurrences>"
               "</calendar:Recurrence>")
    text = from_application_data(data, "14.1")
    assert master(text)["DTSTART"].params["TZID"] == "Europe/Berlin"
    instances = starts(text)
    assert len(instances) == 52
    assert {i.astimezone(BERLIN).time() for i in instances} == {dt.time(9)}
    assert {i.hour for i in instances} == {7, 8}  # 08:00 UTC in winter, 07:00 UTC in summer
    again = from_application_data(wire(to_application_data(text, "14.1", OPTIONS)), "14.1", text)
    assert starts(again) == instances


def test_a_blob_no_zone_has_gets_its_own_vtimezone():
    custom = Rule(-60, Change(10, 0, 5, 3), Change(3, 0, 4, 2), 0, -60)  # summer time from the 4th Sunday
    data = app(f"<calendar:Timezone>{b64(pack_rule(custom))}</calendar:Timezone>"
               "<calendar:StartTime>20260105T080000Z</calendar:StartTime>"
               "<calendar:EndTime>20260105T090000Z</calendar:EndTime><calendar:Recurrence><calendar:Type>0"
               "</calendar:Type><calendar:Occurrences>120</calendar:Occurrences></calendar:Recurrence>")
    text = from_application_data(data, "14.1")
    tzid = master(text)["DTSTART"].params["TZID"]
    assert tzid.startswith("Custom/Bias-60")
    assert [str(v["TZID"]) for v in icalendar.Calendar.from_ical(text).walk("VTIMEZONE")] == [tzid]
    instances = starts(text)
    # 22 March 2026 is the 4th Sunday: from that day the meeting is at 07:00 UTC, a week before Berlin's change
    assert dt.datetime(2026, 3, 21, 8, tzinfo=UTC) in instances
    assert dt.datetime(2026, 3, 22, 7, tzinfo=UTC) in instances
    out = wire(to_application_data(text, "14.1", OPTIONS))
    assert base64.b64decode(values(out, "Timezone")[0])[:4] == (-60).to_bytes(4, "little", signed=True)


# --- Change merges ----------------------------------------------------------------------------------------

RICH = event_text(
    "DTSTART;TZID=Europe/Berlin:20260310T140000\r\nDTEND;TZID=Europe/Berlin:20260310T150000\r\n"
    "SUMMARY:Design review\r\nLOCATION:Room 4\r\nDESCRIPTION:Bring drafts\r\nCATEGORIES:Work\r\n"
    "X-FOO;X-PARAM=1:keep me\r\nATTACH;FMTTYPE=application/pdf:https://example.com/spec.pdf\r\n"
    "ORGANIZER;CN=Tom:mailto:tom@example.com\r\n"
    "ATTENDEE;CN=Ann;PARTSTAT=ACCEPTED;ROLE=REQ-PARTICIPANT;X-NUM-GUESTS=2:mailto:ann@example.com\r\n"
    "SEQUENCE:3\r\n"
    "BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:Soon\r\nTRIGGER:-PT10M\r\nX-WR-ALARMUID:a1\r\nEND:VALARM\r\n"
    "BEGIN:VALARM\r\nACTION:AUDIO\r\nTRIGGER;VALUE=DATE-TIME:20260310T120000Z\r\nEND:VALARM\r\n",
    extra="X-WR-CALNAME:Work\r\nBEGIN:X-CUSTOM-THING\r\nX-DATA:opaque\r\nEND:X-CUSTOM-THING\r\n")


def change(text: str, version: str, **edits) -> Element:
    out = to_application_data(text, version, OPTIONS, owner="tom@example.com")
    for name, value in edits.items():
        out.children = [c for c in out.children if c.name != name]
        if value is not None:
            out.children.append(Element("Calendar", name, text=value))
    return wire(out)


def test_change_keeps_what_eas_cannot_carry():
    data = change(RICH, "14.1", Subject="Design review v2", Reminder="30")
    text = from_application_data(data, "14.1", RICH, owner="tom@example.com")
    cal = icalendar.Calendar.from_ical(text)
    event = master(text)
    assert str(event["SUMMARY"]) == "Design review v2" and str(event["UID"]) == "evt-1@example.com"
    assert str(event["X-FOO"]) == "keep me" and event["X-FOO"].params["X-PARAM"] == "1"
    assert str(event["ATTACH"]) == "https://example.com/spec.pdf" and int(event["SEQUENCE"]) == 3
    attendee = event["ATTENDEE"]
    assert attendee.params["X-NUM-GUESTS"] == "2" and attendee.params["PARTSTAT"] == "ACCEPTED"
    alarms = event.walk("VALARM")
    assert alarms[0]["TRIGGER"].dt == dt.timedelta(minutes=-30) and str(alarms[0]["X-WR-ALARMUID"]) == "a1"
    assert str(alarms[0]["DESCRIPTION"]) == "Soon" and str(alarms[1]["ACTION"]) == "AUDIO"
    assert str(cal["X-WR-CALNAME"]) == "Work" and str(cal.walk("X-CUSTOM-THING")[0]["X-DATA"]) == "opaque"
    assert str(event["DESCRIPTION"]) == "Bring drafts" and str(event["LOCATION"]) == "Room 4"


def test_change_before_16_removes_what_the_device_left_out_but_the_body():
    data = change(RICH, "14.1", Location=None, Categories=None, Reminder=None)
    data.children = [c for c in data.children if c.name != "Body"]
    event = master(from_application_data(data, "14.1", RICH, owner="tom@example.com"))
    assert "LOCATION" not in event and "CATEGORIES" not in event
    assert str(event["DESCRIPTION"]) == "Bring drafts"
    assert [str(a["ACTION"]) for a in event.walk("VALARM")] == ["AUDIO"]  # the absolute alarm stays
    assert str(event["ORGANIZER"]) == "mailto:tom@example.com"


def test_change_before_16_with_supported_keeps_the_elements_not_listed():
    data = change(RICH, "14.1", Location=None, Categories=None)
    event = master(from_application_data(data, "14.1", RICH, owner="tom@example.com",
                                         supported={"Subject", "Categories"}))
    assert str(event["LOCATION"]) == "Room 4" and "CATEGORIES" not in event


def test_change_in_16_keeps_absent_elements():
    data = change(RICH, "16.1", Subject="Only this", Categories=None)
    data.children = [c for c in data.children if c.ns != "AirSyncBase" and c.name != "Attendees"]
    event = master(from_application_data(data, "16.1", RICH, owner="tom@example.com"))
    assert str(event["SUMMARY"]) == "Only this"
    assert str(event["LOCATION"]) == "Room 4" and [str(c) for c in event["CATEGORIES"].cats] == ["Work"]
    assert str(event["ATTENDEE"]) == "mailto:ann@example.com"


def test_change_16_location_and_body_are_airsyncbase():
    out = wire(to_application_data(RICH, "16.0", OPTIONS))
    assert out.find("Location", "Calendar") is None
    assert out.find("Location", "AirSyncBase").text_of("DisplayName", "AirSyncBase") == "Room 4"
    out.find("Location", "AirSyncBase").children[0].text = "Room 5"
    out.find("Body", "AirSyncBase").find("Data", "AirSyncBase").text = "New notes"
    event = master(from_application_data(out, "16.0", RICH))
    assert (str(event["LOCATION"]), str(event["DESCRIPTION"])) == ("Room 5", "New notes")


def test_change_of_one_instance_in_16_and_deleting_another():
    text = from_application_data(app(WEEKLY_ADD), "14.1")
    data = app("<calendar:Subject>Just this once</calendar:Subject>"
               "<calendar:StartTime>20260202T190000Z</calendar:StartTime>"
               "<calendar:EndTime>20260202T200000Z</calendar:EndTime>")
    changed = from_application_data(data, "16.1", text, instance_id="20260202T170000Z")
    overrides = {e["RECURRENCE-ID"].dt.astimezone(UTC): e for e in icalendar.Calendar.from_ical(changed).walk("VEVENT")
                 if "RECURRENCE-ID" in e}
    moved = overrides[dt.datetime(2026, 2, 2, 17, tzinfo=UTC)]
    assert str(moved["SUMMARY"]) == "Just this once" and str(moved["TRANSP"]) == "OPAQUE"
    assert str(master(changed)["SUMMARY"]) == "Weekly sync"
    assert str(overrides[dt.datetime(2026, 1, 26, 17, tzinfo=UTC)]["SUMMARY"]) == "Weekly sync (moved)"
    deleted = delete_instance(changed, "2026-02-09T17:00:00.000Z")
    instances = starts(deleted)
    assert dt.datetime(2026, 2, 9, 17, tzinfo=UTC) not in instances
    assert dt.datetime(2026, 2, 2, 19, tzinfo=UTC) in instances and len(instances) == 6


def test_add_gets_a_new_uid_or_the_client_uid():
    data = app("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:Subject>x</calendar:Subject>")
    first, second = (str(master(from_application_data(data, "14.1"))["UID"]) for _ in range(2))
    assert first != second and len(first) == 36
    data.children.append(Element("Calendar", "ClientUid", text="client-uid-7"))
    assert str(master(from_application_data(data, "16.1"))["UID"]) == "client-uid-7"


def test_change_keeps_the_stored_uid():
    data = change(RICH, "14.1", UID="something-else")
    assert str(master(from_application_data(data, "14.1", RICH))["UID"]) == "evt-1@example.com"


# --- meetings, busy status, sensitivity ---------------------------------------------------------------------

RECEIVED = event_text(
    "DTSTART:20260310T130000Z\r\nDTEND:20260310T140000Z\r\nSUMMARY:Invite\r\nSTATUS:CONFIRMED\r\n"
    "ORGANIZER;CN=Boss:mailto:boss@example.com\r\n"
    "ATTENDEE;PARTSTAT=TENTATIVE;RSVP=TRUE:mailto:me@example.com\r\n"
    "ATTENDEE;PARTSTAT=ACCEPTED;CUTYPE=RESOURCE:mailto:room@example.com\r\n"
    "X-MICROSOFT-DISALLOW-COUNTER:TRUE\r\nX-CASGATE-REPLYTIME:20260301T100000Z\r\n")


def test_received_meeting_status_and_response():
    out = wire(to_application_data(RECEIVED, "14.1", OPTIONS, owner="Me@Example.com"))
    assert values(out, "MeetingStatus") == ["3"] and values(out, "ResponseType") == ["2"]
    assert values(out, "ResponseRequested") == ["1"] and values(out, "DisallowNewTimeProposal") == ["1"]
    assert values(out, "AppointmentReplyTime") == ["20260301T100000Z"]
    assert values(out, "AttendeeStatus") == ["2", "3"] and values(out, "AttendeeType") == ["1", "3"]
    assert values(out, "OrganizerName") == ["Boss"]
    cancelled = RECEIVED.replace("STATUS:CONFIRMED", "STATUS:CANCELLED")
    assert values(to_application_data(cancelled, "14.1", OPTIONS, owner="me@example.com"), "MeetingStatus") == ["7"]
    # without knowing the user, a meeting someone else organised reads as received
    assert values(to_application_data(RECEIVED, "14.1", OPTIONS), "MeetingStatus") == ["3"]
    out.children = [c for c in out.children if c.name != "ResponseType"] + [
        Element("Calendar", "ResponseType", text="3")]
    event = master(from_application_data(out, "14.1", RECEIVED, owner="me@example.com"))
    mine = next(a for a in event["ATTENDEE"] if "me@" in str(a))
    assert mine.params["PARTSTAT"] == "ACCEPTED" and str(event["ORGANIZER"]) == "mailto:boss@example.com"
    assert str(event["X-MICROSOFT-DISALLOW-COUNTER"]) == "TRUE" and str(event["STATUS"]) == "CONFIRMED"


def test_meeting_status_cancelled_in_and_out():
    out = change(RICH, "14.1", MeetingStatus="5")
    event = master(from_application_data(out, "14.1", RICH, owner="tom@example.com"))
    assert str(event["STATUS"]) == "CANCELLED"
    text = from_application_data(out, "14.1", RICH, owner="tom@example.com")
    assert values(to_application_data(text, "14.1", OPTIONS, owner="tom@example.com"), "MeetingStatus") == ["5"]
    assert values(to_application_data(text, "14.1", OPTIONS, owner="ann@example.com"), "MeetingStatus") == ["7"]
    reopened = from_application_data(change(text, "14.1", MeetingStatus="1"), "14.1", text, owner="tom@example.com")
    assert "STATUS" not in master(reopened)


@pytest.mark.parametrize("busy", range(5))
@pytest.mark.parametrize("sensitivity", range(4))
def test_busy_status_and_sensitivity_round_trip(busy, sensitivity):
    out = change(RICH, "14.1", BusyStatus=str(busy), Sensitivity=str(sensitivity))
    text = from_application_data(out, "14.1", RICH)
    again = wire(to_application_data(text, "14.1", OPTIONS))
    assert values(again, "BusyStatus") == [str(busy)] and values(again, "Sensitivity") == [str(sensitivity)]
    assert ("TRANSP:TRANSPARENT" in text) == (busy == 0)


# --- versions ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_gets_its_elements(version):
    text = from_application_data(app(WEEKLY_ADD), "14.1")
    text = text.replace("SUMMARY:Weekly sync\r\n", "SUMMARY:Weekly sync\r\nDESCRIPTION:Notes\r\n"
                        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ann@example.com\r\n")
    text = text.replace("RRULE:FREQ=WEEKLY;", "RRULE:FREQ=WEEKLY;WKST=MO;")
    out = wire(to_application_data(text, version, OPTIONS, owner="me@example.com"))
    v = tuple(int(p) for p in version.split("."))
    names = {(e.ns, e.name) for e in out.iter()}
    assert (("Calendar", "Body") in names) == (v == (2, 5))
    assert (("AirSyncBase", "Body") in names) == (v >= (12, 0))
    assert (("Calendar", "AttendeeStatus") in names) == (v >= (12, 0))
    assert (("Calendar", "ResponseType") in names) == (v >= (14, 0))
    assert (("Calendar", "FirstDayOfWeek") in names) == (v >= (14, 1))
    assert (("Calendar", "ExceptionStartTime") in names) == (v < (16, 0))
    assert (("AirSyncBase", "InstanceId") in names) == (v >= (16, 0))
    assert ("Calendar", "UID") in names
    body = out.find("Body", "AirSyncBase")
    assert (body.text_of("Data", "AirSyncBase") if body else out.find("Body", "Calendar").text) == "Notes"


def test_body_truncation_follows_the_options():
    text = event_text("DTSTART:20260310T130000Z\r\nDESCRIPTION:" + "x" * 500 + "\r\n")
    out = to_application_data(text, "14.1", BodyOptions((BodyPreference(1, 100),)))
    body = out.find("Body", "AirSyncBase")
    assert body.text_of("Truncated", "AirSyncBase") == "1" and len(body.text_of("Data", "AirSyncBase")) == 100
    legacy = to_application_data(text, "2.5", BodyOptions(truncation=100))
    assert values(legacy, "BodyTruncated") == ["1"]


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ("<calendar:Timezone>!!!</calendar:Timezone><calendar:StartTime>20260105T080000Z</calendar:StartTime>",
     "base64"),
    ("<calendar:Subject>no start</calendar:Subject>", "StartTime"),
    ("<calendar:StartTime>2026-13-05</calendar:StartTime>", "date-time"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:EndTime>20260105T070000Z"
     "</calendar:EndTime>", "before"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:MeetingStatus>2</calendar:MeetingStatus>",
     "MeetingStatus"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:BusyStatus>9</calendar:BusyStatus>",
     "BusyStatus"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:Attendees><calendar:Attendee>"
     "<calendar:Name>No address</calendar:Name></calendar:Attendee></calendar:Attendees>", "Email"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:UID>" + "u" * 301 + "</calendar:UID>",
     "300"),
    ("<calendar:StartTime>20260105T080000Z</calendar:StartTime><calendar:Recurrence><calendar:Type>1"
     "</calendar:Type></calendar:Recurrence><calendar:Exceptions><calendar:Exception><calendar:Deleted>1"
     "</calendar:Deleted></calendar:Exception></calendar:Exceptions>", "ExceptionStartTime"),
])
def test_bad_device_data_is_an_item_error(body, message):
    with pytest.raises(ItemError, match=message):
        from_application_data(app(body), "14.1")


@pytest.mark.parametrize("text", ["", "not a calendar", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                                  event_text("SUMMARY:no start\r\n")])
def test_unreadable_stored_object_is_an_item_error(text):
    with pytest.raises(ItemError):
        to_application_data(text, "14.1", OPTIONS)


def test_unknown_version_is_an_item_error():
    with pytest.raises(ItemError):
        to_application_data(ALL_DAY, "15.0", OPTIONS)
    with pytest.raises(ItemError):
        from_application_data(app(""), "3.0")


# --- fuzzing ------------------------------------------------------------------------------------------------

_TEXTS = st.one_of(
    st.text(max_size=30), st.integers(-5, 300).map(str), st.integers(0, 6).map(str),
    st.sampled_from(["20260105T080000Z", "20260105T090000Z", "20260301T000000Z"]), st.sampled_from([
        "20260105T080000Z", "2026-01-05T08:00:00.000Z", "20261301T000000Z", "00010101T000000Z", "",
        PACIFIC_B64, b64(blob_for(BERLIN, 2026)), b64(bytes(172)), b64(bytes(range(172)))]))
_LEAVES = ["Timezone", "AllDayEvent", "BusyStatus", "DtStamp", "EndTime", "StartTime", "Location", "Reminder",
           "Sensitivity", "Subject", "UID", "MeetingStatus", "OrganizerEmail", "OrganizerName", "ResponseRequested",
           "ResponseType", "DisallowNewTimeProposal", "AppointmentReplyTime", "ClientUid", "Body"]
_REC = ["Type", "Interval", "Occurrences", "Until", "DayOfWeek", "DayOfMonth", "WeekOfMonth", "MonthOfYear",
        "CalendarType", "IsLeapMonth", "FirstDayOfWeek"]


def _leaf(names):
    return st.builds(lambda n, t: Element("Calendar", n, text=t), st.sampled_from(names), _TEXTS)


_ATTENDEE = st.builds(lambda kids: Element("Calendar", "Attendee", kids),
                      st.lists(_leaf(["Email", "Name", "AttendeeStatus", "AttendeeType"]), max_size=4))
_EXCEPTION = st.builds(lambda kids: Element("Calendar", "Exception", kids),
                       st.lists(_leaf(["Deleted", "ExceptionStartTime", "Subject", "StartTime", "EndTime",
                                       "AllDayEvent", "Reminder", "BusyStatus"]), max_size=6))
_CHILD = st.one_of(
    _leaf(_LEAVES),
    st.builds(lambda kids: Element("Calendar", "Recurrence", kids), st.lists(_leaf(_REC), max_size=6)),
    st.builds(lambda kids: Element("Calendar", "Attendees", kids), st.lists(_ATTENDEE, max_size=3)),
    st.builds(lambda kids: Element("Calendar", "Exceptions", kids), st.lists(_EXCEPTION, max_size=3)),
    st.builds(lambda kids: Element("Calendar", "Categories", kids), st.lists(_leaf(["Category"]), max_size=3)),
    st.builds(lambda t: Element("AirSyncBase", "Location", [Element("AirSyncBase", "DisplayName", text=t)]), _TEXTS),
)
_SEED = [None, RICH, ALL_DAY, RECEIVED]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CHILD, max_size=12), st.sampled_from(VERSIONS), st.sampled_from(_SEED))
def test_random_application_data_stores_or_raises_item_error(children, version, previous):
    data = Element("AirSync", "ApplicationData", children)
    try:
        text = from_application_data(data, version, previous, owner="tom@example.com")
    except ItemError:
        return
    assert isinstance(icalendar.Calendar.from_ical(text), icalendar.Calendar)
    out = to_application_data(text, version, OPTIONS, owner="tom@example.com")
    decode(encode(out))


def test_exceptions_of_an_unexpressible_series_survive_a_change():
    text = event_text("DTSTART:20260105T090000Z\r\nDTEND:20260105T100000Z\r\nRRULE:FREQ=DAILY;BYHOUR=9,17\r\n"
                      "EXDATE:20260106T170000Z\r\nSUMMARY:Twice a day\r\n")
    text = text.replace("END:VCALENDAR", "BEGIN:VEVENT\r\nUID:evt-1@example.com\r\nDTSTAMP:20260101T120000Z\r\n"
                        "RECURRENCE-ID:20260107T090000Z\r\nDTSTART:20260107T100000Z\r\nDTEND:20260107T110000Z\r\n"
                        "SUMMARY:Later\r\nEND:VEVENT\r\nEND:VCALENDAR")
    stored = from_application_data(change(text, "14.1", Subject="Twice daily"), "14.1", text)
    assert starts(stored, (2026, 1, 1), (2026, 1, 9)) == starts(text, (2026, 1, 1), (2026, 1, 9))
    assert "Later" in stored and "EXDATE:20260106T170000Z" in stored


@pytest.mark.parametrize("edit, kept", [({"Subject": "Renamed"}, True), ({"StartTime": "20260105T180000Z"}, False)])
def test_16_series_changes_keep_or_drop_exceptions(edit, kept):
    text = from_application_data(app(WEEKLY_ADD), "14.1")
    out = to_application_data(text, "16.1", OPTIONS)
    out.children = [c for c in out.children if c.name != "Exceptions"]
    for name, value in edit.items():
        next(c for c in out.children if c.name == name).text = value
    stored = from_application_data(out, "16.1", text)
    overrides = [e for e in icalendar.Calendar.from_ical(stored).walk("VEVENT") if "RECURRENCE-ID" in e]
    assert (len(overrides) == 1 and "EXDATE" in master(stored)) == kept
    assert (not overrides and "EXDATE" not in master(stored)) == (not kept)


def test_deleting_an_instance_of_a_single_event_is_an_item_error():
    with pytest.raises(ItemError):
        delete_instance(ALL_DAY, "20261224T000000Z")
