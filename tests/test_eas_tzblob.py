"""EAS Timezone blobs (MS-ASDTYPE 2.7.6): the byte layout, zone -> blob -> zone across DST and hemispheres,
blobs no IANA zone matches, the VTIMEZONEs written for them, and fuzzing."""

from __future__ import annotations

import base64
import datetime as dt
import struct
from zoneinfo import ZoneInfo

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.activesync.tzblob import (
    BLOB_SIZE, Change, ItemError, Rule, RuleZone, blob_for, decode_b64, pack_rule, parse_blob, rule_for,
    tzid_for, vtimezone_for, zone_for)

UTC = dt.timezone.utc

# Pacific Time in the layout of the MS-ASCAL / MS-ASCMD Sync examples: Bias 480, "Pacific Standard Time",
# StandardDate = first Sunday of November 02:00, DaylightDate = second Sunday of March 02:00, DaylightBias -60.
PACIFIC_B64 = ("4AEAAFAAYQBjAGkAZgBpAGMAIABTAHQAYQBuAGQAYQByAGQAIABUAGkAbQBlAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAsAAAAB"
               "AAIAAAAAAAAAAAAAAFAAYQBjAGkAZgBpAGMAIABEAGEAeQBsAGkAZwBoAHQAIABUAGkAbQBlAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
               "AAAAAAMAAAACAAIAAAAAAAAAxP///w==")
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC", "Europe/London",
         "America/Sao_Paulo", "Pacific/Auckland", "America/St_Johns", "Asia/Kathmandu")


def offsets_over(zone: dt.tzinfo, year: int, step_hours: int = 6) -> list[dt.timedelta]:
    start = dt.datetime(year, 1, 1, tzinfo=UTC)
    return [(start + dt.timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(0, 366 * 24, step_hours)]


def nameless(blob: bytes) -> bytes:
    """The same rule without the names, as many devices send it ("" or a Windows name, never an IANA key)."""
    rule = parse_blob(blob)
    return pack_rule(Rule(rule.bias, rule.standard, rule.daylight, rule.standard_bias, rule.daylight_bias))


# --- layout -----------------------------------------------------------------------------------------------

def test_pacific_example_blob_fields():
    raw = decode_b64(PACIFIC_B64)
    assert len(raw) == BLOB_SIZE == 172
    rule = parse_blob(raw)
    assert rule.bias == 480 and rule.standard_bias == 0 and rule.daylight_bias == -60
    assert rule.standard_name == "Pacific Standard Time" and rule.daylight_name == "Pacific Daylight Time"
    assert rule.standard == Change(month=11, weekday=0, week=1, hour=2)
    assert rule.daylight == Change(month=3, weekday=0, week=2, hour=2)
    assert base64.b64encode(pack_rule(rule)).decode() == PACIFIC_B64


def test_pacific_example_blob_is_los_angeles():
    zone = zone_for(decode_b64(PACIFIC_B64), 2026)
    assert tzid_for(zone) == "America/Los_Angeles"
    assert dt.datetime(2026, 1, 10, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=-8)
    assert dt.datetime(2026, 7, 10, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=-7)


@pytest.mark.parametrize("name, bias, standard, daylight", [
    ("Europe/Berlin", -60, Change(10, 0, 5, 3), Change(3, 0, 5, 2)),
    ("America/New_York", 300, Change(11, 0, 1, 2), Change(3, 0, 2, 2)),
    ("Australia/Sydney", -600, Change(4, 0, 1, 3), Change(10, 0, 1, 2)),
    ("Asia/Kolkata", -330, None, None),
    ("UTC", 0, None, None),
])
def test_blob_for_known_rules(name, bias, standard, daylight):
    blob = blob_for(ZoneInfo(name), 2026)
    assert len(blob) == 172
    fields = struct.unpack("<i64s8Hi64s8Hi", blob)
    assert fields[0] == bias
    rule = parse_blob(blob)
    assert (rule.standard, rule.daylight) == (standard, daylight)
    assert rule.daylight_bias == (-60 if daylight else 0)
    if standard is None:
        assert fields[3] == 0 and fields[13] == 0  # wMonth 0: no clock changes


def test_utc_and_none_give_the_zero_blob_but_names():
    assert parse_blob(blob_for(None, 2026)) == Rule(0)
    rule = parse_blob(blob_for(UTC, 2026))
    assert (rule.bias, rule.has_dst) == (0, False)


# --- zone -> blob -> zone ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZONES)
@pytest.mark.parametrize("year", range(2024, 2031))
def test_round_trip_zone_blob_zone(name, year):
    zone = ZoneInfo(name)
    blob = blob_for(zone, year)
    back = zone_for(blob, year)
    assert offsets_over(back, year) == offsets_over(zone, year)
    if name != "UTC":
        assert tzid_for(back) == name  # the blob's name found it at once
    without_names = zone_for(nameless(blob), year)
    assert offsets_over(without_names, year) == offsets_over(zone, year)


def test_nameless_berlin_rule_prefers_the_previous_zone_then_the_table():
    blob = nameless(blob_for(ZoneInfo("Europe/Paris"), 2026))
    assert tzid_for(zone_for(blob, 2026)) == "Europe/Berlin"
    assert tzid_for(zone_for(blob, 2026, prefer="Europe/Paris")) == "Europe/Paris"
    assert tzid_for(zone_for(blob, 2026, prefer=ZoneInfo("Europe/Rome"))) == "Europe/Rome"
    # a preferred zone that does not fit the blob is passed over
    assert tzid_for(zone_for(blob, 2026, prefer="America/New_York")) == "Europe/Berlin"


def test_southern_hemisphere_rule_matches_sydney():
    rule = Rule(-600, Change(4, 0, 1, 3), Change(10, 0, 1, 2), 0, -60)
    zone = zone_for(pack_rule(rule), 2027)
    assert tzid_for(zone) == "Australia/Sydney"
    assert dt.datetime(2027, 1, 15, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=11)
    assert dt.datetime(2027, 7, 15, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=10)


@pytest.mark.parametrize("bias, key", [(-345, "Asia/Kathmandu"), (-330, "Asia/Kolkata"), (-660, "Etc/GMT-11"),
                                       (720, "Etc/GMT+12")])
def test_fixed_offsets(bias, key):
    zone = zone_for(pack_rule(Rule(bias)), 2026)
    assert tzid_for(zone) == key
    assert dt.datetime(2026, 5, 1, tzinfo=zone).utcoffset() == dt.timedelta(minutes=-bias)


# --- blobs no zone matches ---------------------------------------------------------------------------------

CUSTOM = Rule(-60, Change(10, 0, 5, 3), Change(3, 0, 4, 2), 0, -60)   # daylight from the 4th Sunday of March


def test_custom_rule_zone_follows_the_blob():
    zone = zone_for(pack_rule(CUSTOM), 2026)
    assert isinstance(zone, RuleZone)
    assert tzid_for(zone) == "Custom/Bias-60/Daylight-60/3.4.0.020000/10.5.0.030000"
    # 2026: the 4th Sunday of March is the 22nd, a week before Europe's change
    assert dt.datetime(2026, 3, 22, 1, 30, tzinfo=zone).utcoffset() == dt.timedelta(hours=1)
    assert dt.datetime(2026, 3, 22, 3, 30, tzinfo=zone).utcoffset() == dt.timedelta(hours=2)
    assert dt.datetime(2026, 10, 25, 3, 30, tzinfo=zone).utcoffset() == dt.timedelta(hours=1)
    assert parse_blob(blob_for(zone, 2031)).same_clock(CUSTOM)


def test_custom_bias_without_daylight():
    zone = zone_for(pack_rule(Rule(-37)), 2026)
    assert tzid_for(zone) == "Custom/Bias-37"
    assert dt.datetime(2026, 1, 1, tzinfo=zone).utcoffset() == dt.timedelta(minutes=37)


def test_rule_zone_agrees_with_zoneinfo_at_every_quarter_hour_near_the_changes():
    berlin = ZoneInfo("Europe/Berlin")
    zone = RuleZone(rule_for(berlin, 2026))
    for day in (dt.datetime(2026, 3, 29), dt.datetime(2026, 10, 25)):
        for quarter in range(0, 6 * 4):
            wall = day + dt.timedelta(minutes=15 * quarter)
            for fold in (0, 1):
                ours = wall.replace(tzinfo=zone, fold=fold)
                theirs = wall.replace(tzinfo=berlin, fold=fold)
                assert ours.utcoffset() == theirs.utcoffset(), (wall, fold)
        for minutes in range(0, 6 * 60, 15):
            instant = day.replace(tzinfo=UTC) + dt.timedelta(minutes=minutes)
            ours, theirs = instant.astimezone(zone), instant.astimezone(berlin)
            assert (ours.replace(tzinfo=None), ours.fold) == (theirs.replace(tzinfo=None), theirs.fold)


# --- VTIMEZONE --------------------------------------------------------------------------------------------

def parsed_offsets(vtimezone: icalendar.Timezone, tzid: str, moments: list[dt.datetime]) -> list[dt.timedelta]:
    """Offsets of wall times read through the VTIMEZONE alone (renamed so no library uses its own zone; icalendar
    caches zones by TZID, so each gets its own name)."""
    alias = "X-Only-" + tzid.replace("/", "-")
    text = vtimezone.to_ical().decode().replace(f"TZID:{tzid}", f"TZID:{alias}")
    events = "".join(f"BEGIN:VEVENT\r\nUID:{i}\r\nDTSTAMP:20260101T000000Z\r\n"
                     f"DTSTART;TZID={alias}:{m:%Y%m%dT%H%M%S}\r\nEND:VEVENT\r\n" for i, m in enumerate(moments))
    cal = icalendar.Calendar.from_ical(f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\n{text}{events}END:VCALENDAR\r\n")
    return [e["DTSTART"].dt.utcoffset() for e in cal.walk("VEVENT")]


@pytest.mark.parametrize("zone", [ZoneInfo("Europe/Berlin"), ZoneInfo("Australia/Sydney"),
                                  ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata"), RuleZone(CUSTOM)])
def test_vtimezone_reads_back_to_the_same_offsets(zone):
    vtimezone = vtimezone_for(zone, 2026)
    tzid = tzid_for(zone)
    assert str(vtimezone["TZID"]) == tzid
    if not isinstance(zone, RuleZone) and tzid != "Asia/Kolkata":
        assert "RRULE" in vtimezone.to_ical().decode()  # stable rules get the compact form
    moments = [dt.datetime(year, month, day, 12) for year in (2026, 2028, 2030) for month in range(1, 13)
               for day in (1, 15)]
    assert parsed_offsets(vtimezone, tzid, moments) == [m.replace(tzinfo=zone).utcoffset() for m in moments]


def test_vtimezone_for_a_zone_changing_rules_lists_its_changes():
    zone = ZoneInfo("Africa/Casablanca")  # the clock moves around Ramadan, a different date every year
    vtimezone = vtimezone_for(zone, 2026)
    moments = [dt.datetime(2027, month, 10, 12) for month in range(1, 13)]
    assert parsed_offsets(vtimezone, "Africa/Casablanca", moments) == [m.replace(tzinfo=zone).utcoffset()
                                                                       for m in moments]


def test_vtimezone_for_utc_is_none():
    assert vtimezone_for(UTC, 2026) is None


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(bytes(171)).decode(),
                                  base64.b64encode(bytes(173)).decode()])
def test_decode_b64_refuses(text):
    with pytest.raises(ItemError):
        decode_b64(text)


@pytest.mark.parametrize("patch", [
    (0, struct.pack("<i", 24 * 60)),          # a bias of a whole day
    (70, struct.pack("<H", 13)),              # StandardDate month 13
    (74, struct.pack("<H", 6)),               # StandardDate day 6 of a relative date
    (76, struct.pack("<H", 24)),              # StandardDate hour 24
])
def test_parse_blob_refuses_out_of_range(patch):
    base = bytearray(blob_for(ZoneInfo("Europe/Berlin"), 2026))
    offset, raw = patch
    base[offset:offset + len(raw)] = raw
    with pytest.raises(ItemError):
        zone_for(bytes(base), 2026)


def test_half_a_rule_means_no_clock_changes():
    blob = bytearray(blob_for(ZoneInfo("Europe/Berlin"), 2026))
    blob[154:156] = b"\x00\x00"   # DaylightDate month 0 (after wYear)
    zone = zone_for(bytes(blob), 2026)
    assert offsets_over(zone, 2026) == [dt.timedelta(hours=1)] * len(offsets_over(zone, 2026))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=172, max_size=172), st.integers(min_value=1601, max_value=4500))
def test_any_blob_gives_a_zone_or_item_error(blob, year):
    try:
        zone = zone_for(blob, year)
    except ItemError:
        return
    assert isinstance(zone, dt.tzinfo)
    for month in (1, 4, 7, 10):
        offset = dt.datetime(year, month, 1, 12, tzinfo=zone).utcoffset()
        assert abs(offset) < dt.timedelta(hours=18)
        instant = dt.datetime(year, month, 1, 12, tzinfo=UTC)
        assert instant.astimezone(zone) == instant


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_item_error(blob):
    try:
        rule = parse_blob(blob)
    except ItemError:
        return
    assert len(blob) == 172 and isinstance(rule, Rule)


def test_absolute_date_changes_are_read_as_that_day_every_year():
    blob = bytearray(pack_rule(Rule(-210, Change(9, 0, 22, 0, year=2022), Change(3, 0, 22, 0, year=2022), 0, -60)))
    zone = zone_for(bytes(blob), 2022)   # Iran's last summer time: 22 March to 22 September
    assert dt.datetime(2022, 6, 1, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=4, minutes=30)
    assert dt.datetime(2022, 12, 1, 12, tzinfo=zone).utcoffset() == dt.timedelta(hours=3, minutes=30)
