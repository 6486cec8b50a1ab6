"""Seed content for the demo organisation (mail, calendars, contacts), deterministic from a seed and a "now"."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

__all__ = [
    "SampleContact", "SampleEvent", "SampleMessage",
    "contacts_for", "demo_people", "events_for", "messages_for",
]

PRODID = "-//casgate//demo sample data//EN"
THREAD_SUBJECT = "Offsite agenda"
NON_ASCII_SUBJECT = "Réunion café ☕ – Überblick der Beschlüsse"
CSV_NAME = "figures-q3.csv"
PDF_NAME = "quarterly-report.pdf"
NON_ASCII_CSV_NAME = "Reisekosten Übersicht März.csv"


@dataclass(frozen=True)
class SampleMessage:
    folder: str
    raw: bytes
    flags: tuple[str, ...]
    date: datetime


@dataclass(frozen=True)
class SampleEvent:
    uid: str
    ical: str


@dataclass(frozen=True)
class SampleContact:
    uid: str
    vcard: str


def demo_people(domain: str = "example.test") -> list[tuple[str, str]]:
    """The three demo users as (display name, address)."""
    return [(f"{name.title()} Example", f"{name}@{domain}") for name in ("alice", "bob", "carol")]


def _rng(kind: str, key: str, seed: int) -> random.Random:
    # Seeding from a string is stable across processes, unlike hash().
    return random.Random(f"{kind}:{seed}:{key.lower()}")


def _me(address: str, people: list[tuple[str, str]]) -> tuple[str, str]:
    for name, addr in people:
        if addr.lower() == address.lower():
            return name, addr
    return address.split("@")[0].title(), address


def _others(address: str, people: list[tuple[str, str]]) -> list[tuple[str, str]]:
    others = [p for p in people if p[1].lower() != address.lower()]
    return others or [("Dana Outside", "dana@partner.example.org")]


def _utc_now(now: datetime) -> datetime:
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


# -- mail ---------------------------------------------------------------------------------------

def _pdf_blob(label: str) -> bytes:
    """A small PDF-shaped binary, stable for a given label (tests recompute it)."""
    noise = hashlib.sha256(label.encode()).digest()
    return (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n"
            b"2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"
            b"3 0 obj <</Length 32>> stream\n" + noise + b"\nendstream endobj\n"
            b"trailer <</Root 1 0 R>>\n%%EOF\n")


def _csv_blob(label: str) -> bytes:
    """A small CSV, stable for a given label (tests recompute it)."""
    r = random.Random(label)
    rows = ["date,description,amount_eur"]
    for day in range(1, 6):
        rows.append(f"2024-09-{day:02d},{r.choice(['Taxi', 'Hotel', 'Train', 'Lunch'])},{r.randint(8, 240)}.00")
    return ("\r\n".join(rows) + "\r\n").encode()


_FILLERS = [
    ("Printer on floor 2", "The printer by the kitchen is jammed again; facilities have been told."),
    ("Parking permits", "New parking permits are at reception. Please collect yours by Friday."),
    ("Re-org of the shared drive", "Old project folders are now in Archive/2023. Shout if anything is missing."),
    ("Coffee machine", "The new coffee machine takes cards only. Beans are in the cupboard above it."),
    ("Mobile devices policy", "From next month phones that sync mail must have a PIN set. IT will send details."),
    ("Fire drill on Thursday", "There is a fire drill at 11:00 on Thursday. Meet at the car park."),
    ("Lunch order", "Ordering from the Thai place at noon, reply with your choice by 11:30."),
    ("Expense deadline", "Expenses for this month need to be in by the 25th."),
    ("Welcome our new starter", "Please say hello to Priya, who joins the support team on Monday."),
    ("Server maintenance window", "Mail may be slow on Saturday 06:00-08:00 UTC while we patch the servers."),
]


def _addresses(people: list[tuple[str, str]]) -> list[Address]:
    return [Address(display_name=name, addr_spec=addr) for name, addr in people]


def _build(sender, to, subject, when, msgid, text, *, html=None, attachments=(), parents=()):
    m = EmailMessage(policy=SMTP)
    m["Date"] = format_datetime(when)
    m["From"] = _addresses([sender])
    m["To"] = _addresses(to)
    m["Subject"] = subject
    m["Message-ID"] = msgid
    if parents:
        m["In-Reply-To"] = parents[-1]
        m["References"] = " ".join(parents)
    m.set_content(text)
    if html is not None:
        m.add_alternative(html, subtype="html")
    for filename, maintype, subtype, data in attachments:
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m


def _render(m: EmailMessage, msgid: str) -> bytes:
    # The stdlib picks random boundaries; derive them from the Message-ID so output is repeatable.
    token = hashlib.sha256(msgid.encode()).hexdigest()[:24]
    for n, part in enumerate(m.walk()):
        if part is not m:
            del part["MIME-Version"]
        if part.is_multipart():
            part.set_boundary(f"=_casgate_{token}_{n}")
    return m.as_bytes()


def _thread(address, people, t0, seed, domain) -> list[SampleMessage]:
    """Three messages shared by all users: every mailbox sees the same Message-IDs."""
    cast = list(people[:3]) if len(people) >= 2 else [_me(address, people), *_others(address, people)]
    r = _rng("thread", ",".join(sorted(a for _, a in cast)), seed)
    ids = [f"<thread.{r.getrandbits(48):012x}.{i}@{domain}>" for i in range(3)]
    bodies = [
        "Here is a first cut of the offsite agenda: morning strategy, afternoon workshops. Thoughts?",
        "Looks good. Could we swap the workshops and lunch so the remote people can join?",
        "Fine by me. I will book the room from 09:00 and send a calendar invitation.",
    ]
    out = []
    for i, body in enumerate(bodies):
        sender = cast[i % len(cast)]
        to = [p for p in cast if p != sender]
        when = t0 - timedelta(days=3 - i, hours=2 * i)
        subject = THREAD_SUBJECT if i == 0 else f"Re: {THREAD_SUBJECT}"
        quoted = "\n".join("> " + b for b in bodies[:i][-1:])
        m = _build(sender, to, subject, when, ids[i], body + ("\n\n" + quoted if quoted else ""), parents=ids[:i])
        mine = sender[1].lower() == address.lower()
        flags = ("\\Seen",) if mine else ()
        out.append(SampleMessage("Sent" if mine else "INBOX", _render(m, ids[i]), flags, when))
    return out


def messages_for(address: str, people: list[tuple[str, str]], now: datetime, seed: int = 0) -> list[SampleMessage]:
    """The seed mailbox for one user, oldest first."""
    local, domain = address.split("@", 1)
    r = _rng("mail", address, seed)
    t0 = _utc_now(now).replace(second=0, microsecond=0)
    me, others = _me(address, people), _others(address, people)
    helpdesk = ("IT Helpdesk", f"helpdesk@{domain}")
    newsletter = ("Northwind Digest", "digest@northwind.example.net")
    zoe = ("Zoë Ångström", "zoe.angstrom@partner.example.org")
    out: list[SampleMessage] = []

    def add(folder, flags, sender, to, subject, hours_ago, text, **kw):
        msgid = f"<{r.getrandbits(64):016x}.{local}@{domain}>"
        when = t0 - timedelta(hours=hours_ago, minutes=r.randrange(60))
        m = _build(sender, to, subject, when, msgid, text, **kw)
        out.append(SampleMessage(folder, _render(m, msgid), flags, when))

    add("INBOX", ("\\Seen",), helpdesk, [me], "Welcome to your new mailbox", 24 * 9,
        f"Hello {me[0]},\n\nYour mailbox is ready. Outlook, phones and webmail all work with it.\n\n-- IT")
    html = (
        '<html><body style="font-family: Arial, sans-serif; color: #333;">'
        '<h1 style="color: #0b5394; font-size: 20px;">Northwind Digest</h1>'
        '<p style="margin: 0 0 12px 0;">Three short stories on running mail for small teams.</p>'
        '<img src="https://images.northwind.example.net/digest/banner.png" width="480" height="80" alt="banner">'
        '<p>Read them <a href="https://northwind.example.net/digest/42" style="color: #c00;">online</a>.</p>'
        "</body></html>\n")
    add("INBOX", ("\\Seen",), newsletter, [me], "Northwind Digest: issue 42", 24 * 7,
        "Northwind Digest\n\nThree short stories on running mail for small teams.\n"
        "Read them on our site: https://northwind.example.net/digest/42\n", html=html)
    add("INBOX", ("\\Flagged",), others[0], [me], "Quarterly report and figures", 24 * 5,
        "Attached are the report and the raw figures. Please check the totals before Friday.",
        attachments=[(PDF_NAME, "application", "pdf", _pdf_blob(PDF_NAME)),
                     (CSV_NAME, "text", "csv", _csv_blob(CSV_NAME))])
    add("INBOX", (), others[-1], [me], "Travel expenses", 24 * 4,
        "My travel costs from the Berlin trip are in the attached sheet.",
        attachments=[(NON_ASCII_CSV_NAME, "text", "csv", _csv_blob(NON_ASCII_CSV_NAME))])
    add("INBOX", (), zoe, [me], NON_ASCII_SUBJECT, 30,
        "Bonjour !\n\nVoici le résumé : café à 10 h, décisions ☑, nächste Schritte für München.\n\nZoë")
    for i, (subject, text) in enumerate(r.sample(_FILLERS, r.randint(3, 8))):
        sender = r.choice([*others, helpdesk])
        add("INBOX", ("\\Seen",) if i == 0 else (), sender, [me], subject, r.randint(2, 24 * 8), text)
    add("Sent", ("\\Seen",), me, [others[0]], "Notes from Tuesday", 20,
        "Hi,\n\nMy notes from Tuesday: budget agreed, hiring paused until Q1, next review in two weeks.")
    add("Drafts", ("\\Draft", "\\Seen"), me, [others[-1]], "Holiday cover", 1,
        "Could you cover my inbox while I am away? I will leave a note on the open tickets.")
    out += _thread(address, people, t0, seed, domain)
    return sorted(out, key=lambda m: m.date)


# -- calendars ----------------------------------------------------------------------------------

_BERLIN = [
    "BEGIN:VTIMEZONE", "TZID:Europe/Berlin",
    "BEGIN:DAYLIGHT", "TZOFFSETFROM:+0100", "TZOFFSETTO:+0200", "TZNAME:CEST",
    "DTSTART:19700329T020000", "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU", "END:DAYLIGHT",
    "BEGIN:STANDARD", "TZOFFSETFROM:+0200", "TZOFFSETTO:+0100", "TZNAME:CET",
    "DTSTART:19701025T030000", "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU", "END:STANDARD",
    "END:VTIMEZONE",
]


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _fold(line: str) -> str:
    """Fold at 75 octets (RFC 5545 3.1 / RFC 2425 5.8.1) without splitting a UTF-8 character."""
    parts, cur, size = [], "", 0
    for ch in line:
        n = len(ch.encode())
        if size + n > 75:
            parts.append(cur)
            cur, size = " ", 1
        cur, size = cur + ch, size + n
    parts.append(cur)
    return "\r\n".join(parts)


def _join(lines: list[str]) -> str:
    return "".join(_fold(line) + "\r\n" for line in lines)


def _ut(dt: datetime) -> str:
    return dt.strftime("%Y%m%dT%H%M%SZ")


def _calendar(*vevents: list[str], tz: list[str] = ()) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN", *tz]
    for ev in vevents:
        lines += ["BEGIN:VEVENT", *ev, "END:VEVENT"]
    return _join(lines + ["END:VCALENDAR"])


def _cn(name: str) -> str:
    return '"' + name.replace('"', "'") + '"'


def events_for(address: str, people, now: datetime, seed: int = 0) -> list[SampleEvent]:
    """One VCALENDAR per event for one user's default calendar, all within a few weeks of `now`."""
    domain = address.split("@", 1)[1]
    r = _rng("cal", address, seed)
    t0 = _utc_now(now)
    stamp = _ut(t0.replace(microsecond=0))
    midnight = t0.replace(hour=0, minute=0, second=0, microsecond=0)
    me, others = _me(address, people), _others(address, people)
    token = f"{r.getrandbits(40):010x}"
    out: list[SampleEvent] = []

    def at(day: int, hour: int) -> datetime:
        return midnight + timedelta(days=day, hours=hour)

    def add(n: int, summary: str, start: datetime, minutes: int, location: str | None, *extra: str) -> None:
        uid = f"{token}-{n}@{domain}"
        ev = [f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART:{_ut(start)}",
              f"DTEND:{_ut(start + timedelta(minutes=minutes))}", f"SUMMARY:{_esc(summary)}"]
        ev += [f"LOCATION:{_esc(location)}"] if location else []
        out.append(SampleEvent(uid, _calendar(ev + list(extra))))

    add(1, f"1:1 with {others[0][0]}", at(r.randint(1, 3), r.choice([9, 10, 11])), 30, "Room 2.14")
    add(2, "Project review", at(r.randint(4, 7), 14), 60, "Board room, 3rd floor",
        "DESCRIPTION:" + _esc("Status, risks and next steps.\nBring the latest figures."))
    add(3, "Vendor demo: Contoso storage", at(r.randint(8, 10), 13), 60, "Room 1.02", "STATUS:TENTATIVE")
    add(4, "Lunch & learn: IMAP IDLE", at(r.randint(2, 5), 12), 60, "Canteen", "TRANSP:TRANSPARENT")
    add(5, "Dentist", at(r.randint(6, 12), 16), 45, "High Street Dental", "CLASS:PRIVATE")

    uid = f"{token}-6@{domain}"
    day = (midnight + timedelta(days=r.randint(9, 13))).date()
    out.append(SampleEvent(uid, _calendar([
        f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
        f"DTEND;VALUE=DATE:{day + timedelta(days=1):%Y%m%d}", "SUMMARY:Company offsite",
        "LOCATION:Lakeside Hotel", "TRANSP:TRANSPARENT"])))

    # Weekly stand-up: the third instance is cancelled, the second moved an hour later.
    uid = f"{token}-7@{domain}"
    first = at(1, 9)
    moved, cancelled = first + timedelta(weeks=1), first + timedelta(weeks=2)
    out.append(SampleEvent(uid, _calendar(
        [f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART:{_ut(first)}", f"DTEND:{_ut(first + timedelta(minutes=30))}",
         "SUMMARY:Team stand-up", "LOCATION:Room 2.14", "RRULE:FREQ=WEEKLY;COUNT=6", f"EXDATE:{_ut(cancelled)}"],
        [f"UID:{uid}", f"DTSTAMP:{stamp}", f"RECURRENCE-ID:{_ut(moved)}",
         f"DTSTART:{_ut(moved + timedelta(hours=1))}",
         f"DTEND:{_ut(moved + timedelta(hours=1, minutes=30))}",
         "SUMMARY:Team stand-up (moved)", "LOCATION:Room 2.14", "SEQUENCE:1"])))

    uid = f"{token}-8@{domain}"
    local = (midnight + timedelta(days=r.randint(3, 6))).date()
    out.append(SampleEvent(uid, _calendar(
        [f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART;TZID=Europe/Berlin:{local:%Y%m%d}T150000",
         f"DTEND;TZID=Europe/Berlin:{local:%Y%m%d}T160000", "SUMMARY:Call with the Berlin office",
         "LOCATION:Berlin\\, Friedrichstraße (video)"], tz=_BERLIN)))

    uid = f"{token}-9@{domain}"
    start = at(r.randint(7, 11), 11)
    attendees = [f"ATTENDEE;CN={_cn(me[0])};ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:{me[1]}"]
    for i, (name, addr) in enumerate(others):
        last = i and i == len(others) - 1
        role, partstat = ("OPT-PARTICIPANT", "TENTATIVE") if last else ("REQ-PARTICIPANT", "NEEDS-ACTION")
        attendees.append(f"ATTENDEE;CN={_cn(name)};ROLE={role};PARTSTAT={partstat};RSVP=TRUE:mailto:{addr}")
    out.append(SampleEvent(uid, _calendar(
        [f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART:{_ut(start)}", f"DTEND:{_ut(start + timedelta(hours=1))}",
         "SUMMARY:Quarterly planning", "LOCATION:Board room\\, 3rd floor", "SEQUENCE:0",
         f"ORGANIZER;CN={_cn(me[0])}:mailto:{me[1]}", *attendees])))
    return out


# -- contacts -----------------------------------------------------------------------------------

# (given, family, email, org, title, street, city, postcode, country, note)
_OUTSIDERS = [
    ("Zoë", "Ångström", "zoe.angstrom@partner.example.org", "Partner Consulting AB", "Lead consultant",
     "Storgatan 1", "Malmö", "211 34", "Sweden", "Met at the Malmö workshop; prefers mail to calls."),
    ("Dana", "Whitfield", "dana@partner.example.org", "Partner Consulting AB", "Account manager",
     "1 Harbour Road", "Leeds", "LS1 4AP", "United Kingdom", "Renewal due in spring."),
    ("Marcus", "Oyelaran", "marcus@northwind.example.net", "Northwind Traders", "Buyer",
     "22 Mill Lane", "Bristol", "BS1 6QA", "United Kingdom", "Orders quarterly, pays on time."),
    ("Priya", "Raman", "priya.raman@contoso.example.com", "Contoso Storage", "Sales engineer",
     "500 Market St", "Springfield", "62701", "USA", "Demo of the storage appliance booked."),
    ("Tom", "Baxter", "tom.baxter@fabrikam.example.com", "Fabrikam", "Office manager",
     "9 Station Parade", "York", "YO1 7HB", "United Kingdom", "Handles building access cards."),
]


def _vcard(uid, given, family, email, org, title, street, city, postcode, country, note, r, categories) -> str:
    fn = f"{given} {family}"
    return _join([
        "BEGIN:VCARD", "VERSION:3.0", f"UID:{uid}", f"FN:{_esc(fn)}", f"N:{_esc(family)};{_esc(given)};;;",
        f"EMAIL;TYPE=INTERNET,WORK,PREF:{email}",
        f"TEL;TYPE=WORK,VOICE:+44 20 7946 0{r.randint(0, 999):03d}",
        f"TEL;TYPE=CELL:+44 7700 900{r.randint(0, 999):03d}",
        f"ADR;TYPE=WORK:;;{_esc(street)};{_esc(city)};;{_esc(postcode)};{_esc(country)}",
        f"ORG:{_esc(org)}", f"TITLE:{_esc(title)}",
        f"BDAY:{date(r.randint(1960, 1999), r.randint(1, 12), r.randint(1, 28)).isoformat()}",
        f"NOTE:{_esc(note)}", f"CATEGORIES:{categories}", "END:VCARD",
    ])


def contacts_for(address: str, people, seed: int = 0) -> list[SampleContact]:
    """The other users of the organisation plus a few outside people, as vCard 3.0."""
    domain = address.split("@", 1)[1]
    r = _rng("card", address, seed)
    out: list[SampleContact] = []
    for name, addr in _others(address, people):
        given, _, family = name.rpartition(" ")
        uid = f"{r.getrandbits(48):012x}@{domain}"
        out.append(SampleContact(uid, _vcard(
            uid, given or family, family, addr, "Example Ltd;Head Office", "Colleague", "1 Sample Street",
            "London", "EC1A 1AA", "United Kingdom", f"Works with you at {domain}.", r, "Colleagues")))
    chosen = [_OUTSIDERS[0], *r.sample(_OUTSIDERS[1:], r.randint(2, 4))]
    for fields in chosen:
        uid = f"{r.getrandbits(48):012x}@{domain}"
        out.append(SampleContact(uid, _vcard(uid, *fields, r, "Customers,Partners")))
    return out
