"""Benchmark "Web app message list": the first page of a 100,000-message folder through /owa/, against the raw
IMAP commands that page needs, sent straight to Dovecot in the same run.

The bench user's folder "Big" is seeded once over IMAP. A browser session (requests, keep-alive, signed in
through the form) asks for /owa/?folder=Big; the baseline, on one logged-in IMAP connection, sends what the page
costs the back end: LIST, a STATUS per folder (the unread counts of the folder tree), SELECT Big and one FETCH of
the newest 50 envelopes. The two take turns in rounds; the page's time is the client's round trip (TLS on
loopback for both) and, beside it, the gateway's own time for the request from its log.
"""

from __future__ import annotations

import imaplib
import json
import re
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from .eas_sync import _login, _pinned, seed
from .gateway_env import HOST, GatewayEnv
from .harness import BenchError, Options, Progress
from .https_front import loop_of

NAME = "owa_list"
TITLE = "Web app message list (issue 8)"
FOLDER = "Big"
DEFAULT_MESSAGES = 100_000
PAGE = 50
PER_ROUND = 20
TARGET_P50_MS, TARGET_RATIO = 150.0, 2.0
_LISTED = re.compile(rb'^\(([^)]*)\) (?:"[^"]*"|NIL) ("(?:[^"\\]|\\.)*"|\S+)$')  # (flags) "/" name, name kept quoted

INTRO = (
    "The first page (the newest {page} of {messages} messages) of one folder through the web app, with a warm "
    "gateway and a signed-in browser session (Python requests over one keep-alive TLS connection, pinned to the "
    "other CPU), against the raw IMAP commands the page costs the back end, sent straight to Dovecot over one "
    "logged-in TLS connection in the same run: LIST, a STATUS (UNSEEN) per folder for the folder tree, SELECT of "
    "the folder and one FETCH of the {page} newest envelopes (UID, FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE). "
    "Rounds alternate which side goes first; each round times {per_round} requests of each. Gateway time is the "
    "request's duration in casgate's own log (aiohttp handler, HTML rendered). Target: p50 under {target:.0f} ms "
    "and never more than {ratio:.0f}x the raw IMAP time. Conversations are not in the web app yet, so their page "
    "is not measured.")


def _sign_in(env: GatewayEnv, user: str) -> requests.Session:
    s = requests.Session()
    s.verify = str(env.certs.ca_cert)
    s.trust_env = False
    form = s.get(env.https_url + "/owa/signin", timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    if form.status_code != 200 or token is None:
        raise BenchError(f"the sign-in form did not come: HTTP {form.status_code}")
    done = s.post(env.https_url + "/owa/signin", data={"csrf": token.group(1), "address": user,
                                                       "password": env.users[user]},
                  allow_redirects=False, timeout=60)
    if done.status_code != 303:
        raise BenchError(f"signing in to the web app answered HTTP {done.status_code}: {done.text[:300]}")
    return s


def _page_ms(s: requests.Session, env: GatewayEnv, expected: int) -> float:
    t0 = time.perf_counter()
    r = s.get(env.https_url + "/owa/", params={"folder": FOLDER}, timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or f"1-{PAGE} of {expected:,}".replace(",", "") not in r.text.replace(",", ""):
        raise BenchError(f"the message list page was not right: HTTP {r.status_code}, {r.text[:300]!r}")
    return ms


def _imap_ms(imap: imaplib.IMAP4, expected: int) -> float:
    t0 = time.perf_counter()
    typ, listed = imap.list()
    if typ != "OK":
        raise BenchError(f"LIST failed: {listed!r}")
    for line in listed:
        found = _LISTED.match(line) if isinstance(line, bytes) else None
        if found and b"\\Noselect" not in found.group(1):
            imap.status(found.group(2).decode(), "(UNSEEN)")
    typ, data = imap.select(FOLDER)
    total = int(data[0]) if typ == "OK" else -1
    if total != expected:
        raise BenchError(f"SELECT {FOLDER} found {total} messages, not {expected:,}")
    typ, data = imap.fetch(f"{total - PAGE + 1}:{total}", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)")
    ms = (time.perf_counter() - t0) * 1000
    if typ != "OK" or len([d for d in data if d]) < PAGE:
        raise BenchError(f"FETCH of the newest {PAGE} envelopes failed: {str(data)[:300]}")
    return ms


def _logged_ms(log: Path, count: int) -> list[float]:
    """The gateway's own durations of its last ``count`` /owa/ page requests."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"/owa/"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "http" and record.get("path") == "/owa/" and record.get("status") == 200:
            found.append(float(record.get("ms", 0.0)))
    return found[-count:]


def _pct(values: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return {"p50": statistics.median(values), "p90": deciles[8], "min": min(values), "max": max(values)}


def run(env: GatewayEnv, opts: Options, progress: Progress, messages: int = DEFAULT_MESSAGES) -> dict:
    user = next(iter(env.users))
    rounds = max(2, opts.rounds)
    page_ms: list[float] = []
    imap_ms: list[float] = []
    with ExitStack() as stack:
        imap = _login(env, user)
        stack.callback(imap.logout)
        imap.create(FOLDER)  # "already exists" on a second run is fine
        seeding = seed(imap, messages, progress, folder=FOLDER, who=NAME)
        progress.show(f"{NAME}: letting Dovecot index {FOLDER} and the gateway warm up")
        imap.select(FOLDER)
        browser = _sign_in(env, user)
        stack.callback(browser.close)
        stack.enter_context(_pinned(opts.client_cpu))
        for _ in range(5):  # warm-up, not recorded
            _page_ms(browser, env, messages)
            _imap_ms(imap, messages)
        for rnd in range(rounds):
            for who in (("casgate", "imap") if rnd % 2 == 0 else ("imap", "casgate")):
                progress.show(f"{NAME}: round {rnd + 1}/{rounds}, {who}")
                for _ in range(PER_ROUND):
                    if who == "casgate":
                        page_ms.append(_page_ms(browser, env, messages))
                    else:
                        imap_ms.append(_imap_ms(imap, messages))
        env.check_alive()
        time.sleep(0.5)  # the log's last lines
        server_ms = _logged_ms(env.log, len(page_ms))
    progress.clear()
    return _result(env, opts, messages, rounds, seeding, page_ms, imap_ms, server_ms)


def _result(env: GatewayEnv, opts: Options, messages: int, rounds: int, seeding: dict, page_ms: list[float],
            imap_ms: list[float], server_ms: list[float]) -> dict:
    page, raw = _pct(page_ms), _pct(imap_ms)
    server = _pct(server_ms) if len(server_ms) >= 2 else None
    rows = [
        {"key": "page_p50", "metric": f"first page of a {messages:,}-message folder, p50 ms (target < "
         f"{TARGET_P50_MS:.0f}); baseline: the same IMAP commands", "casgate": page["p50"], "baseline": raw["p50"],
         "ratio": round(raw["p50"] / page["p50"], 3)},
        {"key": "page_p90", "metric": "the same, p90 ms", "casgate": page["p90"], "baseline": raw["p90"],
         "ratio": round(raw["p90"] / page["p90"], 3)},
    ]
    if server:
        rows.append({"key": "server_p50", "metric": "the same, gateway's own time p50 ms (from its log)",
                     "casgate": server["p50"], "baseline": raw["p50"], "ratio": round(raw["p50"] / server["p50"], 3)})
    times = page["p50"] / raw["p50"]
    ok = page["p50"] < TARGET_P50_MS and times <= TARGET_RATIO
    notes = [
        f"Targets: p50 {page['p50']:.1f} ms vs < {TARGET_P50_MS:.0f} ms, and {times:.2f}x the raw IMAP time vs at "
        f"most {TARGET_RATIO:.0f}x: {'met' if ok else 'NOT met'}. Ratio = baseline / casgate (higher is better).",
        f"{len(page_ms)} pages and {len(imap_ms)} IMAP sequences over {rounds} rounds; page min/max "
        f"{page['min']:.1f}/{page['max']:.1f} ms, IMAP {raw['min']:.1f}/{raw['max']:.1f} ms. Seeding: "
        f"{seeding.get('seeded', 0):,} messages by {seeding.get('method')}"
        + (f" in {seeding['seconds']} s." if "seconds" in seeding else "."),
    ]
    return {"name": NAME, "title": TITLE, "baseline_label": "Dovecot direct (raw IMAP)",
            "intro": INTRO.format(page=PAGE, messages=f"{messages:,}", per_round=PER_ROUND, target=TARGET_P50_MS,
                                  ratio=TARGET_RATIO),
            "rows": rows, "extra_notes": notes,
            "settings": {"rounds": rounds, "seconds": "-", "connections": 1, "messages": messages,
                         "loop": loop_of(env.proc.pid),
                         "client_cpu": opts.client_cpu, "server_cpu": opts.server_cpu, "host": HOST},
            "raw": {"page_ms": [round(v, 3) for v in page_ms], "imap_ms": [round(v, 3) for v in imap_ms],
                    "server_ms": server_ms, "seeding": seeding}}
