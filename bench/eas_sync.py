"""Benchmark "ActiveSync mail sync": a phone's initial and no-change Sync of a big INBOX vs raw IMAP on Dovecot.

One client, as a phone is: one keep-alive HTTPS connection, EAS 14.1, Provision (two steps), FolderSync 0,
Sync 0 and then Syncs with WindowSize 100 and an HTML body preference until no MoreAvailable, then repeated
Syncs with the final key while nothing changes. The baseline is the equivalent raw IMAP work on the same
Dovecot over one TLS connection: the UID list, then every message (flags, date, size, full body) in
FETCHes of 100 UIDs, and a STATUS round trip for the no-change case. The mailbox is seeded once into the
gateway's Dovecot user with IMAP (MULTIAPPEND), from deterministic, realistic messages.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import http.client
import imaplib
import json
import os
import random
import resource
import secrets
import statistics
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from gateway.activesync import wbxml
from gateway.activesync.wbxml import Element

from .gateway_env import HOST, GatewayEnv
from .harness import BenchError, Options, Progress, client_context, log_tail, process_cpu_seconds, tls_session_facts
from .https_front import loop_of

NAME = "eas_sync"
TITLE = "ActiveSync mail sync (issue 6)"
DEFAULT_MESSAGES = 10_000
WINDOW = 100
TRUNCATION = 5120
VERSION = "14.1"
NO_CHANGE_SYNCS, NO_CHANGE_WARMUP = 200, 5
MAX_ROUNDS = 3  # each round is a whole initial sync; more would make the full run long for little gain
SEED_BATCH = 200  # messages per MULTIAPPEND command (about 2 MB)
TARGET_RATE = 490.0  # items/s: ten times SOGo's 49
TARGET_P50_MS = 5.0
TARGET_RSS_MB = 150.0
INTRO = (
    "One simulated phone (Python `http.client`, one keep-alive TLS connection, EAS 14.1, `Accept-Encoding: "
    "gzip`, WBXML built and read with casgate's own codec, pinned to the client CPU) provisions (two steps), "
    "runs FolderSync 0, then Sync 0 and Syncs of the INBOX with WindowSize 100 and `BodyPreference` Type 2 "
    "(HTML), TruncationSize 5120, until no MoreAvailable; wall time covers Sync 0 to the last answer, "
    "including the client's own decoding. The INBOX holds {messages} messages seeded once over IMAP "
    "(deterministic, 4-18 KB, multipart/alternative text+HTML, every 10th with a 1.5 KB attachment). "
    "Baseline: the same mailbox read straight from Dovecot over one TLS connection with imaplib "
    "(EXAMINE, UID SEARCH ALL, then `UID FETCH <100 UIDs> (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])`). "
    "Baseline and casgate alternate over the rounds, each casgate round with a new device; medians shown. "
    "No-change: {syncs} Syncs with the final key (after {warmup} unrecorded), each followed by one raw "
    "`STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)` on Dovecot as its baseline; latencies are round trips "
    "measured by the client. Peak RSS is the gateway's VmHWM, reset before each casgate round. "
    "Targets (issue 6): initial sync >= 490 items/s (10x SOGo's 49), no-change Sync p50 < 5 ms, peak RSS "
    "< 150 MB for 10,000 messages.")

# --- the mailbox ----------------------------------------------------------------------------------------

_WORDS = """
account action agenda agreement answer approval april audit balance board branch budget calendar call
campaign change client closing colleague committee contract cost customer data deadline decision delivery
department design detail draft estimate event figure final finance follow forecast friday group growth
invoice issue item january july june launch lead legal list logistics march market meeting memo metric
milestone monday month network note number offer office order owner partner payment plan policy price
priority process product project proposal purchase quarter question quote record region release report
request review risk role sales schedule scope service session share shipment site slide staff status
summary supplier support survey system target task team thursday ticket timeline topic training travel
tuesday update vendor version wednesday week workshop please kindly attached below above agreed confirm
discuss expect finish handle include move prepare receive send share check sign approve the a our your
this next last new current revised updated internal external open pending urgent weekly monthly with for
about from into after before during between across""".split()
_FIRST = "Anna Ben Carla David Elena Farid Grace Hugo Ines Jonas Karin Luis Maria Nils Olga Pavel Rosa Sven Tara Yusuf"
_LAST = "Adler Berger Costa Dubois Eriksen Fischer Garcia Hansen Ivanova Jensen Keller Larsen Moreau Novak Olsen"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_NEWEST = dt.datetime(2026, 3, 2, 17, 30, tzinfo=dt.timezone.utc)  # fixed, so every run seeds the same bytes


class _Corpus:
    """Paragraphs (plain and HTML) and senders drawn once from a fixed seed; messages pick from them."""

    def __init__(self, seed: str = "casgate-eas-sync") -> None:
        rng = random.Random(seed)
        self.paragraphs: list[tuple[str, str]] = []
        for _ in range(800):
            sentences = []
            for _ in range(rng.randint(2, 6)):
                words = rng.choices(_WORDS, k=rng.randint(6, 18))
                sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
            text = " ".join(sentences)
            self.paragraphs.append((_wrap(text), "<p style=\"margin:0 0 12px 0;font-family:Calibri,Arial,"
                                    f"sans-serif;font-size:11pt\">{_wrap(text)}</p>"))
        self.senders = [(f, last) for f in _FIRST.split() for last in _LAST.split()]


def _wrap(text: str, width: int = 76) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n".join(lines)


def message(corpus: _Corpus, i: int) -> tuple[bytes, dt.datetime, tuple[str, ...]]:
    """Message ``i`` (0-based, oldest first): its bytes, date and flags; the same for the same ``i`` every run."""
    rng = random.Random(f"casgate-eas-sync-{i}")
    when = _NEWEST - dt.timedelta(minutes=7 * (DEFAULT_MESSAGES - i) + rng.randint(0, 6))
    first, last = rng.choice(corpus.senders)
    subject = " ".join(rng.choices(_WORDS, k=rng.randint(3, 8))).capitalize()
    attach = (i + 1) % 10 == 0
    target = rng.randint(4096, 18432) - 700 - (2200 if attach else 0)  # headers, MIME frames, attachment
    text_parts, html_parts, size = [f"Ref {i + 1}: {subject}."], [f"<p>Ref {i + 1}: {subject}.</p>"], 0
    while size < target:
        plain, html = rng.choice(corpus.paragraphs)
        text_parts.append(plain)
        html_parts.append(html)
        size += len(plain) + len(html) + 8
    alt = f"alt-{i:06d}-{rng.getrandbits(32):08x}"
    body = (f"--{alt}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + "\r\n\r\n".join(text_parts) + f"\r\n\r\n--{alt}\r\nContent-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n<html><head><meta charset=\"utf-8\"></head><body>\r\n"
            + "\r\n".join(html_parts) + f"\r\n</body></html>\r\n--{alt}--\r\n")
    content_type = f'multipart/alternative; boundary="{alt}"'
    if attach:
        mix = f"mix-{i:06d}-{rng.getrandbits(32):08x}"
        data = base64.encodebytes(rng.randbytes(1536)).decode().replace("\n", "\r\n")
        body = (f"--{mix}\r\nContent-Type: {content_type}\r\n\r\n{body}\r\n--{mix}\r\nContent-Type: application/pdf; "
                f'name="report-{i + 1}.pdf"\r\nContent-Disposition: attachment; filename="report-{i + 1}.pdf"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{data}--{mix}--\r\n")
        content_type = f'multipart/mixed; boundary="{mix}"'
    date = f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year} {when:%H:%M:%S} +0000"
    head = (f"Return-Path: <{first.lower()}.{last.lower()}@partner.test>\r\n"
            f"From: {first} {last} <{first.lower()}.{last.lower()}@partner.test>\r\n"
            f"To: Bench User <bench@example.test>\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <eas-bench-{i + 1}.{rng.getrandbits(40):010x}@partner.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\n\r\n")
    roll = rng.random()
    flags = ("\\Seen", "\\Flagged") if roll < 0.05 else ("\\Seen",) if roll < 0.75 else ()
    return (head + body).encode(), when, flags


def _internaldate(when: dt.datetime) -> str:
    return f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S} +0000"'


def _tagged(imap: imaplib.IMAP4, tag: bytes) -> bytes:
    """Read lines up to the tagged reply of ``tag``; the untagged ones (EXISTS, RECENT) are not needed here."""
    while True:
        line = imap.readline()
        if not line:
            raise BenchError("Dovecot closed the connection while seeding")
        if line.startswith(tag + b" "):
            if not line[len(tag) + 1:].upper().startswith(b"OK"):
                raise BenchError(f"Dovecot refused the seeding APPEND: {line[:300]!r}")
            return line


def seed(imap: imaplib.IMAP4, count: int, progress: Progress, folder: str = "INBOX", who: str = "eas_sync") -> dict:
    """Make ``folder`` hold ``count`` messages: append the missing ones (MULTIAPPEND with LITERAL+ if offered)."""
    typ, data = imap.status(folder, "(MESSAGES)")
    have = int(data[0].split(b"MESSAGES")[1].strip(b" ()")) if typ == "OK" else -1
    if have < 0 or have > count:
        raise BenchError(f"the bench user's {folder} holds {have} messages, more than the {count:,} asked for")
    typ, caps = imap.capability()
    offered = set(caps[0].upper().split()) if typ == "OK" else set()
    multi, plus = b"MULTIAPPEND" in offered, b"LITERAL+" in offered
    if have == count:
        return {"seeded": 0, "method": "already there"}
    corpus = _Corpus()
    t0 = time.monotonic()
    n = 0
    for start in range(have, count, SEED_BATCH):
        batch = [message(corpus, i) for i in range(start, min(start + SEED_BATCH, count))]
        if plus:
            if multi:
                tag = f"S{start}".encode()
                parts = [tag + b" APPEND " + folder.encode()]
                for raw, when, flags in batch:
                    parts.append(f" ({' '.join(flags)}) {_internaldate(when)} {{{len(raw)}+}}\r\n".encode() + raw)
                imap.send(b"".join(parts) + b"\r\n")
                _tagged(imap, tag)
            else:  # LITERAL+ alone: the APPENDs go out pipelined, the replies are read after
                tags = [f"S{start + k}".encode() for k in range(len(batch))]
                imap.send(b"".join(tag + f" APPEND {folder} ({' '.join(flags)}) {_internaldate(when)} {{{len(raw)}+}}"
                                   "\r\n".encode() + raw + b"\r\n" for tag, (raw, when, flags) in zip(tags, batch)))
                for tag in tags:
                    _tagged(imap, tag)
        else:
            for raw, when, flags in batch:
                typ, reply = imap.append(folder, f"({' '.join(flags)})", _internaldate(when), raw)
                if typ != "OK":
                    raise BenchError(f"Dovecot refused an APPEND: {reply!r}")
        n += len(batch)
        rate = n / max(time.monotonic() - t0, 1e-6)
        progress.show(f"{who}: seeding {folder} over IMAP: {have + n:,}/{count:,} messages "
                      f"({rate:,.0f}/s, about {(count - have - n) / rate:.0f} s left)")
    method = "MULTIAPPEND" if plus and multi else "pipelined APPEND" if plus else "APPEND"
    return {"seeded": n, "method": method, "seconds": round(time.monotonic() - t0, 1)}


# --- the phone ------------------------------------------------------------------------------------------

class EasClient:
    """One device on one keep-alive HTTPS connection; ``post`` returns the decoded answer and its round trip."""

    def __init__(self, env: GatewayEnv, user: str, password: str, device_id: str) -> None:
        self.conn = http.client.HTTPSConnection(HOST, env.ports["https"], context=client_context(env.certs.ca_cert),
                                                timeout=300)
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.user, self.device_id = user, device_id
        self.policy_key: str | None = None
        self.bytes_in = 0
        self.decode_seconds = 0.0

    def close(self) -> None:
        self.conn.close()

    def post(self, command: str, doc: Element | None) -> tuple[Element | None, float]:
        query = urlencode({"Cmd": command, "User": self.user, "DeviceId": self.device_id, "DeviceType": "BenchPhone"})
        headers = {"Authorization": self.auth, "MS-ASProtocolVersion": VERSION, "User-Agent": "casgate-bench/1.0",
                   "Content-Type": "application/vnd.ms-sync.wbxml", "Accept-Encoding": "gzip"}
        if self.policy_key is not None:
            headers["X-MS-PolicyKey"] = self.policy_key
        body = wbxml.encode(doc) if doc is not None else b""
        t0 = time.perf_counter()
        self.conn.request("POST", f"/Microsoft-Server-ActiveSync?{query}", body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        rtt = time.perf_counter() - t0
        if response.status != 200:
            raise BenchError(f"{command} answered HTTP {response.status}: {data[:300]!r}")
        self.bytes_in += len(data)
        t1 = time.perf_counter()
        if response.getheader("Content-Encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        try:
            answer = wbxml.decode(data) if data else None
        except wbxml.WbxmlError as exc:
            raise BenchError(f"{command} answered with bad WBXML ({exc}): {data[:100]!r}") from None
        self.decode_seconds += time.perf_counter() - t1
        return answer, rtt


def _provision(client: EasClient) -> None:
    P = "Provision"
    info = Element("Settings", "DeviceInformation", [Element("Settings", "Set", [
        Element("Settings", "Model", text="Bench"), Element("Settings", "FriendlyName", text="casgate bench"),
        Element("Settings", "OS", text="Python"), Element("Settings", "UserAgent", text="casgate-bench/1.0")])])
    ask = Element(P, "Provision", [info, Element(P, "Policies", [Element(P, "Policy", [
        Element(P, "PolicyType", text="MS-EAS-Provisioning-WBXML")])])])
    key = _policy_key(client.post("Provision", ask)[0], "step 1")
    client.policy_key = key
    ack = Element(P, "Provision", [Element(P, "Policies", [Element(P, "Policy", [
        Element(P, "PolicyType", text="MS-EAS-Provisioning-WBXML"), Element(P, "PolicyKey", text=key),
        Element(P, "Status", text="1")])])])
    client.policy_key = _policy_key(client.post("Provision", ack)[0], "step 2")


def _policy_key(doc: Element | None, step: str) -> str:
    policies = doc.find("Policies") if doc is not None else None
    policy = policies.find("Policy") if policies is not None else None
    key = policy.text_of("PolicyKey") if policy is not None else None
    if key is None or policy.text_of("Status") != "1":
        raise BenchError(f"Provision {step} gave no policy key: {wbxml.to_xml(doc) if doc else 'empty answer'}")
    return key


def _inbox(client: EasClient) -> str:
    doc, _ = client.post("FolderSync", Element("FolderHierarchy", "FolderSync", [
        Element("FolderHierarchy", "SyncKey", text="0")]))
    changes = doc.find("Changes") if doc is not None else None
    for add in changes.findall("Add") if changes is not None else []:
        if add.text_of("Type") == "2":
            return add.text_of("ServerId") or ""
    raise BenchError(f"FolderSync 0 listed no Inbox: {wbxml.to_xml(doc) if doc else 'empty answer'}")


def _sync(inbox: str, key: str) -> Element:
    A, B = "AirSync", "AirSyncBase"
    options = Element(A, "Options", [Element(B, "BodyPreference", [
        Element(B, "Type", text="2"), Element(B, "TruncationSize", text=str(TRUNCATION))])])
    return Element(A, "Sync", [Element(A, "Collections", [Element(A, "Collection", [
        Element(A, "SyncKey", text=key), Element(A, "CollectionId", text=inbox),
        Element(A, "WindowSize", text=str(WINDOW)), options])])])


def _collection(doc: Element | None, what: str) -> Element:
    collections = doc.find("Collections") if doc is not None and doc.name == "Sync" else None
    collection = collections.find("Collection") if collections is not None else None
    if collection is None or collection.text_of("Status") != "1":
        raise BenchError(f"{what}: unexpected answer {wbxml.to_xml(doc, max_opaque_shown=64)[:600] if doc else ''}")
    return collection


@contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """Run the client on its own CPU (as wrk is), away from the gateway's."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0), so the peak is this benchmark's own."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


def eas_initial(env: GatewayEnv, client: EasClient, expected: int, progress: Progress, label: str) -> dict:
    """Provision, FolderSync, then the timed Sync 0 and windowed Syncs; figures of the timed part."""
    _provision(client)
    inbox = _inbox(client)
    reset = _reset_peak(env.proc.pid)
    before = _memory_mb(env.proc.pid)
    cpu0, self0 = process_cpu_seconds(env.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
    decode0, bytes0 = client.decode_seconds, client.bytes_in
    seen: set[str] = set()
    requests, truncated, rtts, key = 0, 0, [], "0"
    t0 = time.perf_counter()
    while True:
        doc, rtt = client.post("Sync", _sync(inbox, key))
        requests += 1
        rtts.append(rtt)
        collection = _collection(doc, f"Sync {requests} (key {key})")
        key = collection.text_of("SyncKey") or ""
        commands = collection.find("Commands")
        for add in commands.findall("Add") if commands is not None else []:
            body = add.find("ApplicationData")
            body = body.find("Body", "AirSyncBase") if body is not None else None
            if body is None or body.text_of("Type") != "2":
                raise BenchError(f"an Add came without an HTML body: {wbxml.to_xml(add, max_opaque_shown=64)[:600]}")
            truncated += body.text_of("Truncated") == "1"
            seen.add(add.text_of("ServerId") or "")
        if requests > 1 and collection.find("MoreAvailable") is None:
            break
        if requests % 5 == 0:
            progress.show(f"eas_sync: {label}: {len(seen):,}/{expected:,} items, {requests} Syncs")
    wall = time.perf_counter() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    gateway_cpu = process_cpu_seconds(env.proc.pid) - cpu0
    env.check_alive()
    memory = _memory_mb(env.proc.pid)
    if len(seen) != expected:
        raise BenchError(f"the initial sync brought {len(seen):,} distinct items, not {expected:,}; log {env.log}:\n"
                         f"{log_tail(env.log)}")
    client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    return {"items": len(seen), "wall_s": wall, "items_per_s": len(seen) / wall, "requests": requests,
            "rtt_sum_s": sum(rtts), "client_decode_s": client.decode_seconds - decode0, "client_cpu_s": client_cpu,
            "gateway_cpu_s": gateway_cpu, "bytes_in": client.bytes_in - bytes0, "truncated": truncated,
            "peak_rss_mb": memory.get("VmHWM"), "rss_before_mb": before.get("VmRSS"),
            "rss_after_mb": memory.get("VmRSS"), "peak_reset": reset,
            "final_key": key, "inbox": inbox}


# --- the baseline ---------------------------------------------------------------------------------------

def _uid_set(uids: list[int]) -> str:
    ordered = sorted(uids)
    if ordered[-1] - ordered[0] == len(ordered) - 1:
        return f"{ordered[0]}:{ordered[-1]}"
    return ",".join(map(str, ordered))


def imap_initial(imap: imaplib.IMAP4, expected: int) -> dict:
    """The raw IMAP equivalent of the initial sync, on a logged-in connection: timed from EXAMINE to the last FETCH."""
    t0 = time.perf_counter()
    typ, data = imap.select("INBOX", readonly=True)
    if typ != "OK":
        raise BenchError(f"EXAMINE INBOX failed on Dovecot: {data!r}")
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids = [int(u) for u in data[0].split()] if typ == "OK" and data and data[0] else []
    items = nbytes = commands = 0
    for start in range(0, len(uids), WINDOW):
        typ, data = imap.uid("FETCH", _uid_set(uids[start:start + WINDOW]),
                             "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        commands += 1
        if typ != "OK":
            raise BenchError(f"UID FETCH failed on Dovecot: {data!r}")
        for part in data:
            if isinstance(part, tuple):
                items += 1
                nbytes += len(part[1])
    wall = time.perf_counter() - t0
    imap.close()
    if items != expected:
        raise BenchError(f"raw IMAP fetched {items:,} messages, not {expected:,}")
    return {"items": items, "wall_s": wall, "items_per_s": items / wall, "requests": commands, "bytes": nbytes}


def no_change(client: EasClient, inbox: str, key: str, imap: imaplib.IMAP4, progress: Progress) -> dict:
    """Syncs with the final key, each followed by a raw IMAP STATUS round trip; round-trip times in ms."""
    sync_ms, status_ms, request = [], [], _sync(inbox, key)
    for n in range(NO_CHANGE_WARMUP + NO_CHANGE_SYNCS):
        doc, rtt = client.post("Sync", request)
        if doc is not None:  # 14.x may answer "nothing changed" with an empty body; otherwise the same key back
            collection = _collection(doc, f"no-change Sync {n + 1}")
            if collection.text_of("SyncKey") != key or collection.find("Commands") is not None:
                raise BenchError(f"no-change Sync {n + 1} reported changes: {wbxml.to_xml(doc)[:600]}")
        t0 = time.perf_counter()
        typ, data = imap.status("INBOX", "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
        status_rtt = time.perf_counter() - t0
        if typ != "OK":
            raise BenchError(f"STATUS INBOX failed on Dovecot: {data!r}")
        if n >= NO_CHANGE_WARMUP:
            sync_ms.append(rtt * 1000)
            status_ms.append(status_rtt * 1000)
        if n % 20 == 0:
            progress.show(f"eas_sync: no-change Sync {n + 1}/{NO_CHANGE_WARMUP + NO_CHANGE_SYNCS}")
    return {"sync": _percentiles(sync_ms), "status": _percentiles(status_ms),
            "sync_ms": [round(v, 3) for v in sync_ms], "status_ms": [round(v, 3) for v in status_ms]}


def logged_sync_ms(log: Path, device: str, expected: int, wait: float = 3.0) -> list[float]:
    """The gateway's own time for each Sync of ``device`` (its JSON log's "ms": the EAS handler, after
    authentication and body decoding, before the answer is encoded), once ``expected`` are logged."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if device not in line or '"Sync"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "eas" and record.get("command") == "Sync" and record.get("device") == device:
                found.append(float(record.get("ms", 0.0)))
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _percentiles(values: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return {"p50": statistics.median(values), "p90": deciles[8], "min": min(values), "max": max(values)}


# --- the run --------------------------------------------------------------------------------------------

def _login(env: GatewayEnv, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(HOST, env.dovecot.imaps_port, ssl_context=client_context(env.certs.ca_cert),
                             timeout=300)
    imap.login(user, env.users[user])
    return imap


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(env: GatewayEnv, opts: Options, progress: Progress, messages: int = DEFAULT_MESSAGES) -> dict:
    """Seed, then alternate raw IMAP and casgate initial syncs, then the no-change Syncs; the result for docs."""
    if messages < 1:
        raise BenchError("--eas-messages must be at least 1")
    rounds = max(1, min(opts.rounds, MAX_ROUNDS))
    user = next(iter(env.users))
    gateway: list[dict] = []
    baseline: list[dict] = []
    with ExitStack() as stack:
        imap = _login(env, user)
        stack.callback(imap.logout)
        seeding = seed(imap, messages, progress)
        stack.enter_context(_pinned(opts.client_cpu))
        progress.show("eas_sync: warm-up pass over the mailbox with raw IMAP (not recorded)")
        imap_initial(imap, messages)
        client = None
        for rnd in range(rounds):
            for who in (("baseline", "casgate") if rnd % 2 == 0 else ("casgate", "baseline")):
                label = f"round {rnd + 1}/{rounds}, {who}"
                if who == "baseline":
                    progress.show(f"eas_sync: {label}: raw IMAP UID FETCH of {messages:,} messages")
                    baseline.append(imap_initial(imap, messages))
                else:
                    client = EasClient(env, user, env.users[user], f"BENCH{rnd}{secrets.token_hex(6).upper()}")
                    stack.callback(client.close)
                    gateway.append(eas_initial(env, client, messages, progress, f"{label} initial sync"))
        assert client is not None
        progress.show("eas_sync: no-change Syncs")
        quiet = no_change(client, gateway[-1]["inbox"], gateway[-1]["final_key"], imap, progress)
        env.check_alive()
        initial_requests = gateway[-1]["requests"]
        logged = logged_sync_ms(env.log, client.device_id, initial_requests + NO_CHANGE_WARMUP + NO_CHANGE_SYNCS)
        if len(logged) == initial_requests + NO_CHANGE_WARMUP + NO_CHANGE_SYNCS:
            gateway[-1]["handler_s"] = sum(logged[:initial_requests]) / 1000
            quiet["handler"] = _percentiles(logged[-NO_CHANGE_SYNCS:])
    progress.clear()
    return _result(env, opts, messages, rounds, seeding, gateway, baseline, quiet)


def _result(env: GatewayEnv, opts: Options, messages: int, rounds: int, seeding: dict, gateway: list[dict],
            baseline: list[dict], quiet: dict) -> dict:
    def med(runs: list[dict], field: str) -> float:
        return statistics.median(r[field] for r in runs)

    rate, base_rate = med(gateway, "items_per_s"), med(baseline, "items_per_s")
    wall, base_wall = med(gateway, "wall_s"), med(baseline, "wall_s")
    peak = max((r["peak_rss_mb"] for r in gateway if r["peak_rss_mb"] is not None), default=None)
    sync, status = quiet["sync"], quiet["status"]
    rows = [
        {"key": "initial_rate", "metric": f"(1) initial sync of {messages:,} messages, items/s (target >= 490)",
         "casgate": rate, "baseline": base_rate, "ratio": _ratio(rate, base_rate)},
        {"key": "initial_wall", "metric": "(1) the same, wall s (ratio: baseline / casgate)",
         "casgate": wall, "baseline": base_wall, "ratio": _ratio(base_wall, wall)},
        {"key": "initial_requests", "metric": "(1) the same, Sync requests / IMAP UID FETCH commands",
         "casgate": med(gateway, "requests"), "baseline": med(baseline, "requests"), "ratio": None},
        {"key": "peak_rss", "metric": "(1) gateway peak RSS (VmHWM) over the sync, MB (target < 150)",
         "casgate": peak, "baseline": None, "ratio": None},
        {"key": "nochange_p50", "metric": "(2) no-change Sync p50, ms (target < 5); baseline IMAP STATUS",
         "casgate": sync["p50"], "baseline": status["p50"], "ratio": _ratio(status["p50"], sync["p50"])},
        {"key": "nochange_p90", "metric": "(2) no-change Sync p90, ms; baseline IMAP STATUS",
         "casgate": sync["p90"], "baseline": status["p90"], "ratio": _ratio(status["p90"], sync["p90"])},
    ]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    handler = quiet.get("handler")
    last = gateway[-1]
    scale = "" if messages == DEFAULT_MESSAGES else f" (this run: {messages:,} messages, not 10,000)"
    cpu = med(gateway, "gateway_cpu_s")
    notes = [
        f"Targets{scale}: initial sync {rate:,.0f} items/s vs >= {TARGET_RATE:,.0f}: {verdict(rate >= TARGET_RATE)}; "
        f"no-change Sync p50 {sync['p50']:.2f} ms vs < {TARGET_P50_MS:.0f} ms: {verdict(sync['p50'] < TARGET_P50_MS)}; "
        f"peak RSS {peak or 0:.0f} MB vs < {TARGET_RSS_MB:.0f} MB: "
        f"{verdict(peak is not None and peak < TARGET_RSS_MB)}.",
        f"Initial sync, medians over {rounds} round(s): gateway CPU {cpu:.1f} s ({messages / cpu:,.0f} items per "
        f"gateway CPU-second); the client's own decoding took {med(gateway, 'client_decode_s'):.2f} s of the "
        f"{wall:.1f} s wall, its CPU {med(gateway, 'client_cpu_s'):.1f} s; {med(gateway, 'bytes_in') / 2**20:.1f} MB "
        f"on the wire (gzip); {med(gateway, 'truncated'):,.0f} bodies truncated at {TRUNCATION} bytes.",
        f"Gateway RSS before the last round's sync {last['rss_before_mb'] or 0:.0f} MB, peak "
        f"{last['peak_rss_mb'] or 0:.0f} MB, after {last['rss_after_mb'] or 0:.0f} MB."
        + (f" The gateway's own log times its EAS handler (after authentication and body decoding, before "
           f"encoding and gzip): {last['handler_s']:.2f} s of the last round's {last['wall_s']:.2f} s initial sync; "
           f"no-change Sync p50 {handler['p50']:.2f} ms, p90 {handler['p90']:.2f} ms." if handler else ""),
        "Ratios are casgate / baseline for rates and baseline / casgate for times, so higher is better; "
        "latencies are client-measured round trips (request written to answer read), not server-side times."
        + ("" if all(r["peak_reset"] for r in gateway) else
           " VmHWM could not be reset here, so the peak RSS is the gateway's peak since it started."),
    ]
    return {"name": NAME, "title": TITLE, "baseline_label": "Dovecot direct (raw IMAP)",
            "intro": INTRO.format(messages=f"{messages:,}", syncs=NO_CHANGE_SYNCS, warmup=NO_CHANGE_WARMUP),
            "rows": rows, "extra_notes": notes,
            "settings": {"rounds": rounds, "seconds": "-", "connections": 1, "loop": loop_of(env.proc.pid),
                         "tls": tls_session_facts(HOST, env.ports["https"], env.certs.ca_cert),
                         "messages": messages, "window": WINDOW, "truncation": TRUNCATION, "version": VERSION,
                         "client_cpu": opts.client_cpu, "server_cpu": opts.server_cpu, "seeding": seeding},
            "raw": {"casgate": [{k: v for k, v in r.items() if k not in ("final_key", "inbox")} for r in gateway],
                    "baseline": baseline, "no_change": quiet}}
