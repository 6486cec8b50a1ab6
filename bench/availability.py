"""Benchmark "Availability": GetUserAvailability latency, cold and warm cache, vs fetching from Radicale directly."""

from __future__ import annotations

import itertools
import os
import time
from contextlib import ExitStack
from pathlib import Path

from gateway.config import AvailabilityConfig

from .availability_setup import AVAILABILITY_TIMEOUT, AvailabilityEnv, direct_fetch, start_all
from .calendar_data import DATA_DAYS, WINDOW_DAYS, address, window
from .ews_client import EwsClient, exchangelib_merged, request_body, summarise
from .gateway_env import HOST, GatewayEnv
from .harness import BenchError, Options, Progress, median, process_cpu_seconds, tls_session_facts
from .https_front import loop_of

NAME = "availability"
TITLE = "Availability (GetUserAvailability, issue 3)"
BASELINE = "direct caldav fetch"
N_USERS = 100
EVENTS_PER_USER = 500
SIZES = (20, 100)
INTERVAL = 30
CACHE_TTL = AvailabilityConfig().cache_ttl  # left at its default
DEFAULT_TIMEOUT = AvailabilityConfig().timeout
WARM_TARGET_MS = 50.0  # warm cache p50 for 20 mailboxes
COLD_TARGET_RATIO = 1.5  # cold p50 / direct fetch p50
#: The biggest size costs most: at most BIG_ROUNDS cold rounds and warm samples; cold rounds stop after
#: MIN_SAMPLES once they took COLD_BUDGET_SECONDS.
BIG_ROUNDS = 3
MIN_SAMPLES = 2
COLD_BUDGET_SECONDS = 150.0
#: Threads the gateway's asyncio.to_thread pool has here (Python's default), and so the baseline too.
WORKERS = min(32, (os.cpu_count() or 1) + 4)

INTRO = (
    "GetUserAvailability (view DetailedMerged, {interval}-minute merged interval, a {days}-day window, "
    "requester zone Europe/Berlin) for {small} and for {big} mailboxes, against `casgate serve` (pinned to "
    "CPU {server_cpu}, production defaults: `availability.cache_ttl` {ttl:g} s, `availability.timeout` "
    "{timeout:g} s, counted for each mailbox from when it gets one of the gateway's CalDAV threads) whose "
    "CalDAV back end is a private "
    "Radicale (pinned to CPU {client_cpu}) read with a service account. Radicale holds {users} users' "
    "calendars of {per_user} events each over {data_days} days around the window: one in ten recurs weekly or "
    "daily in Europe/Berlin (some with an EXDATE, some with a moved instance), the rest include all-day, "
    "tentative, transparent, private, cancelled and out-of-office events; its item cache is warm before "
    "anything is measured.\n\n"
    "Timing: raw SOAP POSTs (the request exchangelib sends, over one keep-alive HTTPS "
    "connection with `requests`), from sending to having read the whole answer, so exchangelib's own parsing "
    "of thousands of CalendarEvents stays out of the figure; exchangelib itself makes the warm "
    "{small}-mailbox request once and must get the same merged strings. Cold: every sample asks for a window "
    "one minute later than any before, so no cache entry matches (Radicale must receive one REPORT per "
    "mailbox); warm: the last cold request repeated right after it, counted only when Radicale received no "
    "REPORT for it, i.e. every calendar was still cached (within `availability.revalidate_after` the gateway "
    "does not even ask Radicale for the calendars' ctags).\n\n"
    "Baseline: the same calendars fetched straight from Radicale with the caldav library, "
    "`Calendar.search(event=True, start, end, expand=False)` over the same {days} days (the call the "
    "gateway's CalDAV adapter makes), {workers} calendars at a time by {workers} threads, each with its own "
    "keep-alive DAVClient (the gateway fetches up to 16 mailboxes at once over one shared client, sending its "
    "own calendar-query REPORT and parsing each object once), in a process pinned to CPU {server_cpu} like "
    "the gateway. The baseline pays for caldav's default client-side filtering of a time-range search, which "
    "parses every object returned.\n\n"
    "Gateway and baseline samples alternate; medians shown. Here the ratio is casgate's latency / the direct "
    "fetch's: lower is better, 1.00 = as fast as fetching the events oneself. Targets from issue 3: warm p50 "
    "under {warm_target:g} ms for {small} mailboxes; cold at most {cold_target:g}x the direct fetch."
)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


class _Sampler:
    """Takes samples and keeps their raw records: latency, CPU of each process, REPORTs Radicale received."""

    def __init__(self, aenv: AvailabilityEnv, client: EwsClient, ca_file: Path) -> None:
        self.aenv, self.client, self.ca_file = aenv, client, ca_file
        self.raw: list[dict] = []
        self.shifts = itertools.count(1)  # minutes a window is moved by; each is used for one cold request
        self._log_at = aenv.radicale.log.stat().st_size

    def _cpu(self) -> dict[str, float]:
        return {"casgate": process_cpu_seconds(self.aenv.gateway.pid),
                "radicale": process_cpu_seconds(self.aenv.radicale.proc.pid),
                "worker": process_cpu_seconds(self.aenv.worker.pid)}

    def _reports(self) -> int:
        """REPORT requests Radicale logged since the last call: one per calendar fetched (a cache miss)."""
        with open(self.aenv.radicale.log, "rb") as f:
            f.seek(self._log_at)
            new = f.read()
        self._log_at += len(new)
        return new.count(b"REPORT request for")

    def gateway(self, size: int, shift: int, phase: str, record: bool = True) -> dict:
        start, end = window(shift)
        body = request_body([address(n) for n in range(size)], start, end, interval=INTERVAL)
        self._reports()
        cpu0 = self._cpu()
        seconds, data = self.client.post(body)
        cpu1 = self._cpu()
        self.aenv.check_alive()
        facts = summarise(data, size, WINDOW_DAYS * 24 * 60 // INTERVAL)
        rec = {"server": "casgate", "phase": phase, "mailboxes": size, "shift_minutes": shift,
               "ms": seconds * 1000, "reports": self._reports(), "events": facts["events"], "bytes": facts["bytes"],
               "cpu_ms": {k: (cpu1[k] - cpu0[k]) * 1000 for k in ("casgate", "radicale")}}
        if phase == "cold" and rec["reports"] != size:
            raise BenchError(f"a cold request for {size} mailboxes made Radicale answer {rec['reports']} REPORTs")
        if record:
            self.raw.append(rec)
        return {**rec, "merged": facts["merged"]}

    def direct(self, size: int, shift: int, record: bool = True) -> dict:
        start, end = window(shift)
        self._reports()
        cpu0 = self._cpu()
        r = direct_fetch(self.aenv, [self.aenv.calendar_url(n) for n in range(size)], start, end)
        cpu1 = self._cpu()
        self.aenv.check_alive()
        if r["objects"] < size:
            raise BenchError(f"the direct fetch found only {r['objects']} objects in {size} calendars")
        rec = {"server": "baseline", "phase": "direct", "mailboxes": size, "shift_minutes": shift,
               "ms": r["seconds"] * 1000, "reports": self._reports(), "objects": r["objects"],
               "cpu_ms": {k: (cpu1[k] - cpu0[k]) * 1000 for k in ("worker", "radicale")}}
        if record:
            self.raw.append(rec)
        return rec

    def series(self, size: int, phase: str, field: str = "ms") -> list[float]:
        return [r[field] for r in self.raw if r["mailboxes"] == size and r["phase"] == phase]

    def cpu(self, size: int, phase: str, who: str) -> float | None:
        values = [r["cpu_ms"][who] for r in self.raw if r["mailboxes"] == size and r["phase"] == phase]
        return median(values) if values else None


def _cold_rounds(s: _Sampler, size: int, rounds: int, progress: Progress) -> tuple[int, int]:
    """Cold casgate samples alternating with direct fetches, the last round ending with casgate.

    Returns the rounds done and the window shift of the last casgate sample (whose entries the warm
    samples then reuse). The biggest size stops early, after MIN_SAMPLES rounds, once over its time budget.
    """
    t0 = time.monotonic()
    last_shift = 0
    for rnd in range(rounds):
        if size == SIZES[-1] and rnd >= MIN_SAMPLES and time.monotonic() - t0 > COLD_BUDGET_SECONDS:
            progress.note(f"{TITLE}: {size} mailboxes: stopped after {rnd} cold rounds "
                          f"(time budget {COLD_BUDGET_SECONDS:.0f} s)")
            return rnd, last_shift
        last_shift = next(s.shifts)
        order = ("baseline", "casgate") if (rounds - 1 - rnd) % 2 == 0 else ("casgate", "baseline")
        for who in order:
            progress.show(f"{TITLE}: {size} mailboxes, cold round {rnd + 1}/{rounds}: {who} "
                          f"({time.monotonic() - t0:.0f} s so far)")
            if who == "casgate":
                s.gateway(size, last_shift, "cold")
            else:
                s.direct(size, last_shift)
    return rounds, last_shift


def _warm_samples(s: _Sampler, size: int, shift: int, wanted: int, progress: Progress) -> int:
    """Repeat the last cold request; a sample counts as warm only if Radicale answered no REPORT for it.

    A sample in which some calendars were fetched again (their entries outlived availability.cache_ttl) is
    kept in the raw data as "warm-partial" and the next one tried, up to twice ``wanted`` in all.
    """
    got = 0
    for i in range(2 * wanted):
        progress.show(f"{TITLE}: {size} mailboxes, warm sample {got + 1}/{wanted} (try {i + 1})")
        rec = s.gateway(size, shift, "warm")
        if rec["reports"]:
            s.raw[-1]["phase"] = "warm-partial"
        else:
            got += 1
        if got == wanted:
            break
    return got


def _measure(s: _Sampler, opts: Options, progress: Progress) -> dict:
    """Cold (alternating with the direct fetch) then warm samples for each size; returns facts for the intro."""
    facts: dict = {}
    small = SIZES[0]
    progress.show(f"{TITLE}: warm-up (unrecorded): {small} mailboxes through casgate, then directly")
    s.gateway(small, next(s.shifts), "warm-up", record=False)
    s.direct(small, next(s.shifts), record=False)
    for size in SIZES:
        rounds = opts.rounds if size == small else min(opts.rounds, BIG_ROUNDS)
        done, shift = _cold_rounds(s, size, rounds, progress)
        warm = _warm_samples(s, size, shift, max(opts.rounds, 5) if size == small else BIG_ROUNDS, progress)
        facts[size] = {"cold_rounds": done, "warm_samples": warm,
                       "warm_partial_samples": len(s.series(size, "warm-partial")),
                       "events": s.raw[-1]["events"], "bytes": s.raw[-1]["bytes"]}
        if size == small:
            progress.show(f"{TITLE}: {size} mailboxes: the same request through exchangelib")
            first = s.gateway(size, shift, "exchangelib-check", record=False)
            start, end = window(shift)
            ex_seconds, ex_merged = exchangelib_merged(s.aenv.ews_url, s.aenv.login, s.ca_file,
                                                       [address(n) for n in range(size)], start, end)
            if ex_merged != first["merged"]:
                raise BenchError(f"exchangelib's merged free/busy of {size} mailboxes differs from the raw answer's")
            facts[size]["exchangelib_ms"] = round(ex_seconds * 1000, 1)
            facts[size]["raw_ms_same_request"] = round(first["ms"], 1)
    return facts


def _round(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


def _rows(s: _Sampler) -> list[dict]:
    """One table row per size and cache state: p50 latencies, the ratio to the direct fetch, the target's verdict."""
    rows = []
    for size in SIZES:
        direct = median(s.series(size, "direct")) or None
        for phase in ("cold", "warm"):
            gw = median(s.series(size, phase)) or None
            ratio = round(gw / direct, 3) if gw and direct else None
            label = f"{size} mailboxes, {phase} cache: p50 ms"
            if phase == "cold":
                verdict = "n/a" if ratio is None else _met(ratio <= COLD_TARGET_RATIO)
                label += f" (target <= {COLD_TARGET_RATIO:g}x direct: {verdict})"
            elif size == SIZES[0]:
                verdict = "n/a" if gw is None else _met(gw < WARM_TARGET_MS)
                label += f" (target < {WARM_TARGET_MS:g} ms: {verdict})"
            elif gw is None:
                label += " (n/a: every repeat refetched calendars whose cache entries had expired)"
            rows.append({
                "key": f"{phase}_{size}", "metric": label, "casgate": _round(gw), "baseline": _round(direct),
                "ratio": ratio,
                "cpu_ms": {"casgate": _round(s.cpu(size, phase, "casgate")),
                           "radicale_for_casgate": _round(s.cpu(size, phase, "radicale")),
                           "direct_client": _round(s.cpu(size, "direct", "worker")),
                           "radicale_for_direct": _round(s.cpu(size, "direct", "radicale"))},
                "samples": {"casgate": [round(v, 1) for v in s.series(size, phase)],
                            "baseline": [round(v, 1) for v in s.series(size, "direct")]},
            })
    return rows


def _findings(rows: list[dict], facts: dict) -> str:
    """Sentences for the intro that only this run can tell: where the CPU went, how big the answers were."""
    by = {r["key"]: r for r in rows}
    big, small = SIZES[-1], SIZES[0]
    cold, warm = by[f"cold_{big}"]["cpu_ms"], by[f"warm_{small}"]["cpu_ms"]
    text = (f"\n\nIn this run (CPU medians per request): a cold {big}-mailbox request cost {cold['casgate']:,.0f} "
            f"CPU-ms in casgate and {cold['radicale_for_casgate']:,.0f} in Radicale; fetching the same calendars "
            f"directly cost {cold['direct_client']:,.0f} CPU-ms in the caldav client and "
            f"{cold['radicale_for_direct']:,.0f} in Radicale.")
    if warm["casgate"] is not None:
        text += (f" A warm {small}-mailbox request cost {warm['casgate']:,.0f} CPU-ms in casgate and "
                 f"{warm['radicale_for_casgate']:,.0f} in Radicale (the ctag check).")
    text += (f" The {big}-mailbox answer lists {facts[big]['events']:,} CalendarEvents in "
             f"{facts[big]['bytes'] / 1e6:.1f} MB. exchangelib took {facts[small]['exchangelib_ms']:,.0f} ms for "
             f"the warm {small}-mailbox request (raw SOAP: {facts[small]['raw_ms_same_request']:,.0f} ms; its "
             "GetServerTimeZones call and its parsing make the difference) and got the same merged strings.")
    partial = facts[big]["warm_partial_samples"]
    if partial:
        text += (f" {partial} of the warm {big}-mailbox repeats were not counted: a cold {big}-mailbox request "
                 f"takes so long that the first mailboxes' entries outlive the {CACHE_TTL:g} s cache TTL and are "
                 "fetched again.")
    return text


def run(env: GatewayEnv, opts: Options, progress: Progress) -> dict:
    """Set up Radicale and a CalDAV-backed gateway, measure, and return this benchmark's result."""
    ca = env.certs.ca_cert
    t0 = time.monotonic()
    with ExitStack() as stack:
        aenv = start_all(stack, env, opts, progress, N_USERS, EVENTS_PER_USER, WORKERS)
        setup_seconds = time.monotonic() - t0
        client = EwsClient(aenv.ews_url, aenv.login, ca)
        stack.callback(client.close)
        sampler = _Sampler(aenv, client, ca)
        facts = _measure(sampler, opts, progress)
        loop = loop_of(aenv.gateway.pid)
        tls = tls_session_facts(HOST, aenv.https_port, ca)
        progress.show(f"{TITLE}: stopping casgate, Radicale and the caldav worker")
    progress.clear()
    rows = _rows(sampler)
    intro = INTRO.format(interval=INTERVAL, days=WINDOW_DAYS, small=SIZES[0], big=SIZES[-1],
                         server_cpu=opts.server_cpu, client_cpu=opts.client_cpu, users=N_USERS,
                         per_user=EVENTS_PER_USER, data_days=DATA_DAYS, workers=WORKERS,
                         warm_target=WARM_TARGET_MS, cold_target=COLD_TARGET_RATIO, ttl=CACHE_TTL,
                         default_timeout=DEFAULT_TIMEOUT, timeout=AVAILABILITY_TIMEOUT) + _findings(rows, facts)
    return {
        "name": NAME, "title": TITLE, "intro": intro, "baseline_label": BASELINE, "rows": rows,
        "settings": {"rounds": " / ".join(f"{facts[n]['cold_rounds']} ({n} mailboxes)" for n in SIZES),
                     "seconds": "n/a", "connections": 1,
                     "server_cpu": opts.server_cpu, "client_cpu": opts.client_cpu, "loop": {"casgate": loop},
                     "tls": tls, "users": N_USERS, "events_per_user": EVENTS_PER_USER,
                     "objects_seeded": aenv.seeded, "radicale_cache_warm_seconds": round(aenv.warm_seconds, 1),
                     "setup_seconds": round(setup_seconds, 1), "direct_fetch_threads": WORKERS,
                     "view": "DetailedMerged", "interval_minutes": INTERVAL, "window_days": WINDOW_DAYS,
                     "facts": facts},
        "raw": sampler.raw,
    }
