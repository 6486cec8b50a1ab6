"""Tasks class (MS-ASTASK) <-> VTODO: the protocol example, field round trips, recurrences, completion, dates
and reminders, Change merges that keep what EAS cannot say, and fuzzing."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import date, datetime, timezone

import pytest
import recurring_ical_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icalendar import Calendar

from adapters.dav import CalDavCalendarStore
from adapters.interfaces import Credentials
from gateway.activesync.email_item import BodyOptions, BodyPreference, ItemError
from gateway.activesync.task_item import from_application_data, incomplete, to_application_data
from gateway.activesync.wbxml import Element, decode, encode, from_xml, to_xml

NOW = datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc)
HEAD = '<ApplicationData xmlns="AirSync" xmlns:tasks="Tasks" xmlns:airsyncbase="AirSyncBase">'

# MS-ASTASK 4.1: the ApplicationData of the task a client adds (typed in from the example).
SPEC_ADD = HEAD + """
  <airsyncbase:Body>
    <airsyncbase:Type>2</airsyncbase:Type>
    <airsyncbase:Data>&lt;strong&gt;Must&lt;/strong&gt; complete TPS reports using the new cover sheet.\
</airsyncbase:Data>
  </airsyncbase:Body>
  <tasks:Subject>TPS Reports for August 2009</tasks:Subject>
  <tasks:Importance>2</tasks:Importance>
  <tasks:Categories>
    <tasks:Category>Business</tasks:Category>
    <tasks:Category>Reports</tasks:Category>
  </tasks:Categories>
  <tasks:Complete>0</tasks:Complete>
  <tasks:DueDate>2009-09-03T13:00:00.000Z</tasks:DueDate>
  <tasks:UtcDueDate>2009-09-03T20:00:00.000Z</tasks:UtcDueDate>
  <tasks:ReminderSet>1</tasks:ReminderSet>
  <tasks:ReminderTime>2009-09-02T09:00:00.000Z</tasks:ReminderTime>
  <tasks:Sensitivity>1</tasks:Sensitivity>
  <tasks:StartDate>2009-09-03T09:00:00.000Z</tasks:StartDate>
  <tasks:UtcStartDate>2009-09-03T16:00:00.000Z</tasks:UtcStartDate>
</ApplicationData>"""


def vtodo(text: str):
    return Calendar.from_ical(text).walk("VTODO")[0]


def task_fields(data: Element) -> dict[str, object]:
    """The Tasks elements but the body ones, by name (Categories and Recurrence as nested tuples)."""
    out: dict[str, object] = {}
    for child in data.children:
        if child.ns == "Tasks" and child.name not in ("Body", "BodySize", "BodyTruncated"):
            out[child.name] = tuple((c.name, c.text) for c in child.children) if child.children else child.text
    return out


def app(body: str) -> Element:
    return from_xml(HEAD + body + "</ApplicationData>")


def wbxml_round_trip(data: Element) -> None:
    assert decode(encode(data)) == data


def stored(*lines: str) -> str:
    return "\r\n".join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "BEGIN:VTODO", "UID:task-1",
                        "DTSTAMP:20261101T000000Z", *lines, "END:VTODO", "END:VCALENDAR", ""])


# --- the protocol example --------------------------------------------------------------------------------

def test_spec_add_is_stored_as_a_vtodo_and_goes_back_unchanged() -> None:
    request = from_xml(SPEC_ADD)
    text = from_application_data(request, "14.1", now=NOW)
    todo = vtodo(text)
    assert str(todo["SUMMARY"]) == "TPS Reports for August 2009"
    assert str(todo["DESCRIPTION"]) == "Must complete TPS reports using the new cover sheet."
    assert int(todo["PRIORITY"]) == 1
    assert [str(c) for c in todo["CATEGORIES"].cats] == ["Business", "Reports"]
    assert str(todo["CLASS"]) == "X-PERSONAL"
    assert todo["DTSTART"].dt == datetime(2009, 9, 3, 16, tzinfo=timezone.utc)
    assert todo["DUE"].dt == datetime(2009, 9, 3, 20, tzinfo=timezone.utc)
    assert todo["DUE"].params["X-EAS-UTC-OFFSET"] == "-0700"
    [alarm] = todo.walk("VALARM")
    assert alarm["TRIGGER"].dt == datetime(2009, 9, 2, 9, tzinfo=timezone.utc)
    assert alarm["TRIGGER"].params["VALUE"] == "DATE-TIME"
    assert "STATUS" not in todo and "COMPLETED" not in todo
    assert incomplete(text)
    assert todo["DTSTAMP"].dt == NOW and todo["CREATED"].dt == NOW

    answer = to_application_data(text, "14.1", BodyOptions((BodyPreference(1),)))
    assert task_fields(answer) == task_fields(request)
    wbxml_round_trip(answer)
    assert [c.name for c in answer.children] == [
        "Body", "Categories", "Complete", "DueDate", "UtcDueDate", "Importance", "ReminderSet", "ReminderTime",
        "Sensitivity", "StartDate", "UtcStartDate", "Subject"]  # Tasks code page (schema) order
    assert answer.find("Body", "AirSyncBase").text_of("Data", "AirSyncBase") == (
        "Must complete TPS reports using the new cover sheet.")


def test_known_answer_for_a_thunderbird_style_task_in_14_1() -> None:
    text = stored("SUMMARY:Renew passport", "DESCRIPTION:Photos first", "PRIORITY:0",
                  "DTSTART;TZID=Europe/Berlin:20261125T090000", "DUE;TZID=Europe/Berlin:20261128T170000",
                  "STATUS:IN-PROCESS", "PERCENT-COMPLETE:40", "CATEGORIES:Personal",
                  "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:x", "TRIGGER;RELATED=END:-PT15M", "END:VALARM")
    expected = """<?xml version="1.0" encoding="utf-8"?>
<ApplicationData xmlns="AirSync" xmlns:airsyncbase="AirSyncBase" xmlns:tasks="Tasks">
  <airsyncbase:Body>
    <airsyncbase:Type>1</airsyncbase:Type>
    <airsyncbase:EstimatedDataSize>12</airsyncbase:EstimatedDataSize>
    <airsyncbase:Truncated>0</airsyncbase:Truncated>
    <airsyncbase:Data>Photos first</airsyncbase:Data>
  </airsyncbase:Body>
  <tasks:Categories>
    <tasks:Category>Personal</tasks:Category>
  </tasks:Categories>
  <tasks:Complete>0</tasks:Complete>
  <tasks:DueDate>2026-11-28T17:00:00.000Z</tasks:DueDate>
  <tasks:UtcDueDate>2026-11-28T16:00:00.000Z</tasks:UtcDueDate>
  <tasks:Importance>1</tasks:Importance>
  <tasks:ReminderSet>1</tasks:ReminderSet>
  <tasks:ReminderTime>2026-11-28T15:45:00.000Z</tasks:ReminderTime>
  <tasks:Sensitivity>0</tasks:Sensitivity>
  <tasks:StartDate>2026-11-25T09:00:00.000Z</tasks:StartDate>
  <tasks:UtcStartDate>2026-11-25T08:00:00.000Z</tasks:UtcStartDate>
  <tasks:Subject>Renew passport</tasks:Subject>
</ApplicationData>
"""
    assert to_xml(to_application_data(text, "14.1", BodyOptions((BodyPreference(1),)))) == expected


def test_protocol_2_5_uses_the_tasks_body_elements_both_ways() -> None:
    text = stored("SUMMARY:Long", "DESCRIPTION:" + "x" * 700)
    data = to_application_data(text, "2.5", BodyOptions(truncation=512))
    assert data.find("Body", "AirSyncBase") is None
    assert data.text_of("Body", "Tasks") == "x" * 512
    assert data.text_of("BodySize", "Tasks") == "700"
    assert data.text_of("BodyTruncated", "Tasks") == "1"
    wbxml_round_trip(data)
    changed = from_application_data(app("<tasks:Body>short\r\nnote</tasks:Body><tasks:Subject>Long</tasks:Subject>"),
                                    "2.5", text, now=NOW)
    assert str(vtodo(changed)["DESCRIPTION"]) == "short\nnote"


# --- round trips -----------------------------------------------------------------------------------------

FULL = """
  <tasks:Categories><tasks:Category>A, with comma</tasks:Category><tasks:Category>B;semi</tasks:Category>
  </tasks:Categories>
  <tasks:Complete>1</tasks:Complete>
  <tasks:DateCompleted>2026-11-27T18:04:05.000Z</tasks:DateCompleted>
  <tasks:DueDate>2026-11-28T00:00:00.000Z</tasks:DueDate>
  <tasks:UtcDueDate>2026-11-27T23:00:00.000Z</tasks:UtcDueDate>
  <tasks:Importance>0</tasks:Importance>
  <tasks:ReminderSet>1</tasks:ReminderSet>
  <tasks:ReminderTime>2026-11-27T07:30:00.000Z</tasks:ReminderTime>
  <tasks:Sensitivity>3</tasks:Sensitivity>
  <tasks:StartDate>2026-11-26T00:00:00.000Z</tasks:StartDate>
  <tasks:UtcStartDate>2026-11-25T23:00:00.000Z</tasks:UtcStartDate>
  <tasks:Subject>Ünïcode subject ✓</tasks:Subject>"""


@pytest.mark.parametrize("version", ["2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1"])
def test_every_field_round_trips_in_every_version(version: str) -> None:
    sent = app(FULL)
    text = from_application_data(sent, version, now=NOW)
    todo = vtodo(text)
    assert todo["DTSTART"].dt == date(2026, 11, 26) and todo["DUE"].dt == date(2026, 11, 28)
    assert todo["DUE"].params["X-EAS-UTC-OFFSET"] == "+0100"
    assert str(todo["CLASS"]) == "CONFIDENTIAL" and int(todo["PRIORITY"]) == 9
    assert str(todo["STATUS"]) == "COMPLETED" and int(todo["PERCENT-COMPLETE"]) == 100
    assert todo["COMPLETED"].dt == datetime(2026, 11, 27, 18, 4, 5, tzinfo=timezone.utc)
    back = to_application_data(text, version, BodyOptions())
    assert task_fields(back) == task_fields(sent)
    wbxml_round_trip(back)
    # The device sending back what it got changes nothing but the stamps.
    again = from_application_data(back, version, text, now=NOW)
    assert again == text


def test_importance_and_priority_ranges() -> None:
    expected = {0: "1", 1: "2", 2: "2", 3: "2", 4: "2", 5: "1", 6: "0", 7: "0", 8: "0", 9: "0"}
    for priority, importance in expected.items():
        assert to_application_data(stored(f"PRIORITY:{priority}"), "14.1").text_of("Importance", "Tasks") == importance
    assert to_application_data(stored(), "14.1").text_of("Importance", "Tasks") == "1"
    for importance, priority in ((0, 9), (1, 5), (2, 1)):
        text = from_application_data(app(f"<tasks:Importance>{importance}</tasks:Importance>"), "14.1",
                                     stored("PRIORITY:3"), now=NOW)
        assert int(vtodo(text)["PRIORITY"]) == (3 if importance == 2 else priority)  # 3 is already "high"


@pytest.mark.parametrize("klass,sensitivity", [(None, "0"), ("PUBLIC", "0"), ("X-PERSONAL", "1"), ("PRIVATE", "2"),
                                               ("CONFIDENTIAL", "3"), ("X-SECRET", "2")])
def test_sensitivity_from_class(klass: str | None, sensitivity: str) -> None:
    text = stored(*([f"CLASS:{klass}"] if klass else []))
    assert to_application_data(text, "14.1").text_of("Sensitivity", "Tasks") == sensitivity


# --- recurrence ------------------------------------------------------------------------------------------

def test_daily_task_recurring_until_a_date() -> None:
    sent = app("""<tasks:Subject>Water plants</tasks:Subject>
      <tasks:DueDate>2026-12-01T00:00:00.000Z</tasks:DueDate>
      <tasks:UtcDueDate>2026-12-01T00:00:00.000Z</tasks:UtcDueDate>
      <tasks:StartDate>2026-12-01T00:00:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-12-01T00:00:00.000Z</tasks:UtcStartDate>
      <tasks:Recurrence><tasks:Type>0</tasks:Type><tasks:Start>2026-12-01T00:00:00.000Z</tasks:Start>
        <tasks:Until>2026-12-10T00:00:00.000Z</tasks:Until><tasks:Interval>3</tasks:Interval>
        <tasks:Regenerate>0</tasks:Regenerate><tasks:DeadOccur>0</tasks:DeadOccur></tasks:Recurrence>""")
    text = from_application_data(sent, "14.1", now=NOW)
    todo = vtodo(text)
    assert todo["RRULE"].to_ical() == b"FREQ=DAILY;UNTIL=20261210;INTERVAL=3"
    days = [o["DTSTART"].dt for o in recurring_ical_events.of(Calendar.from_ical(text), components=["VTODO"])
            .between(date(2026, 11, 1), date(2027, 1, 1))]
    assert days == [date(2026, 12, 1), date(2026, 12, 4), date(2026, 12, 7), date(2026, 12, 10)]
    back = to_application_data(text, "14.1")
    assert task_fields(back)["Recurrence"] == (
        ("Type", "0"), ("Start", "2026-12-01T00:00:00.000Z"), ("Until", "2026-12-10T00:00:00.000Z"),
        ("Interval", "3"), ("Regenerate", "0"), ("DeadOccur", "0"), ("CalendarType", "0"), ("IsLeapMonth", "0"))
    wbxml_round_trip(back)


RULES = {
    "weekly": ("<tasks:Type>1</tasks:Type><tasks:Occurrences>10</tasks:Occurrences><tasks:Interval>2</tasks:Interval>"
               "<tasks:DayOfWeek>10</tasks:DayOfWeek>", "FREQ=WEEKLY;COUNT=10;INTERVAL=2;BYDAY=MO,WE"),
    "weekdays": ("<tasks:Type>0</tasks:Type><tasks:Interval>1</tasks:Interval><tasks:DayOfWeek>62</tasks:DayOfWeek>",
                 "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR"),
    "monthly": ("<tasks:Type>2</tasks:Type><tasks:Interval>1</tasks:Interval><tasks:DayOfMonth>15</tasks:DayOfMonth>",
                "FREQ=MONTHLY;BYMONTHDAY=15"),
    "second tuesday": ("<tasks:Type>3</tasks:Type><tasks:Interval>1</tasks:Interval>"
                       "<tasks:DayOfWeek>4</tasks:DayOfWeek><tasks:WeekOfMonth>2</tasks:WeekOfMonth>",
                       "FREQ=MONTHLY;BYDAY=2TU"),
    "last weekday": ("<tasks:Type>3</tasks:Type><tasks:Interval>1</tasks:Interval>"
                     "<tasks:DayOfWeek>62</tasks:DayOfWeek><tasks:WeekOfMonth>5</tasks:WeekOfMonth>",
                     "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1"),
    "yearly": ("<tasks:Type>5</tasks:Type><tasks:Interval>1</tasks:Interval><tasks:DayOfMonth>28</tasks:DayOfMonth>"
               "<tasks:MonthOfYear>11</tasks:MonthOfYear>", "FREQ=YEARLY;BYMONTHDAY=28;BYMONTH=11"),
    "thanksgiving": ("<tasks:Type>6</tasks:Type><tasks:Interval>1</tasks:Interval><tasks:DayOfWeek>16</tasks:DayOfWeek>"
                     "<tasks:WeekOfMonth>4</tasks:WeekOfMonth><tasks:MonthOfYear>11</tasks:MonthOfYear>",
                     "FREQ=YEARLY;BYDAY=4TH;BYMONTH=11"),
}


@pytest.mark.parametrize("name", RULES)
def test_recurrence_types_round_trip(name: str) -> None:
    body, rrule = RULES[name]
    extras = "<tasks:Regenerate>1</tasks:Regenerate><tasks:DeadOccur>1</tasks:DeadOccur>"
    sent = app(f"""<tasks:Subject>{name}</tasks:Subject>
      <tasks:Recurrence><tasks:Type/>{body}{extras}<tasks:CalendarType>0</tasks:CalendarType>
        <tasks:IsLeapMonth>0</tasks:IsLeapMonth><tasks:FirstDayOfWeek>1</tasks:FirstDayOfWeek></tasks:Recurrence>
      <tasks:StartDate>2026-11-03T00:00:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-11-03T00:00:00.000Z</tasks:UtcStartDate>""".replace("<tasks:Type/>", ""))
    recurrence = sent.find("Recurrence", "Tasks")
    recurrence.children.insert(1, Element("Tasks", "Start", text="2026-11-03T00:00:00.000Z"))
    text = from_application_data(sent, "16.1", now=NOW)
    todo = vtodo(text)
    assert todo["RRULE"].to_ical().decode() == rrule + ";WKST=MO"
    assert str(todo["X-EAS-REGENERATE"]) == "1" and str(todo["X-EAS-DEADOCCUR"]) == "1"
    back = to_application_data(text, "16.1")
    assert sorted(task_fields(back)["Recurrence"]) == sorted((c.name, c.text) for c in recurrence.children)
    wbxml_round_trip(back)


def test_lunar_calendar_type_and_leap_month_are_rule_parameters() -> None:
    sent = app("""<tasks:StartDate>2026-06-15T00:00:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-06-15T00:00:00.000Z</tasks:UtcStartDate>
      <tasks:Recurrence><tasks:Type>5</tasks:Type><tasks:Start>2026-06-15T00:00:00.000Z</tasks:Start>
      <tasks:Interval>1</tasks:Interval><tasks:DayOfMonth>1</tasks:DayOfMonth><tasks:MonthOfYear>6</tasks:MonthOfYear>
      <tasks:Regenerate>0</tasks:Regenerate><tasks:DeadOccur>0</tasks:DeadOccur>
      <tasks:CalendarType>15</tasks:CalendarType><tasks:IsLeapMonth>1</tasks:IsLeapMonth></tasks:Recurrence>""")
    text = from_application_data(sent, "14.0", now=NOW)
    rrule = vtodo(text)["RRULE"]
    assert rrule.to_ical() == b"FREQ=YEARLY;BYMONTHDAY=1;BYMONTH=6"  # no RSCALE: see the Radicale test
    assert (rrule.params["X-EAS-CALENDARTYPE"], rrule.params["X-EAS-ISLEAPMONTH"]) == ("15", "1")
    back = to_application_data(text, "14.0")
    assert task_fields(back)["Recurrence"] == task_fields(sent)["Recurrence"]
    assert to_application_data(text, "12.1").find("Recurrence", "Tasks").find("CalendarType") is None


def test_rules_other_clients_write_are_read_with_their_defaults() -> None:
    weekly = to_application_data(stored("DTSTART;VALUE=DATE:20261104", "RRULE:FREQ=WEEKLY"), "14.1")
    assert dict(task_fields(weekly)["Recurrence"])["DayOfWeek"] == "8"  # the start's Wednesday
    monthly = to_application_data(stored("DTSTART;VALUE=DATE:20261104", "RRULE:FREQ=MONTHLY;BYMONTHDAY=-1"), "14.1")
    fields = dict(task_fields(monthly)["Recurrence"])
    assert (fields["Type"], fields["DayOfWeek"], fields["WeekOfMonth"]) == ("3", "127", "5")  # last day
    until = to_application_data(stored("DTSTART;TZID=America/New_York:20261104T090000",
                                       "RRULE:FREQ=DAILY;UNTIL=20261110T140000Z"), "14.1")
    assert dict(task_fields(until)["Recurrence"])["Until"] == "2026-11-10T09:00:00.000Z"


def test_a_rule_eas_cannot_express_is_not_sent_and_survives_a_change() -> None:
    text = stored("SUMMARY:Hourly", "DTSTART:20261104T090000Z", "RRULE:FREQ=HOURLY;INTERVAL=4",
                  "EXDATE:20261104T130000Z")
    data = to_application_data(text, "14.1")
    assert data.find("Recurrence", "Tasks") is None
    lunar = stored("DTSTART;VALUE=DATE:20261104", "RRULE:RSCALE=CHINESE;FREQ=YEARLY;BYMONTH=5L;BYMONTHDAY=1")
    assert to_application_data(lunar, "14.1").find("Recurrence", "Tasks") is None
    data.find("Subject", "Tasks").text = "Every four hours"
    todo = vtodo(from_application_data(data, "14.1", text, now=NOW))
    assert todo["RRULE"].to_ical() == b"FREQ=HOURLY;INTERVAL=4" and "EXDATE" in todo
    assert str(todo["SUMMARY"]) == "Every four hours"


def test_a_change_without_recurrence_ends_an_expressible_rule() -> None:
    text = stored("DTSTART;VALUE=DATE:20261104", "RRULE:FREQ=DAILY", "X-EAS-REGENERATE:1", "EXDATE;VALUE=DATE:20261105")
    todo = vtodo(from_application_data(app("<tasks:Subject>once</tasks:Subject>"), "14.1", text, now=NOW))
    assert not {"RRULE", "EXDATE", "X-EAS-REGENERATE"} & set(todo)


def test_an_older_device_keeps_what_its_version_cannot_say() -> None:
    text = stored("DTSTART;VALUE=DATE:20261104", "RRULE;X-EAS-CALENDARTYPE=8:FREQ=WEEKLY;BYDAY=WE;WKST=SA")
    sent = to_application_data(text, "12.1")
    recurrence = sent.find("Recurrence", "Tasks")
    assert recurrence.find("FirstDayOfWeek") is None and recurrence.find("CalendarType") is None
    recurrence.find("DayOfWeek").text = "12"  # Tuesday and Wednesday
    todo = vtodo(from_application_data(sent, "12.1", text, now=NOW))
    assert todo["RRULE"].to_ical() == b"FREQ=WEEKLY;BYDAY=TU,WE;WKST=SA"
    assert todo["RRULE"].params["X-EAS-CALENDARTYPE"] == "8"


def test_a_recurring_task_without_start_date_gets_dtstart_from_the_recurrence() -> None:
    sent = app("""<tasks:Recurrence><tasks:Type>2</tasks:Type><tasks:Start>2026-11-09T00:00:00.000Z</tasks:Start>
      <tasks:Interval>1</tasks:Interval><tasks:DayOfMonth>9</tasks:DayOfMonth></tasks:Recurrence>""")
    todo = vtodo(from_application_data(sent, "14.1", now=NOW))
    assert todo["DTSTART"].dt == date(2026, 11, 9)
    with pytest.raises(ItemError):
        from_application_data(app("<tasks:Recurrence><tasks:Type>0</tasks:Type></tasks:Recurrence>"), "14.1")


# --- completion ------------------------------------------------------------------------------------------

def test_a_completed_task() -> None:
    text = stored("SUMMARY:Done", "STATUS:COMPLETED", "COMPLETED:20261118T100000Z", "PERCENT-COMPLETE:100")
    data = to_application_data(text, "14.1")
    assert data.text_of("Complete", "Tasks") == "1"
    assert data.text_of("DateCompleted", "Tasks") == "2026-11-18T10:00:00.000Z"
    assert not incomplete(text)
    data.find("Complete", "Tasks").text = "0"
    data.children.remove(data.find("DateCompleted", "Tasks"))
    reopened = from_application_data(data, "14.1", text, now=NOW)
    todo = vtodo(reopened)
    assert str(todo["STATUS"]) == "NEEDS-ACTION" and "COMPLETED" not in todo and "PERCENT-COMPLETE" not in todo
    assert incomplete(reopened)
    done = from_application_data(app("<tasks:Complete>1</tasks:Complete>"), "14.1", reopened, now=NOW)
    assert vtodo(done)["COMPLETED"].dt == NOW and not incomplete(done)


@pytest.mark.parametrize("lines,is_incomplete", [
    ((), True), (("STATUS:NEEDS-ACTION",), True), (("STATUS:IN-PROCESS", "PERCENT-COMPLETE:60"), True),
    (("STATUS:CANCELLED",), True), (("STATUS:COMPLETED",), False), (("PERCENT-COMPLETE:100",), False),
    (("COMPLETED:20261118T100000Z",), False)])
def test_incomplete_filter(lines: tuple[str, ...], is_incomplete: bool) -> None:
    assert incomplete(stored(*lines)) is is_incomplete
    assert to_application_data(stored(*lines), "14.1").text_of("Complete", "Tasks") == str(int(not is_incomplete))


def test_in_process_status_and_percentage_survive_an_unrelated_change() -> None:
    text = stored("SUMMARY:Half", "STATUS:IN-PROCESS", "PERCENT-COMPLETE:50")
    todo = vtodo(from_application_data(app("<tasks:Subject>Half way</tasks:Subject>"), "14.1", text, now=NOW))
    assert str(todo["STATUS"]) == "IN-PROCESS" and int(todo["PERCENT-COMPLETE"]) == 50


# --- dates and reminders ---------------------------------------------------------------------------------

def test_stored_date_forms_as_local_and_utc_pairs() -> None:
    cases = {"DUE;VALUE=DATE:20261128": ("2026-11-28T00:00:00.000Z", "2026-11-28T00:00:00.000Z"),
             "DUE;VALUE=DATE;X-EAS-UTC-OFFSET=+0530:20261128": ("2026-11-28T00:00:00.000Z",
                                                                 "2026-11-27T18:30:00.000Z"),
             "DUE:20261128T100000Z": ("2026-11-28T10:00:00.000Z", "2026-11-28T10:00:00.000Z"),
             "DUE:20261128T100000": ("2026-11-28T10:00:00.000Z", "2026-11-28T10:00:00.000Z"),
             "DUE;TZID=America/New_York:20260701T100000": ("2026-07-01T10:00:00.000Z", "2026-07-01T14:00:00.000Z")}
    for line, (local, utc) in cases.items():
        data = to_application_data(stored(line), "14.1")
        assert (data.text_of("DueDate", "Tasks"), data.text_of("UtcDueDate", "Tasks")) == (local, utc), line
    duration = to_application_data(stored("DTSTART:20261128T100000Z", "DURATION:PT2H"), "14.1")
    assert duration.text_of("UtcDueDate", "Tasks") == "2026-11-28T12:00:00.000Z"


def test_compact_dates_and_a_single_form_are_accepted() -> None:
    text = from_application_data(app("<tasks:UtcDueDate>20261128T100000Z</tasks:UtcDueDate>"), "14.1", now=NOW)
    assert vtodo(text)["DUE"].dt == datetime(2026, 11, 28, 10, tzinfo=timezone.utc)
    assert to_application_data(text, "14.1").text_of("DueDate", "Tasks") == "2026-11-28T10:00:00.000Z"


def test_a_stored_tzid_is_kept_while_the_device_leaves_the_date_alone() -> None:
    text = stored("SUMMARY:x", "DUE;TZID=Europe/Berlin:20261128T170000", "DTSTART;TZID=Europe/Berlin:20261128T090000")
    data = to_application_data(text, "14.1")
    data.find("Subject", "Tasks").text = "y"
    assert "DUE;TZID=Europe/Berlin:20261128T170000" in from_application_data(data, "14.1", text, now=NOW)
    data.find("DueDate", "Tasks").text = "2026-11-29T17:00:00.000Z"
    data.find("UtcDueDate", "Tasks").text = "2026-11-29T16:00:00.000Z"
    todo = vtodo(from_application_data(data, "14.1", text, now=NOW))
    assert todo["DUE"].dt == datetime(2026, 11, 29, 16, tzinfo=timezone.utc)
    assert todo["DTSTART"].dt == datetime(2026, 11, 28, 8, tzinfo=timezone.utc)  # one value type for both
    back = to_application_data(todo.to_ical().decode().join(["BEGIN:VCALENDAR\r\n", "END:VCALENDAR\r\n"]), "14.1")
    assert back.text_of("DueDate", "Tasks") == "2026-11-29T17:00:00.000Z"


def test_mixed_midnight_and_timed_dates_are_both_written_as_date_times() -> None:
    sent = app("""<tasks:StartDate>2026-11-26T00:00:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-11-25T23:00:00.000Z</tasks:UtcStartDate>
      <tasks:DueDate>2026-11-28T15:00:00.000Z</tasks:DueDate>
      <tasks:UtcDueDate>2026-11-28T14:00:00.000Z</tasks:UtcDueDate>""")
    text = from_application_data(sent, "14.1", now=NOW)
    assert "DTSTART;X-EAS-UTC-OFFSET=+0100:20261125T230000Z" in text
    assert task_fields(to_application_data(text, "14.1")) == {**task_fields(sent), "Complete": "0", "Importance": "1",
                                                              "ReminderSet": "0", "Sensitivity": "0"}


def test_relative_alarms_are_sent_as_times_and_a_new_time_keeps_the_alarm_extras() -> None:
    text = stored("DTSTART:20261128T090000Z", "DUE:20261128T170000Z",
                  "BEGIN:VALARM", "ACTION:AUDIO", "ATTACH:https://example.com/ding.ogg", "X-WR-ALARMUID:a1",
                  "TRIGGER:-PT30M", "END:VALARM",
                  "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:later", "TRIGGER;RELATED=END:PT0S", "END:VALARM")
    data = to_application_data(text, "14.1")
    assert data.text_of("ReminderTime", "Tasks") == "2026-11-28T08:30:00.000Z"
    assert "TRIGGER:-PT30M" in from_application_data(data, "14.1", text, now=NOW)  # same time: kept relative
    data.find("ReminderTime", "Tasks").text = "2026-11-28T07:00:00.000Z"
    todo = vtodo(from_application_data(data, "14.1", text, now=NOW))
    first, second = todo.walk("VALARM")
    assert first["TRIGGER"].dt == datetime(2026, 11, 28, 7, tzinfo=timezone.utc)
    assert str(first["X-WR-ALARMUID"]) == "a1" and str(first["ACTION"]) == "AUDIO" and "ATTACH" in first
    assert str(second["DESCRIPTION"]) == "later"
    data.find("ReminderSet", "Tasks").text = "0"
    data.children.remove(data.find("ReminderTime", "Tasks"))
    assert not vtodo(from_application_data(data, "14.1", text, now=NOW)).walk("VALARM")


# --- Change merges ---------------------------------------------------------------------------------------

RICH = "\r\n".join([
    "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN", "X-WR-CALNAME:Work",
    "BEGIN:VTIMEZONE", "TZID:Europe/Berlin", "BEGIN:STANDARD", "DTSTART:19701025T030000", "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100", "RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10", "END:STANDARD", "END:VTIMEZONE",
    "BEGIN:VTODO", "UID:keep-me@example.com", "DTSTAMP:20261101T000000Z", "CREATED:20261101T000000Z",
    "SUMMARY:Quarterly report", "DESCRIPTION:Numbers from finance", "X-ALT-DESC;FMTTYPE=text/html:<b>Numbers</b>",
    "DUE;TZID=Europe/Berlin:20261130T170000", "PRIORITY:1", "CATEGORIES:Work", "RELATED-TO;RELTYPE=PARENT:proj-7",
    "X-MOZ-GENERATION:4", "URL:https://example.com/q4", "GEO:52.5;13.4", "SEQUENCE:3",
    "ATTENDEE;CN=Bob:mailto:bob@example.com", "ORGANIZER:mailto:alice@example.com",
    "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:Report due", "TRIGGER;RELATED=END:-P1D", "X-CUSTOM:keep",
    "END:VALARM", "END:VTODO",
    "BEGIN:VTODO", "UID:keep-me@example.com", "RECURRENCE-ID:20261130T160000Z", "SUMMARY:override", "END:VTODO",
    "END:VCALENDAR", ""])


def test_a_change_replaces_what_eas_carries_and_keeps_everything_else() -> None:
    data = to_application_data(RICH, "14.1")
    assert data.text_of("ReminderTime", "Tasks") == "2026-11-29T16:00:00.000Z"
    data.find("Subject", "Tasks").text = "Q4 report"
    data.children.remove(data.find("Body", "AirSyncBase"))  # no Body: the description stays
    data.children.remove(data.find("Categories", "Tasks"))   # no Categories: they go
    text = from_application_data(data, "14.1", RICH, now=NOW)
    calendar = Calendar.from_ical(text)
    todo, override = calendar.walk("VTODO")
    assert str(todo["UID"]) == "keep-me@example.com" and str(override["SUMMARY"]) == "override"
    assert str(todo["SUMMARY"]) == "Q4 report" and "CATEGORIES" not in todo
    assert str(todo["DESCRIPTION"]) == "Numbers from finance" and "X-ALT-DESC" in todo
    for line in ("DUE;TZID=Europe/Berlin:20261130T170000", "RELATED-TO;RELTYPE=PARENT:proj-7", "X-MOZ-GENERATION:4",
                 "URL:https://example.com/q4", "GEO:52.5;13.4", "X-CUSTOM:keep", "TRIGGER;RELATED=END:-P1D",
                 "ATTENDEE;CN=Bob:mailto:bob@example.com", "X-WR-CALNAME:Work", "TZID:Europe/Berlin", "PRIORITY:1",
                 "CREATED:20261101T000000Z"):
        assert line in text, line
    assert todo["DTSTAMP"].dt == NOW and todo["LAST-MODIFIED"].dt == NOW
    # A new body replaces the description and Outlook's stale HTML copy of it.
    body = Element("AirSyncBase", "Body", [Element("AirSyncBase", "Type", text="1"),
                                           Element("AirSyncBase", "Data", text="Numbers from sales")])
    todo = vtodo(from_application_data(Element("AirSync", "ApplicationData", [body]), "14.1", RICH, now=NOW))
    assert str(todo["DESCRIPTION"]) == "Numbers from sales" and "X-ALT-DESC" not in todo


def test_an_add_gets_a_fresh_uid_and_a_change_keeps_it() -> None:
    first = vtodo(from_application_data(app("<tasks:Subject>a</tasks:Subject>"), "14.1"))
    second = vtodo(from_application_data(app("<tasks:Subject>a</tasks:Subject>"), "14.1"))
    assert str(first["UID"]) != str(second["UID"]) and len(str(first["UID"])) == 36
    assert "UID:task-1" in from_application_data(app(""), "14.1", stored("SUMMARY:s"))


# --- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "<tasks:DueDate>yesterday</tasks:DueDate>",
    "<tasks:DueDate>2026-02-30T00:00:00.000Z</tasks:DueDate>",
    "<tasks:DueDate>0001-01-01T00:00:00.000Z</tasks:DueDate>",
    "<tasks:Importance>3</tasks:Importance>",
    "<tasks:Complete>yes</tasks:Complete>",
    "<tasks:Recurrence><tasks:Type>4</tasks:Type></tasks:Recurrence>",
    "<tasks:Recurrence><tasks:Type>3</tasks:Type><tasks:Start>2026-01-01</tasks:Start></tasks:Recurrence>",
    "<tasks:Recurrence>text</tasks:Recurrence>",
    "<tasks:Subject><tasks:Category>x</tasks:Category></tasks:Subject>",
    "<tasks:StartDate>2026-11-28T10:00:00.000Z</tasks:StartDate>"
    "<tasks:DueDate>2026-11-27T10:00:00.000Z</tasks:DueDate>",
    "<tasks:DueDate>2026-11-28T10:00:00.000Z</tasks:DueDate>"
    "<tasks:UtcDueDate>2026-11-30T10:00:00.000Z</tasks:UtcDueDate>",
    "<airsyncbase:Body><airsyncbase:Type>3</airsyncbase:Type><airsyncbase:Data>x</airsyncbase:Data></airsyncbase:Body>",
])
def test_invalid_device_data_is_an_item_error(body: str) -> None:
    with pytest.raises(ItemError):
        from_application_data(app(body), "14.1")


def test_invalid_stored_text_and_versions_are_item_errors() -> None:
    for text in ("", "not ical", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                 "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"):
        with pytest.raises(ItemError):
            to_application_data(text, "14.1")
        with pytest.raises(ItemError):
            incomplete(text)
        with pytest.raises(ItemError):
            from_application_data(app(""), "14.1", text)
    with pytest.raises(ItemError):
        to_application_data(stored(), "15.0")
    with pytest.raises(ItemError):
        from_application_data(app(""), "3.0")


# --- fuzzing ---------------------------------------------------------------------------------------------

TASK_TAGS = ["Subject", "Importance", "Complete", "DateCompleted", "DueDate", "UtcDueDate", "StartDate",
             "UtcStartDate", "ReminderSet", "ReminderTime", "Sensitivity", "Body", "Category"]
RULE_TAGS = ["Type", "Start", "Until", "Occurrences", "Interval", "DayOfWeek", "DayOfMonth", "WeekOfMonth",
             "MonthOfYear", "Regenerate", "DeadOccur", "CalendarType", "IsLeapMonth", "FirstDayOfWeek"]
DATE_TAGS = {"DateCompleted", "DueDate", "UtcDueDate", "StartDate", "UtcStartDate", "ReminderTime", "Start", "Until"}
DATES = st.one_of(st.sampled_from(["2026-11-28T00:00:00.000Z", "2026-11-27T23:00:00.000Z", "20261128T100000Z",
                                   "2026-11-28", "2026-11-29T08:15:00.000Z", "2027-02-28T00:00:00.000Z"]),
                  st.datetimes(datetime(1601, 1, 1), datetime(9000, 12, 31)).map(
                      lambda d: f"{d.year:04d}-{d:%m-%dT%H:%M:%S}.000Z"))
RANGES = {"Importance": 2, "Complete": 1, "ReminderSet": 1, "Sensitivity": 3, "Type": 6, "Occurrences": 999,
          "Interval": 999, "DayOfWeek": 127, "DayOfMonth": 31, "WeekOfMonth": 5, "MonthOfYear": 12, "Regenerate": 1,
          "DeadOccur": 1, "CalendarType": 23, "IsLeapMonth": 1, "FirstDayOfWeek": 6}
RARELY = st.sampled_from([False] * 15 + [True])  # sampled_from, unlike integers, has no bias to the bounds


def plausible(name: str) -> st.SearchStrategy[str | None]:
    """Mostly values of the element's type; now and then anything at all, or an empty element."""
    good = (DATES if name in DATE_TAGS else st.text(max_size=20) if name in ("Subject", "Body", "Category")
            else st.integers(0, RANGES[name]).map(str))
    return RARELY.flatmap(lambda odd: st.none() | st.text(max_size=12) | st.integers(-1, 1000).map(str)
                          if odd else good)


def leaves(tags: list[str]) -> st.SearchStrategy[Element]:
    return st.sampled_from(tags).flatmap(lambda name: st.builds(
        lambda text, opaque: Element("Tasks", name, text=None if opaque else text, opaque=b"x" if opaque else None),
        plausible(name), RARELY))


APP_DATA = st.builds(
    lambda items, rule, cats, body: Element("AirSync", "ApplicationData", items + rule + cats + body),
    st.lists(leaves(TASK_TAGS), max_size=10),
    st.builds(lambda kind, start, kids: [Element("Tasks", "Recurrence", [kind, start, *kids])], leaves(["Type"]),
              leaves(["Start"]), st.lists(leaves(RULE_TAGS), max_size=8)) | st.just([]),
    st.lists(st.builds(lambda t: Element("Tasks", "Category", text=t), st.text(max_size=8)), max_size=3).map(
        lambda kids: [Element("Tasks", "Categories", kids)]),
    st.builds(lambda kind, data: [Element("AirSyncBase", "Body", [Element("AirSyncBase", "Type", text=kind),
                                                                  Element("AirSyncBase", "Data", text=data)])],
              st.sampled_from(["1", "2", "1", "2", "3", "x"]), st.text(max_size=20)) | st.just([]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(APP_DATA, st.sampled_from(["2.5", "12.1", "14.0", "16.1"]), st.booleans())
def test_random_application_data_only_ever_raises_item_error(data: Element, version: str, change: bool) -> None:
    try:
        text = from_application_data(data, version, RICH if change else None, now=NOW)
    except ItemError:
        return
    out = to_application_data(text, version)
    assert decode(encode(out)) == out
    assert isinstance(incomplete(text), bool)


LINES = st.sampled_from([
    "DTSTART:20261128T100000Z", "DTSTART;VALUE=DATE:20261128", "DTSTART;TZID=Nowhere/Zone:20261128T100000",
    "DUE:garbage", "DUE;VALUE=DATE:99991231", "DUE;VALUE=DATE;X-EAS-UTC-OFFSET=+9999:20261128", "DURATION:P1W",
    "RRULE:FREQ=YEARLY;BYMONTH=13L", "RRULE:FREQ=MONTHLY;BYDAY=5MO", "RRULE:FREQ=WEEKLY;BYDAY=XX", "RRULE:FREQ=DAILY",
    "RRULE:FREQ=MONTHLY;BYSETPOS=2", "RRULE:FREQ=DAILY;UNTIL=20261201T000000Z", "RRULE:FREQ=DAILY;INTERVAL=0",
    "PRIORITY:x", "PERCENT-COMPLETE:abc", "STATUS:COMPLETED", "COMPLETED:2026", "CLASS:", "CATEGORIES:",
    "CATEGORIES:a,,b", "SUMMARY:\\x00", "BEGIN:VALARM\r\nTRIGGER:-PT5M\r\nEND:VALARM",
    "BEGIN:VALARM\r\nTRIGGER;RELATED=END:P99999999D\r\nEND:VALARM", "BEGIN:VALARM\r\nTRIGGER:bogus\r\nEND:VALARM"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=6, unique=True))
def test_odd_stored_tasks_convert_or_raise_item_error(lines: list[str]) -> None:
    try:
        data = to_application_data(stored(*lines), "16.1")
    except ItemError:
        return
    assert decode(encode(data)) == data
    try:
        from_application_data(data, "16.1", stored(*lines), now=NOW)
    except ItemError:
        pass


# --- through a real CalDAV store -------------------------------------------------------------------------

@pytest.fixture
async def task_list(radicale, certs, users):
    login = "alice@example.test"
    async with AsyncExitStack() as stack:
        store = CalDavCalendarStore(radicale.url, Credentials(login, users[login]), certs.ca_cert, timeout=5)
        await store.start(stack)
        info = await store.create_calendar(f"EAS tasks {uuid.uuid4().hex[:8]}", ("VTODO",))
        yield store, info.url


async def test_radicale_stores_converted_tasks_and_gives_them_back(task_list) -> None:
    store, url = task_list
    lunar = app("""<tasks:Subject>Lunar</tasks:Subject><tasks:StartDate>2026-06-15T00:00:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-06-14T22:00:00.000Z</tasks:UtcStartDate>
      <tasks:Recurrence><tasks:Type>6</tasks:Type><tasks:Start>2026-06-15T00:00:00.000Z</tasks:Start>
      <tasks:Interval>1</tasks:Interval><tasks:DayOfWeek>62</tasks:DayOfWeek><tasks:WeekOfMonth>5</tasks:WeekOfMonth>
      <tasks:MonthOfYear>6</tasks:MonthOfYear><tasks:CalendarType>15</tasks:CalendarType>
      <tasks:IsLeapMonth>1</tasks:IsLeapMonth></tasks:Recurrence>""")
    daily = app(f"""<tasks:Subject>Daily</tasks:Subject><tasks:StartDate>2026-12-01T09:30:00.000Z</tasks:StartDate>
      <tasks:UtcStartDate>2026-12-01T08:30:00.000Z</tasks:UtcStartDate>
      <tasks:Recurrence><tasks:Type>0</tasks:Type><tasks:Start>2026-12-01T09:30:00.000Z</tasks:Start>
      <tasks:Until>2026-12-10T09:30:00.000Z</tasks:Until><tasks:Interval>1</tasks:Interval></tasks:Recurrence>
      {'<tasks:ReminderSet>1</tasks:ReminderSet><tasks:ReminderTime>2026-12-01T08:00:00.000Z</tasks:ReminderTime>'}""")
    done = app("<tasks:Subject>Done</tasks:Subject><tasks:Complete>1</tasks:Complete>"
               "<tasks:DateCompleted>2026-11-19T10:00:00.000Z</tasks:DateCompleted>")
    hrefs = {}
    for name, data in (("spec", from_xml(SPEC_ADD)), ("lunar", lunar), ("daily", daily), ("done", done)):
        text = from_application_data(data, "16.1", now=NOW)
        put = await store.put_event(url, text)
        [obj] = await store.fetch_objects(url, [put.href])
        assert task_fields(to_application_data(obj.ical, "16.1")) == task_fields(to_application_data(text, "16.1"))
        hrefs[name] = (put.href, obj)
    open_tasks = await store.object_etags(url, "VTODO", since=datetime(2026, 11, 1, tzinfo=timezone.utc),
                                          open_only=True)
    assert {hrefs["daily"][0], hrefs["lunar"][0]} <= set(open_tasks) and hrefs["done"][0] not in open_tasks
    # A Change from the device is written over the stored object with its ETag.
    href, obj = hrefs["spec"]
    data = to_application_data(obj.ical, "16.1")
    data.find("Complete", "Tasks").text = "1"
    await store.replace_object(href, from_application_data(data, "16.1", obj.ical, now=NOW), obj.etag)
    [changed] = await store.fetch_objects(url, [href])
    assert not incomplete(changed.ical) and href not in await store.object_etags(url, "VTODO", open_only=True)
