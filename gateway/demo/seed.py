"""Seed the demo users' mailboxes, calendars and address books through the adapters, with a progress line."""

from __future__ import annotations

import datetime as dt
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from adapters.dav import CalDavCalendarStore, CardDavContactStore
from adapters.imap import ImapEndpoint, ImapMailStore
from adapters.interfaces import Credentials

from .sample_data import contacts_for, demo_people, events_for, messages_for


class Progress:
    """A single self-rewriting line on a terminal; plain lines otherwise."""

    def __init__(self, total: int, label: str, stream=sys.stderr) -> None:
        self.total, self.label, self.stream, self.done = total, label, stream, 0
        self.tty = stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        width = 24
        filled = width * self.done // max(1, self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {what}"
        if self.tty:
            self.stream.write("\r\033[K" + line[:110])
            if self.done == self.total:
                self.stream.write("\n")
        elif self.done == self.total or self.done % 20 == 1:
            self.stream.write(line + "\n")
        self.stream.flush()


async def seed(imap: ImapEndpoint, dav_url: str, ca_file: Path, users: dict[str, str],
               domain: str = "example.test", now: dt.datetime | None = None) -> dict[str, int]:
    """Put sample mail, events and contacts into every user's stores; return counts."""
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(minute=0, second=0, microsecond=0)
    people = demo_people(domain)
    plan = {a: (messages_for(a, people, now), events_for(a, people, now), contacts_for(a, people))
            for _, a in people if a in users}
    total = sum(len(m) + len(e) + len(c) for m, e, c in plan.values())
    progress = Progress(total, "seeding")
    counts = {"messages": 0, "events": 0, "contacts": 0}
    for address, (messages, events, contacts) in plan.items():
        creds = Credentials(address, users[address])
        async with AsyncExitStack() as stack:
            mail = ImapMailStore(imap, creds)
            cal = CalDavCalendarStore(dav_url, creds, ca_file)
            book = CardDavContactStore(dav_url, creds, ca_file)
            for store in (mail, cal, book):
                await store.start(stack)
            for m in messages:
                await mail.append(m.folder, m.raw, m.flags, m.date)
                counts["messages"] += 1
                progress.step(f"{address}: mail")
            calendar = await cal.ensure_default_calendar()
            for e in events:
                await cal.put_event(calendar.url, e.ical, e.uid)
                counts["events"] += 1
                progress.step(f"{address}: calendar")
            address_book = await book.ensure_default_address_book()
            for c in contacts:
                await book.put_contact(address_book.url, c.vcard, c.uid)
                counts["contacts"] += 1
                progress.step(f"{address}: contacts")
    return counts
