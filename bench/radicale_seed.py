"""A private Radicale full of benchmark calendars: written straight into its storage, checked, cache warmed."""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

from gateway import tls
from gateway.demo.radicale import Radicale

from .calendar_data import DATA_DAYS, DATA_START, address, calendar_items
from .harness import BenchError, Progress

CALENDAR = "calendar"
SERVICE_LOGIN = "casgate-freebusy"
_PROPS = {"tag": "VCALENDAR", "D:displayname": "Calendar", "C:supported-calendar-component-set": "VEVENT"}
_TAGS = ('<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/">'
         '<d:prop><d:resourcetype/><cs:getctag/><d:sync-token/></d:prop></d:propfind>')
_ETAGS = ('<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop>'
          '</d:propfind>')


def calendar_path(user: int) -> str:
    """The calendar's path on the server, as Radicale spells it in hrefs."""
    return f"/{quote(address(user), safe='')}/{CALENDAR}/"


def write_calendars(collections: Path, users: int, per_user: int, progress: Progress) -> int:
    """Write each user's calendar as Radicale's multifilesystem storage keeps it; returns the objects written."""
    root = collections / "collection-root"
    written = 0
    t0 = time.monotonic()
    for n in range(users):
        folder = root / address(n) / CALENDAR
        folder.mkdir(parents=True)
        (folder / ".Radicale.props").write_text(json.dumps(_PROPS, sort_keys=True))
        for uid, text in calendar_items(n, per_user):
            (folder / f"{uid}.ics").write_bytes(text.encode())
            written += 1
        if progress.tty or (n + 1) % 25 == 0:
            progress.show(f"setting up: writing calendars into Radicale's storage: {n + 1}/{users} users, "
                          f"{written:,} objects ({time.monotonic() - t0:.0f} s)")
    return written


def _client(url: str, login: tuple[str, str], ca: Path):
    from caldav.davclient import DAVClient
    return DAVClient(url=url, username=login[0], password=login[1], auth_type="basic",
                     ssl_verify_cert=str(ca), timeout=120, enable_rfc6764=False)


def _prime(url: str, login: tuple[str, str], ca: Path, users: list[int]) -> dict[int, int]:
    """Fetch every listed calendar once (PROPFIND Depth 1 for each object's ETag, so Radicale parses and caches
    each object), then ask for its ctag and sync-token as the gateway does (Radicale builds the collection's
    history on the first such request). Returns the objects listed per user."""
    counts = {}
    with _client(url, login, ca) as client:
        for n in users:
            r = client.propfind(url.rstrip("/") + calendar_path(n), _ETAGS, depth=1)
            if r.status != 207:
                raise BenchError(f"Radicale answered PROPFIND of {calendar_path(n)} with {r.status}")
            # Every object is one response; so is the collection itself.
            counts[n] = len(r.tree.findall("{DAV:}response")) - 1 if r.tree is not None else 0
            home = url.rstrip("/") + calendar_path(n).rsplit("/", 2)[0] + "/"
            if client.propfind(home, _TAGS, depth=1).status != 207:
                raise BenchError(f"Radicale refused to list the collections of {address(n)}")
    return counts


def verify_query(radicale: Radicale, login: tuple[str, str], ca: Path, user: int, expected: int) -> None:
    """One caldav time-range query over the whole seeded span must return every object of ``user``."""
    import datetime as dt
    with _client(radicale.url, login, ca) as client:
        cal = client.calendar(url=radicale.url.rstrip("/") + calendar_path(user))
        found = cal.search(event=True, start=DATA_START - dt.timedelta(days=1),
                           end=DATA_START + dt.timedelta(days=DATA_DAYS + 1), expand=False)
    if len(found) != expected:
        raise BenchError(f"Radicale returned {len(found)} of the {expected} objects seeded for {address(user)}; "
                         f"log {radicale.log}")


def warm_item_cache(radicale: Radicale, certs: tls.CertPaths, login: tuple[str, str], users: int, per_user: int,
                    cpus: list[int], progress: Progress) -> float:
    """Fetch every calendar once so Radicale parses (and caches) every object before anything is measured.

    A second Radicale on the same storage, pinned to the other CPU, takes half the calendars: the first
    parse is CPU-bound and one Radicale process uses one core. Returns the seconds it took.
    """
    t0 = time.monotonic()
    with ExitStack() as stack:
        helper = Radicale(radicale.root.parent / "radicale-warm", certs.cert, certs.key,
                          users=dict(radicale.users), service_user=radicale.service_user, log_level="warning")
        helper.root.mkdir()
        helper.collections.symlink_to(radicale.collections, target_is_directory=True)
        stack.callback(helper.stop)  # before start: an interrupted start leaves no Radicale behind
        try:
            helper.start()
        except RuntimeError as exc:
            raise BenchError(f"the helper Radicale did not start: {exc}") from None
        pin(helper.proc.pid, cpus[-1])
        halves = [(radicale.url, list(range(0, users, 2))), (helper.url, list(range(1, users, 2)))]
        counts: dict[int, int] = {}
        pool = ThreadPoolExecutor(4)
        try:
            # Two clients per server: one waits on the network while the other's calendar is parsed.
            jobs = [pool.submit(_prime, url, login, certs.ca_cert, part[i::2])
                    for url, part in halves for i in range(2)]
            every = 1 if progress.tty else 10
            while not all(j.done() for j in jobs):
                progress.show(f"setting up: warming Radicale's item cache (two Radicale processes, every calendar "
                              f"once) {time.monotonic() - t0:.0f} s")
                for _ in range(every):
                    if all(j.done() for j in jobs):
                        break
                    time.sleep(1)
            for j in jobs:
                counts.update(j.result())
        finally:
            # On Ctrl-C, do not wait for the clients: they fail fast once the Radicales are stopped.
            pool.shutdown(wait=False, cancel_futures=True)
    short = {n: c for n, c in counts.items() if c != per_user}
    if len(counts) != users or short:
        raise BenchError(f"Radicale lists {len(counts)} of {users} calendars; wrong object counts (user: count): "
                         f"{dict(list(short.items())[:5])}")
    return time.monotonic() - t0


def pin(pid: int, cpu: int) -> None:
    """Pin a running process (its main thread, and so every thread it starts later) to one CPU."""
    os.sched_setaffinity(pid, {cpu})


def start(stack: ExitStack, root: Path, certs: tls.CertPaths, users: int, cpu: int) -> Radicale:
    """Radicale on ``root`` with ``users`` benchmark users and the read-all service account, pinned to ``cpu``."""
    accounts = {address(n): secrets.token_urlsafe(9) for n in range(users)}
    # Log level info: one line per request, which tells the benchmark how many REPORTs a request caused.
    radicale = Radicale(root, certs.cert, certs.key, users=accounts,
                        service_user=(SERVICE_LOGIN, secrets.token_urlsafe(12)), log_level="info")
    stack.callback(radicale.stop)  # before start: an interrupted start leaves no Radicale behind
    try:
        radicale.start()
    except RuntimeError as exc:
        raise BenchError(f"Radicale did not start: {exc}") from None
    pin(radicale.proc.pid, cpu)
    return radicale
