"""Mailboxes on an existing Exchange: gateway B answers them by asking gateway A (playing that Exchange) over EWS.

Gateway A serves bob's calendar from Radicale. Gateway B routes bob (and two
more) to an "ews" back end pointing at A, and alice to the same Radicale. An
exchangelib client asks both; B's answers for A's mailboxes must be A's own.
The expected events are written down here from what the test stores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import zoneinfo
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from adapters.dav import CalDavCalendarStore
from adapters.errors import AuthenticationFailed, BackendUnavailable, NotFound
from adapters.ews import EwsFreeBusy, RemoteBusy
from adapters.interfaces import Credentials
from gateway.demo.procs import free_port, stop_process
from gatewayproc import caldav_backend, config_toml, start_gateway, stop_gateway, write_config

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc
ALICE, BOB = "alice@example.test", "bob@example.test"
# Far from every other test's data; it spans the start of summer time (28 March 2032).
WINDOW = (dt.datetime(2032, 3, 22, tzinfo=BERLIN), dt.datetime(2032, 4, 1, tzinfo=BERLIN))
# Only the cache test writes here.
CACHE_WINDOW = (dt.datetime(2032, 5, 3, tzinfo=BERLIN), dt.datetime(2032, 5, 4, tzinfo=BERLIN))
CACHE_TTL = 2.0


def cal(*lines: str) -> str:
    return "\r\n".join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//casgate tests//EN", *lines,
                        "END:VCALENDAR"]) + "\r\n"


def vevent(uid: str, start: str, end: str, summary: str, *extra: str) -> list[str]:
    return ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20320101T000000Z", start, end, f"SUMMARY:{summary}", *extra,
            "END:VEVENT"]


BOB_EVENTS = [
    cal(*vevent("ewsb-weekly", "DTSTART;TZID=Europe/Berlin:20320322T090000",
                "DTEND;TZID=Europe/Berlin:20320322T100000", "Team sync", "RRULE:FREQ=WEEKLY;COUNT=2",
                "LOCATION:Room 7"),
        *vevent("ewsb-weekly", "DTSTART;TZID=Europe/Berlin:20320329T130000",
                "DTEND;TZID=Europe/Berlin:20320329T140000", "Team sync (moved)",
                "RECURRENCE-ID;TZID=Europe/Berlin:20320329T090000", "LOCATION:Room 7")),
    cal(*vevent("ewsb-tentative", "DTSTART:20320324T080000Z", "DTEND:20320324T083000Z", "Maybe lunch",
                "STATUS:TENTATIVE")),
    cal(*vevent("ewsb-private", "DTSTART:20320325T120000Z", "DTEND:20320325T130000Z", "Dentist", "CLASS:PRIVATE",
                "LOCATION:Clinic")),
    cal(*vevent("ewsb-free", "DTSTART:20320326T100000Z", "DTEND:20320326T110000Z", "Reading", "TRANSP:TRANSPARENT")),
    cal(*vevent("ewsb-review", "DTSTART:20320330T140000Z", "DTEND:20320330T150000Z", "Review",
                "ORGANIZER:mailto:carol@example.test", "ATTENDEE:mailto:bob@example.test",
                "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:Review", "TRIGGER:-PT15M", "END:VALARM")),
    cal(*vevent("ewsb-oof", "DTSTART;VALUE=DATE:20320331", "DTEND;VALUE=DATE:20320401", "Holiday",
                "X-MICROSOFT-CDO-BUSYSTATUS:OOF")),
]
ALICE_EVENTS = [cal(*vevent("ewsb-alice", "DTSTART:20320323T100000Z", "DTEND:20320323T110000Z", "Alice focus"))]


def utc(mo: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    return dt.datetime(2032, mo, d, h, mi, tzinfo=UTC)


# (start, end, busy type, subject, location, meeting, recurring, exception, reminder, private); all-day
# events are read in Europe/Berlin, gateway A's availability.time_zone.
BOB_EXPECTED = [
    (utc(3, 22, 8), utc(3, 22, 9), "Busy", "Team sync", "Room 7", False, True, False, False, False),
    (utc(3, 24, 8), utc(3, 24, 8, 30), "Tentative", "Maybe lunch", None, False, False, False, False, False),
    (utc(3, 25, 12), utc(3, 25, 13), "Busy", None, None, False, False, False, False, True),
    (utc(3, 26, 10), utc(3, 26, 11), "Free", "Reading", None, False, False, False, False, False),
    (utc(3, 29, 11), utc(3, 29, 12), "Busy", "Team sync (moved)", "Room 7", False, True, True, False, False),
    (utc(3, 30, 14), utc(3, 30, 15), "Busy", "Review", None, True, False, False, True, False),
    (utc(3, 30, 22), utc(3, 31, 22), "OOF", "Holiday", None, False, False, False, False, False),
]
ALICE_EXPECTED = [(utc(3, 23, 10), utc(3, 23, 11), "Busy", "Alice focus")]
_DIGIT = {"Free": 0, "Tentative": 1, "Busy": 2, "OOF": 3}


def expected_merged(expected, start: dt.datetime, end: dt.datetime, minutes: int = 30) -> str:
    out, t, step = [], start.astimezone(UTC), dt.timedelta(minutes=minutes)
    while t < end:
        out.append(str(max([_DIGIT[row[2]] for row in expected if row[0] < t + step and row[1] > t] or [0])))
        t += step
    return "".join(out)


def _seed(radicale, certs, users, owner: str, texts: list[str]) -> None:
    async def put() -> None:
        async with AsyncExitStack() as stack:
            store = CalDavCalendarStore(radicale.url, Credentials(owner, users[owner]), certs.ca_cert)
            await store.start(stack)
            calendar = await store.ensure_default_calendar()
            for text in texts:
                await store.put_event(calendar.url, text)
    asyncio.run(put())


def _start(root: Path, config: str, users_toml: str, https: int):
    write_config(root, config, users_toml)
    # Gateway B must trust gateway A through its own configuration, not through the environment.
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    return start_gateway(root, [https], env=env)


def _config(https: int, certs, dovecot, radicale, service_user, extra: str) -> str:
    return config_toml(certs, dovecot, https=https, extra=caldav_backend("dav", radicale.url, service_user) + extra)


@pytest.fixture(scope="module")
def gateway_a(workdir, certs, dovecot, radicale, users, service_user):
    """The "existing Exchange": bob's calendar in Radicale, bob shared with details, carol with nobody, and
    dave's calendar on a server that is down."""
    _seed(radicale, certs, users, BOB, BOB_EVENTS)
    https = free_port()
    config = _config(https, certs, dovecot, radicale, service_user, f"""
{caldav_backend("deadcal", f"https://127.0.0.1:{free_port()}/", ("x", "y"))}
[availability]
time_zone = "Europe/Berlin"
revalidate_after = 0.0  # gateway A checks its calendars' ctags on every request
[availability.user_access]
"bob@example.test" = "limited"
"carol@example.test" = "none"
[domains."example.test"]
imap = "dovecot"
caldav = "dav"
""")
    users_toml = "".join(f'[[user]]\naddress = "{a}"\n' for a in users) + \
        '[[user]]\naddress = "dave@example.test"\ncaldav = "deadcal"\n'
    root = Path(workdir) / f"ews-a-{https}"
    proc = _start(root, config, users_toml, https)
    yield f"https://127.0.0.1:{https}/EWS/Exchange.asmx", proc, root
    stop_gateway(proc)


@pytest.fixture(scope="module")
def gateway_b(workdir, certs, dovecot, radicale, users, service_user, gateway_a):
    """bob, carol, dave and erin live on gateway A (erin unknown there); alice's calendar is CalDAV."""
    _seed(radicale, certs, users, ALICE, ALICE_EVENTS)
    https = free_port()
    config = _config(https, certs, dovecot, radicale, service_user, f"""
[availability]
cache_ttl = {CACHE_TTL}
[availability.user_access]
"bob@example.test" = "limited"
"carol@example.test" = "limited"
"dave@example.test" = "limited"
"erin@example.test" = "limited"
[backends.exchange]
type = "ews"
url = "{gateway_a[0]}"
service_login = "{ALICE}"
service_password = "{users[ALICE]}"
[domains."example.test"]
imap = "dovecot"
""")
    users_toml = (f'[[user]]\naddress = "{ALICE}"\ncaldav = "dav"\n'
                  + "".join(f'[[user]]\naddress = "{a}"\news = "exchange"\n'
                            for a in (BOB, "carol@example.test", "dave@example.test", "erin@example.test")))
    proc = _start(Path(workdir) / f"ews-b-{https}", config, users_toml, https)
    yield f"https://127.0.0.1:{https}/EWS/Exchange.asmx", proc
    stop_gateway(proc)


@pytest.fixture(scope="module")
def client(certs, users):
    """exchangelib as alice, for either gateway (trusting our CA through the environment, for this module only)."""
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(certs.ca_cert)
    from exchangelib import DELEGATE, Account, Configuration, EWSTimeZone
    from exchangelib import Credentials as EwsCredentials
    from exchangelib.transport import BASIC

    def ask(url: str, addresses: list[str], window=WINDOW, view: str = "DetailedMerged") -> list:
        config = Configuration(service_endpoint=url, auth_type=BASIC,
                               credentials=EwsCredentials(ALICE, users[ALICE]))
        tz = EWSTimeZone("Europe/Berlin")
        account = Account(ALICE, config=config, autodiscover=False, access_type=DELEGATE, default_timezone=tz)
        from exchangelib import EWSDateTime
        start, end = (EWSDateTime.from_datetime(t).astimezone(tz) for t in window)
        answers = iter(account.protocol.get_free_busy_info(
            accounts=[(a, "Required", False) for a in addresses], start=start, end=end,
            merged_free_busy_interval=30, requested_view=view))
        results: list = []
        while True:
            try:
                results.append(next(answers))
            except StopIteration:
                return results
            except Exception as exc:  # exchangelib raises most mailbox errors, which ends its answer there
                results.append(exc)
                return results
    yield ask
    # Later modules check that nothing but their own configuration makes a certificate trusted.
    if saved is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = saved


def _plain(when) -> dt.datetime:
    """An exchangelib EWSDateTime as a plain aware UTC datetime."""
    return dt.datetime.fromisoformat(when.isoformat()).astimezone(UTC)


def _rows(view) -> list[tuple]:
    """A view's events as BOB_EXPECTED writes them."""
    rows = []
    for e in view.calendar_events or []:
        d = e.details
        rows.append((_plain(e.start), _plain(e.end), e.busy_type,
                     *((d.subject, d.location, d.is_meeting, d.is_recurring, d.is_exception, d.is_reminder_set,
                        d.is_private) if d else (None,) * 7)))
    return rows


def _failed_with(view, code: str) -> bool:
    return isinstance(view, Exception) and code in type(view).__name__ + str(view)


def test_remote_mailbox_is_answered_as_the_remote_answers_it(gateway_a, gateway_b, client):
    (direct,) = client(gateway_a[0], [BOB])
    bob, alice, nobody = client(gateway_b[0], [BOB, ALICE, "nobody@example.test"])
    # What gateway A says is what the test stored, and gateway B passes it on unchanged.
    assert _rows(direct) == BOB_EXPECTED
    assert direct.merged == expected_merged(BOB_EXPECTED, *WINDOW)
    assert _rows(bob) == _rows(direct)
    assert bob.merged == direct.merged
    assert bob.view_type == direct.view_type == "DetailedMerged"
    # alice comes from CalDAV through gateway B itself (her own calendar: every detail).
    assert [r[:4] for r in _rows(alice)] == ALICE_EXPECTED
    assert alice.merged == expected_merged(ALICE_EXPECTED, *WINDOW)
    assert _failed_with(nobody, "ErrorMailRecipientNotFound")


def test_private_details_never_cross_the_hop(gateway_b, client):
    (bob,) = client(gateway_b[0], [BOB], view="Detailed")
    private = [e for e in bob.calendar_events if _plain(e.start) == utc(3, 25, 12)]
    assert len(private) == 1 and private[0].details.is_private
    assert private[0].details.subject is None and private[0].details.location is None


def test_free_busy_view_hides_what_the_remote_showed(gateway_b, client):
    (bob,) = client(gateway_b[0], [BOB], view="FreeBusyMerged")
    assert bob.merged == expected_merged(BOB_EXPECTED, *WINDOW)
    assert [r[:3] for r in _rows(bob)] == [r[:3] for r in BOB_EXPECTED]
    assert all(e.details is None for e in bob.calendar_events)


def test_unknown_at_the_remote_and_shared_with_nobody(gateway_b, client):
    erin, carol = client(gateway_b[0], ["erin@example.test", "carol@example.test"])
    # erin is in gateway B's directory, but gateway A knows no such mailbox.
    assert _failed_with(erin, "ErrorMailRecipientNotFound")
    # Gateway A shares nothing of carol: gateway B says so the same way, a view of type None.
    assert not isinstance(carol, Exception)
    assert carol.view_type == "None" and not carol.calendar_events and not carol.merged


def _availability_requests(root: Path) -> int:
    """How many GetUserAvailability requests a gateway has logged."""
    return (root / "gateway.log").read_text().count('"operation": "GetUserAvailabilityRequest"')


def test_one_remote_mailbox_failing_leaves_the_others_answered(gateway_a, gateway_b, client):
    # One request to gateway A carries both, and A answers dave with ErrorMailboxStoreUnavailable: bob's
    # answer, in the same reply, must still come through (dave goes last, as exchangelib, the client here,
    # stops reading at such an error).
    window = (WINDOW[0] + dt.timedelta(days=1), WINDOW[1])  # nobody asked for this one: nothing cached
    before = _availability_requests(gateway_a[2])
    bob, dave = client(gateway_b[0], [BOB, "dave@example.test"], window=window)
    assert bob.merged == expected_merged(BOB_EXPECTED, *window)
    assert _failed_with(dave, "ErrorMailboxStoreUnavailable")
    # Both went to gateway A in one request, not one each.
    deadline = time.monotonic() + 5
    while _availability_requests(gateway_a[2]) == before and time.monotonic() < deadline:
        time.sleep(0.05)  # A may write its log line just after it answered
    assert _availability_requests(gateway_a[2]) == before + 1


def test_remote_answers_are_cached_for_cache_ttl(gateway_a, gateway_b, client, radicale, certs, users):
    (before,) = client(gateway_b[0], [BOB], window=CACHE_WINDOW)
    assert not before.calendar_events
    _seed(radicale, certs, users, BOB, [cal(*vevent("ewsb-cache", "DTSTART:20320503T100000Z",
                                                    "DTEND:20320503T110000Z", "Added later"))])
    stored = time.monotonic()
    (direct,) = client(gateway_a[0], [BOB], window=CACHE_WINDOW)
    (cached,) = client(gateway_b[0], [BOB], window=CACHE_WINDOW)
    assert [r[3] for r in _rows(direct)] == ["Added later"]  # gateway A checks its ctags
    if time.monotonic() - stored < CACHE_TTL:  # a very slow machine may already be past the TTL
        assert not cached.calendar_events
    time.sleep(max(0.0, CACHE_TTL - (time.monotonic() - stored)) + 0.2)
    (after,) = client(gateway_b[0], [BOB], window=CACHE_WINDOW)
    assert _rows(after) == _rows(direct)


def test_adapter_maps_answers_and_errors(gateway_a, certs, users, monkeypatch):
    url = gateway_a[0]
    login = Credentials(ALICE, users[ALICE])
    start, end = (t.astimezone(UTC) for t in WINDOW)

    async def ask(adapter: EwsFreeBusy, addresses: list[str]):
        return await adapter.busy_events(addresses, start, end)

    bob, nobody = asyncio.run(ask(EwsFreeBusy(url, login, str(certs.ca_cert), 10), [BOB, "nobody@example.test"]))
    assert all(isinstance(r, RemoteBusy) for r in bob)
    assert [(r.start, r.end, r.busy, r.subject, r.private) for r in bob] == \
        [(s, e, ["Free", "Tentative", "Busy", "OOF"].index(b), subj, priv)
         for s, e, b, subj, _, _, _, _, _, priv in BOB_EXPECTED]
    assert isinstance(nobody, NotFound)
    # Trust comes from the adapter's own CA bundle, never from the process environment.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs.ca_cert))
    with pytest.raises(BackendUnavailable):
        asyncio.run(ask(EwsFreeBusy(url, login, None, 10), [BOB]))
    with pytest.raises(AuthenticationFailed):
        asyncio.run(ask(EwsFreeBusy(url, Credentials(BOB, "not-his-password"), str(certs.ca_cert), 10), [BOB]))
    closed = f"https://127.0.0.1:{free_port()}/EWS/Exchange.asmx"
    with pytest.raises(BackendUnavailable):
        asyncio.run(ask(EwsFreeBusy(closed, login, str(certs.ca_cert), 5), [BOB]))


def test_remote_down_fails_only_its_mailboxes(gateway_a, gateway_b, client):
    # Runs last: it stops gateway A. A window nobody asked for yet, so no cached answer hides the outage.
    stop_process(gateway_a[1])
    window = (WINDOW[0], WINDOW[1] - dt.timedelta(days=1))
    t0 = time.monotonic()
    alice, bob = client(gateway_b[0], [ALICE, BOB], window=window)
    assert _failed_with(bob, "ErrorMailboxStoreUnavailable")
    assert alice.merged == expected_merged(ALICE_EXPECTED, *window)
    assert time.monotonic() - t0 < 10  # refused at once, not waited out
    assert gateway_b[1].poll() is None
