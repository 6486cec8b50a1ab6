"""Benchmark "Direct Push at scale": thousands of held ActiveSync Pings on one gateway, their memory and latency.

2,000 users with five phones each (10,000 devices by default) get a partnership, a FolderSync and a Sync 0 of
their INBOX; then every phone opens its own connection and sends a Ping (HeartbeatInterval 600, INBOX) that
the gateway holds. A fresh gateway is measured twice: TLS terminated in the gateway (`casgate serve`) and
plain HTTP, as behind a TLS-terminating balancer (the same application with a plain site added by this
module's launcher, since the configuration has no plain HTTP listener). Memory per held Ping is the growth
of the gateway's resident memory from before the first Ping to all of them held, divided by the Pings; the
baseline is a bare aiohttp handler holding the same requests on the same loop and TLS settings. With the
Pings held, the back-end load is Dovecot's own count of the IMAP commands the gateway sends over a minute,
and latency is the time from an LMTP delivery to each of that user's Pings answering.

Two profiles (``bench/run.py --ping-profile``). "idle", the default: casgate's defaults, so the push hub keeps a
connection per waiting user in IMAP NOTIFY and IDLE, and the Pings look only when they arrive. "hook": a deployment whose Dovecot
POSTs its push notifications to the gateway (gateway/services/dovecot_push.py): no IDLE, the push hub looks every
5 minutes, the Pings every 10, and a user's mail session closes a minute after its last use, so memory is read
once those sessions have closed; the latency phase checks that the hook, not a look, woke the Pings.

``python -m bench.eas_ping_scale serve ...`` is the launcher bench/run.py starts for the plain-HTTP gateway
and the bare baseline (with ``--tracemalloc DIR``, SIGUSR1 writes a tracemalloc snapshot there).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import resource
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from gateway.activesync import wbxml
from gateway.activesync.wbxml import Element
from gateway.config import ActiveSyncConfig
from gateway.demo.dovecot import Dovecot
from gateway.demo.procs import free_port, stop_process

from .gateway_env import DOMAIN, HOST, GatewayEnv, casgate_command, config_text
from gateway.http.dovecot_push import PATH as PUSH_PATH

from .gateway_env import push_receiver_table, write_secret
from .harness import (ROOT, BenchError, Options, Progress, client_context, https_get, log_tail, process_cpu_seconds,
                      spawn)
from .https_front import loop_of

NAME = "eas_ping_scale"
TITLE = "Direct Push at scale (held Pings)"
DEFAULT_PINGS, DEFAULT_USERS = 10_000, 2_000
HEARTBEAT = 600
VERSION = "14.1"
CHANGES = 100             # LMTP deliveries, each to a different user whose phones hold Pings
CHANGE_SPACING = 0.1      # seconds between deliveries
IDLE_SECONDS = 60         # the back-end load window
SETUP_WORKERS = 48        # keep-alive connections that set the devices up
OPEN_PARALLEL = 64        # connections being opened (handshake + Ping written) at once
BUSY = 0.85               # the gateway's CPU share above which no more Pings are sent for a moment
GOAL_TLS_KB, GOAL_PLAIN_KB, GOAL_P99_S, PHP_KB = 40.0, 15.0, 2.0, 2048.0
EAS = "/Microsoft-Server-ActiveSync"

# casgate.toml's [activesync] lines of each profile besides require_provisioning = false. hook: what a deployment
# whose Dovecot calls the gateway's push hook would set (no IDLE session per waiting user, rare looks, and a
# user's mail session closed between them).
HOOK_SECRET = "push.secret"
MAIL_IDLE_CLOSE = 60
PROFILES = {
    "idle": "",
    "hook": push_receiver_table(HOOK_SECRET).removeprefix("\n[activesync]\n")
    + "push_idle = false\npush_poll_interval = 300\nping_check_interval = 600\n"
    + f"mail_idle_close = {MAIL_IDLE_CLOSE}\n",
}

# Room in the bench Dovecot for one IDLE and one store session per user plus the gateway's logins, and a
# counter of the IMAP commands its sessions finish (read with `doveadm stats dump`).
DOVECOT_TUNING = """
# bench/eas_ping_scale.py
default_client_limit = 15000
service imap {
  service_count = 0
  client_limit = 100
  process_limit = 150
}
service imap-login {
  client_limit = 6000
  process_min_avail = 2
}
metric casgate_bench_imap {
  filter = event=imap_command_finished
  group_by = cmd_name
}
"""

INTRO = (
    "{users:,} users with {per} phones each on one gateway process pinned to one CPU, over loopback. Each phone "
    "(EAS {version}, no provisioning) has a partnership, a FolderSync and a Sync 0 of its empty INBOX, made "
    "beforehand through a throwaway gateway. Then a fresh gateway: every phone opens its own connection (raw "
    "HTTP/1.1 over asyncio streams from one client process on the other CPU, WBXML from casgate's codec) and "
    "sends Ping (HeartbeatInterval {heartbeat}, INBOX), which the gateway holds; {push} Memory per held Ping = "
    "growth of the gateway's VmRSS (and Pss, from smaps_rollup) from before the first Ping (after one warm-up "
    "device) to all {pings:,} held{settled}, over {pings:,}: so it includes the client connection and every "
    "per-user cost ({per_user}, the auth cache). TLS: `casgate serve` terminating TLS itself; plain: the same "
    "application with a plain-HTTP site, as behind a TLS-terminating balancer (the configuration has no such listener, "
    "so bench/eas_ping_scale.py's launcher adds it). Baseline: a bare aiohttp handler that reads the "
    "request and waits, on the same loop and TLS settings, holding the same number of Pings; the PHP "
    "servers that hold a process per Ping need about 2 MB per device. Latency: {changes} LMTP deliveries, "
    "{spacing:g} s apart, each to a different user; from the end of the message data to each of that "
    "user's Ping answers (Status 2). Back-end load: Dovecot's count of finished IMAP commands over "
    "{idle} s with every Ping held, per user per minute.")
PUSH_TEXT = {
    "idle": ("its push hub logs each user in to Dovecot (IMAP over TLS) on a connection that asks for NOTIFY events "
             "(casgate's default where the back end offers NOTIFY, as Dovecot does) and waits in IDLE with INBOX "
             "selected; each Ping looks at its folder (STATUS, over the user's mail session) when it arrives, and "
             "makes no periodic looks of its own while the user's NOTIFY is on (`ping_check_interval`, 30 s, "
             "applies only without it)."),
    "hook": ("profile \"hook\": the bench Dovecot runs casgate's push hook (push_notification, Lua driver, the script "
             "of gateway/services/dovecot_push.py), which POSTs each change to the gateway's /casgate/dovecot-push, "
             "and the gateway is set as such a deployment would be: `[activesync] push_idle = false` (no IDLE "
             "session per waiting user), `push_poll_interval = 300`, `ping_check_interval = 600`, "
             "`mail_idle_close = 60`. A Ping's arrival looks at its folder (STATUS) over the user's mail session, "
             "which then closes after a minute unused."),
}


# --- the phones --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Phone:
    user: str
    device: str
    auth: str
    inbox: str = ""
    answered: float | None = None
    status: str | None = None


@dataclass
class Target:
    """Where the phones connect: the port, and the TLS context when TLS is on."""

    port: int
    tls: ssl.SSLContext | None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port, ssl=self.tls,
                                             server_hostname=HOST if self.tls else None)


def _request(phone: Phone, port: int, command: str, doc: Element) -> bytes:
    body = wbxml.encode(doc)
    query = urlencode({"Cmd": command, "User": phone.user, "DeviceId": phone.device, "DeviceType": "BenchPhone"})
    return (f"POST {EAS}?{query} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: {phone.auth}\r\n"
            f"MS-ASProtocolVersion: {VERSION}\r\nContent-Type: application/vnd.ms-sync.wbxml\r\n"
            f"User-Agent: casgate-bench/1.0\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return status, body


async def _post(reader, writer, phone: Phone, port: int, command: str, doc: Element) -> Element | None:
    """The decoded answer; None for an empty one (a Sync with nothing to say, from 14.0 on)."""
    writer.write(_request(phone, port, command, doc))
    status, body = await _response(reader)
    if status != 200:
        raise BenchError(f"{command} for {phone.user}/{phone.device} answered HTTP {status}: {body[:200]!r}")
    return wbxml.decode(body) if body else None


def _ping(inbox: str) -> Element:
    return Element("Ping", "Ping", [Element("Ping", "HeartbeatInterval", text=str(HEARTBEAT)),
                                    Element("Ping", "Folders", [Element("Ping", "Folder", [
                                        Element("Ping", "Id", text=inbox), Element("Ping", "Class", text="Email")])])])


def _sync(inbox: str, key: str) -> Element:
    A = "AirSync"
    return Element(A, "Sync", [Element(A, "Collections", [Element(A, "Collection", [
        Element(A, "SyncKey", text=key), Element(A, "CollectionId", text=inbox),
        Element(A, "WindowSize", text="100")])])])


def _collection(doc: Element | None, phone: Phone, what: str) -> Element | None:
    if doc is None:
        return None
    collection = doc.find("Collections")
    collection = collection.find("Collection") if collection is not None else None
    if collection is None or collection.text_of("Status") != "1":
        raise BenchError(f"{what} for {phone.user}/{phone.device} failed: {wbxml.to_xml(doc)[:300]}")
    return collection


async def set_up(reader, writer, phone: Phone, port: int) -> None:
    """FolderSync 0 and Sync 0 of the INBOX: what a Ping needs to know the folder and compare its counters."""
    H = "FolderHierarchy"
    doc = await _post(reader, writer, phone, port, "FolderSync", Element(H, "FolderSync", [
        Element(H, "SyncKey", text="0")]))
    changes = doc.find("Changes") if doc is not None else None
    adds = changes.findall("Add") if changes is not None else []
    phone.inbox = next((a.text_of("ServerId") or "" for a in adds if a.text_of("Type") == "2"), "")
    if not phone.inbox:
        raise BenchError(f"FolderSync for {phone.user} listed no INBOX")
    if _collection(await _post(reader, writer, phone, port, "Sync", _sync(phone.inbox, "0")), phone, "Sync 0") is None:
        raise BenchError(f"Sync 0 for {phone.user}/{phone.device} answered with an empty body")


async def catch_up(reader, writer, phone: Phone, port: int) -> None:
    """Sync the INBOX afresh to its end, so that the phone's next Ping has nothing owed (after a delivery)."""
    collection = _collection(await _post(reader, writer, phone, port, "Sync", _sync(phone.inbox, "0")), phone, "Sync 0")
    key = collection.text_of("SyncKey") or "" if collection is not None else ""
    while True:
        collection = _collection(await _post(reader, writer, phone, port, "Sync", _sync(phone.inbox, key)), phone,
                                 f"Sync {key}")
        if collection is None or collection.find("MoreAvailable") is None:
            return
        key = collection.text_of("SyncKey") or ""


async def for_each(target: Target, phones: list[Phone], step, progress: Progress, label: str) -> None:
    """``step(reader, writer, phone, port)`` for every phone, over a few keep-alive connections."""
    todo, done = deque(phones), [0]

    async def worker() -> None:
        reader, writer = await target.open()
        try:
            while todo:
                await step(reader, writer, todo.popleft(), target.port)
                done[0] += 1
        finally:
            writer.close()

    async def ticker() -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            rate = done[0] / max(time.monotonic() - t0, 1e-6)
            progress.show(f"{NAME}: {label}: {done[0]:,}/{len(phones):,} devices ({rate:,.0f}/s)")

    tick = asyncio.ensure_future(ticker())
    try:
        await asyncio.gather(*(worker() for _ in range(min(SETUP_WORKERS, len(phones)))))
    finally:
        tick.cancel()


class Holder:
    """Opens one connection per phone, sends its Ping and notes when (and how) it is answered."""

    def __init__(self, target: Target, server_pid: int) -> None:
        self.target, self.server_pid = target, server_pid
        self.writers: list[asyncio.StreamWriter] = []
        self.waits: list[asyncio.Task] = []
        self.errors: list[str] = []
        self.sent = 0
        self.answered: dict[str, list[Phone]] = {}

    async def _one(self, phone: Phone) -> None:
        try:
            reader, writer = await self.target.open()
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(f"connect: {exc}")
            return
        self.writers.append(writer)
        writer.write(_request(phone, self.target.port, "Ping", _ping(phone.inbox)))
        self.sent += 1
        self.waits.append(asyncio.ensure_future(self._answer(phone, reader)))

    async def _answer(self, phone: Phone, reader: asyncio.StreamReader) -> None:
        try:
            status, body = await _response(reader)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        phone.answered = time.monotonic()
        if status != 200:
            phone.status = f"HTTP {status}"
        else:
            phone.status = wbxml.decode(body).text_of("Status") if body else "empty"
        self.answered.setdefault(phone.user, []).append(phone)

    async def hold(self, phones: list[Phone], progress: Progress, label: str) -> None:
        t0 = mark = time.monotonic()
        cpu = process_cpu_seconds(self.server_pid)
        for n in range(0, len(phones), OPEN_PARALLEL):
            await asyncio.gather(*(self._one(p) for p in phones[n:n + OPEN_PARALLEL]))
            while (now := time.monotonic()) - mark >= 0.2:
                # Pace on the server's CPU (over at least 0.2 s: /proc counts in 10 ms ticks): a burst faster
                # than it can take would only pile up its back-end logins until they time out.
                share = (process_cpu_seconds(self.server_pid) - cpu) / (now - mark)
                mark, cpu = now, process_cpu_seconds(self.server_pid)
                if share < BUSY:
                    break
                await asyncio.sleep(0.2)
            done = min(n + OPEN_PARALLEL, len(phones))
            progress.show(f"{NAME}: {label}: {done:,}/{len(phones):,} Pings sent "
                          f"({done / (time.monotonic() - t0):,.0f}/s), {len(self.errors)} errors")

    def early(self) -> list[str]:
        return [f"{p.user}/{p.device}: {p.status}" for ps in self.answered.values() for p in ps]

    def close(self) -> None:
        for task in self.waits:
            task.cancel()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


# --- the measurements --------------------------------------------------------------------------------------

def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] = int(value.split()[0])
    except OSError:
        pass
    return out


async def settled_memory(pid: int, progress: Progress, label: str, limit: float = 90.0) -> dict[str, int]:
    """The process's memory once it has finished taking the Pings in: VmRSS moved less than 1% (and 1 MB) over
    five one-second samples, and the process used under half its CPU over the last of them."""
    samples: list[dict[str, int]] = []
    deadline = time.monotonic() + limit
    cpu = process_cpu_seconds(pid)
    while True:
        await asyncio.sleep(1.0)
        samples.append(memory_kb(pid))
        cpu, busy = process_cpu_seconds(pid), process_cpu_seconds(pid) - cpu
        last = [s["VmRSS"] for s in samples[-5:]]
        steady = len(last) == 5 and max(last) - min(last) < max(1024, max(last) // 100)
        if (steady and busy < 0.5) or time.monotonic() > deadline:
            _snapshot(pid)
            return {**samples[-1], "settle_s": len(samples)}
        progress.show(f"{NAME}: {label}: waiting for the gateway to settle (VmRSS {last[-1] / 1024:,.0f} MB, "
                      f"CPU {busy:.0%})")


def imap_command_counts(conf: Path) -> dict[str, int]:
    """Dovecot's running count of finished IMAP commands, in all and by name."""
    out = subprocess.run(["doveadm", "-c", str(conf), "stats", "dump"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise BenchError(f"doveadm stats dump failed: {out.stderr.strip()[:300]}")
    counts = {}
    for line in out.stdout.splitlines()[1:]:
        name, _, rest = line.partition("\t")
        if name.startswith("casgate_bench_imap"):
            counts[name.removeprefix("casgate_bench_imap").lstrip("_") or "all"] = int(rest.split("\t")[1])
    return counts


async def _smtp_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readuntil(b"\r\n")
        if line[3:4] != b"-":
            if line[:1] not in (b"2", b"3"):
                raise BenchError(f"LMTP refused: {line[:200]!r}")
            return line


async def deliver(lmtp_port: int, users: list[str], spacing: float, progress: Progress) -> dict[str, float]:
    """One message to each user by LMTP, ``spacing`` s apart; when each message's data ended."""
    reader, writer = await asyncio.open_connection(HOST, lmtp_port)
    sent: dict[str, float] = {}
    try:
        await _smtp_reply(reader)
        writer.write(b"LHLO bench.test\r\n")
        await _smtp_reply(reader)
        for n, user in enumerate(users):
            for line in (b"MAIL FROM:<push@partner.test>", f"RCPT TO:<{user}>".encode(), b"DATA"):
                writer.write(line + b"\r\n")
                await _smtp_reply(reader)
            message = (f"From: Push Bench <push@partner.test>\r\nTo: <{user}>\r\nSubject: change {n + 1}\r\n"
                       f"Message-ID: <push-{n + 1}.{secrets.token_hex(6)}@partner.test>\r\n\r\nNew mail.\r\n.\r\n")
            sent[user] = time.monotonic()
            writer.write(message.encode())
            await _smtp_reply(reader)
            progress.show(f"{NAME}: delivered {n + 1}/{len(users)} messages by LMTP")
            await asyncio.sleep(spacing)
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()
    return sent


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the processes -----------------------------------------------------------------------------------------

def start_dovecot(stack: ExitStack, work: Path, env: GatewayEnv, users: dict[str, str],
                  progress: Progress, push_url: str = "", push_secret: str = "") -> Dovecot:
    """The bench Dovecot; with ``push_url`` it POSTs its push notifications there (casgate's push hook)."""
    progress.show(f"{NAME}: starting a Dovecot for {len(users):,} users")
    dovecot = Dovecot(work / "dovecot", env.certs.cert, env.certs.key, DOMAIN, users, push_url=push_url,
                      push_ca=env.certs.ca_cert if push_url else None, push_secret=push_secret)
    stack.callback(dovecot.stop)
    try:
        dovecot.start()
    except RuntimeError as exc:
        raise BenchError(f"Dovecot did not start: {exc}") from None
    conf = dovecot.root / "dovecot.conf"
    _wait_stats(conf, dovecot)  # a master still starting up would die of the SIGHUP below
    conf.write_text(conf.read_text() + DOVECOT_TUNING)
    assert dovecot.proc is not None
    os.kill(dovecot.proc.pid, signal.SIGHUP)  # reload: the listeners stay, the new limits and metric apply
    time.sleep(1.0)
    _wait_stats(conf, dovecot)
    return dovecot


def _wait_stats(conf: Path, dovecot: Dovecot, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if dovecot.proc is None or dovecot.proc.poll() is not None:
            raise BenchError(f"the bench Dovecot stopped; log {dovecot.log}:\n{log_tail(dovecot.log)}")
        try:
            imap_command_counts(conf)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


async def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with status {proc.returncode}; log {log}:\n{log_tail(log)}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listens on port {port} after {timeout:.0f} s; log {log}:\n"
                                 f"{log_tail(log)}") from None
            await asyncio.sleep(0.2)


@dataclass
class Server:
    proc: subprocess.Popen
    log: Path
    port: int
    tls: bool
    kind: str = "casgate"
    facts: dict = field(default_factory=dict)


# PING_SCALE_TRACE=DIR: the plain-HTTP gateway traces its allocations (tracemalloc, PING_SCALE_FRAMES frames) and
# writes a snapshot to DIR at each settled memory reading, for finding where a held Ping's memory goes.
TRACE = os.environ.get("PING_SCALE_TRACE", "")
_traced: set[int] = set()


def _snapshot(pid: int) -> None:
    if pid in _traced:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(5)  # the snapshot is written synchronously by the server; give it time


async def start_server(stack: ExitStack, work: Path, opts: Options, kind: str, tls: bool, config: Path,
                       https_port: int, env: GatewayEnv) -> Server:
    """``casgate serve`` (kind casgate, TLS), the launcher's plain-HTTP gateway, or the bare baseline."""
    log = work / f"{kind}-{'tls' if tls else 'plain'}.log"
    port = https_port if (kind == "casgate" and tls) else free_port(HOST)
    if kind == "casgate" and tls:
        cmd = [*casgate_command(), "serve", "-c", str(config)]
    else:
        cmd = [sys.executable, "-m", "bench.eas_ping_scale", "serve", "--port", str(port)]
        cmd += ["--config", str(config)] if kind == "casgate" else ["--bare"]
        if tls:
            cmd += ["--cert", str(env.certs.cert), "--key", str(env.certs.key)]
        if TRACE and kind == "casgate":
            cmd += ["--tracemalloc", TRACE]
    proc = spawn(cmd, opts.server_cpu, log, cwd=ROOT)
    stack.callback(stop_process, proc)
    await _wait_listening(port, proc, log)
    if TRACE and kind == "casgate" and not tls:
        _traced.add(proc.pid)
    return Server(proc, log, port, tls, kind)


# --- the run -----------------------------------------------------------------------------------------------

def _close_after(hook: bool) -> float:
    """Seconds a user's mail session stays open after its last use in the profile (casgate's default unless hook)."""
    return MAIL_IDLE_CLOSE if hook else ActiveSyncConfig().mail_idle_close


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        raise BenchError(f"{need:,} open files are needed but the hard limit is {hard:,} (ulimit -Hn)")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(env: GatewayEnv, opts: Options, progress: Progress, pings: int = DEFAULT_PINGS,
        users: int = DEFAULT_USERS, profile: str = "idle") -> dict:
    if not 1 <= users <= pings:
        raise BenchError(f"--ping-users must be between 1 and --pings (got {users} users for {pings} Pings)")
    if profile not in PROFILES:
        raise BenchError(f"--ping-profile must be one of {', '.join(PROFILES)} (got {profile!r})")
    _raise_nofile(pings + 1000)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {opts.client_cpu})
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(_run(env, opts, progress, pings, users, profile))
    finally:
        os.sched_setaffinity(0, before)


async def _run(env: GatewayEnv, opts: Options, progress: Progress, pings: int, nusers: int, profile: str) -> dict:
    t_start = time.monotonic()
    work = env.workdir / NAME
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o755)
    names = [f"push{i:05d}@{DOMAIN}" for i in range(nusers)]
    passwords = {name: secrets.token_urlsafe(12) for name in [*names, f"pushwarm@{DOMAIN}"]}
    phones = [Phone(names[i % nusers], f"PS{i % nusers:05d}D{i // nusers}", _basic(names[i % nusers], passwords))
              for i in range(pings)]
    warm = Phone(f"pushwarm@{DOMAIN}", "PSWARM", _basic(f"pushwarm@{DOMAIN}", passwords))
    result: dict = {"pings": pings, "users": nusers, "profile": profile}
    hook = profile == "hook"
    with ExitStack() as stack:
        https_port = free_port(HOST)
        # The hook posts to the TLS listener, which the plain-HTTP gateway of this module's launcher serves too.
        push_url = f"https://{HOST}:{https_port}{PUSH_PATH}" if hook else ""
        secret = write_secret(work / HOOK_SECRET) if hook else ""
        dovecot = start_dovecot(stack, work, env, passwords, progress, push_url, secret)
        conf = dovecot.root / "dovecot.conf"
        ports = {"https": https_port, **{k: free_port(HOST) for k in ("imaps", "imap", "pop3s", "pop3")}}
        config = work / "casgate.toml"
        config.write_text(config_text(ports, env.certs, dovecot.imaps_port,
                                      tables="\n[activesync]\nrequire_provisioning = false\n" + PROFILES[profile]))
        (work / "users.toml").write_text("".join(f'[[user]]\naddress = "{u}"\nname = "Push {u[4:9]}"\n'
                                                 for u in passwords))
        tls_target = client_context(env.certs.ca_cert)

        progress.show(f"{NAME}: starting a gateway to set {pings:,} devices up")
        with ExitStack() as setup_stack:
            setup = await start_server(setup_stack, work, opts, "casgate", True, config, https_port, env)
            t0 = time.monotonic()
            # Each user's first device alone first: two first FolderSyncs of one user at once would race
            # for the folder ids (see the report of this benchmark).
            for part in ([warm, *phones[:nusers]], phones[nusers:]):
                await for_each(Target(setup.port, tls_target), part, set_up, progress,
                               "setting devices up (FolderSync, Sync 0)")
            result["setup_s"] = round(time.monotonic() - t0, 1)

        for tls in (True, False):
            what, key = ("TLS", "tls") if tls else ("plain HTTP", "plain")
            with ExitStack() as run_stack:
                progress.show(f"{NAME}: {what}: bare aiohttp baseline")
                bare = await start_server(run_stack, work, opts, "bare", tls, config, https_port, env)
                result[f"bare_{key}"] = await _measure_hold(
                    bare, Target(bare.port, tls_target if tls else None), phones, progress, f"{what} baseline")
            with ExitStack() as run_stack:
                progress.show(f"{NAME}: {what}: starting a fresh gateway")
                server = await start_server(run_stack, work, opts, "casgate", tls, config, https_port, env)
                target = Target(server.port, tls_target if tls else None)
                reader, writer = await target.open()  # warm-up: one device's Ping, woken by a delivery
                writer.write(_request(warm, server.port, "Ping", _ping(warm.inbox)))
                await asyncio.sleep(1.0)
                await deliver(dovecot.lmtp_port, [warm.user], 0, progress)
                await asyncio.wait_for(_response(reader), 30)
                writer.close()
                await asyncio.sleep(2.0)
                picked = _spread(names)
                result[key] = await _measure_hold(
                    server, target, phones, progress, f"{what} gateway", dovecot=dovecot, conf=conf, idle=tls,
                    pick=picked, first=nusers, sessions_close=_close_after(hook) * 1.5 + 5,
                    hook_metrics=(https_port, env.certs.ca_cert) if hook else None)
                result[key]["loop"] = loop_of(server.proc.pid)
                # The phones that just got mail start the next round with nothing owed, as a phone does.
                await for_each(target, [warm, *(p for p in phones if p.user in set(picked))], catch_up, progress,
                               "syncing the new messages")
                if server.proc.poll() is not None:
                    raise BenchError(f"casgate exited during the run; log {server.log}:\n{log_tail(server.log)}")
        result["dovecot_warnings"] = [line for line in dovecot.log.read_text(errors="replace").splitlines()
                                      if "Warning" in line and "SIGHUP" not in line][:5]
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    progress.clear()
    return _result(opts, result)


def _basic(user: str, passwords: dict[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user}:{passwords[user]}".encode()).decode()


def _spread(names: list[str]) -> list[str]:
    step = max(1, len(names) // CHANGES)
    return names[::step][:CHANGES]


async def _measure_hold(server: Server, target: Target, phones: list[Phone], progress: Progress, label: str, *,
                        dovecot: Dovecot | None = None, conf: Path | None = None, idle: bool = False,
                        pick: list[str] | None = None, first: int = 0, sessions_close: float = 0,
                        hook_metrics: tuple[int, Path] | None = None) -> dict:
    """Memory before and with every Ping held; with ``idle``, the back-end load; with ``pick``, the latency.
    ``sessions_close``: seconds to wait after the last Ping before reading its memory, for the users' mail
    sessions to close; ``hook_metrics``: the (HTTPS port, CA) of the gateway's /metrics, whose count of accepted
    push notifications must rise with the deliveries."""
    pid = server.proc.pid
    for phone in phones:
        phone.answered = phone.status = None
    before = await settled_memory(pid, progress, f"{label}, before")
    holder = Holder(target, pid)
    out: dict = {"before_kb": before}
    try:
        t0 = time.monotonic()
        counts_h0 = imap_command_counts(conf) if conf is not None else {}
        if first and first < len(phones):
            # Each user's first phone, then the others: what a user costs, and what one more Ping costs.
            await holder.hold(phones[:first], progress, label)
            out["first_kb"] = await settled_memory(pid, progress, f"{label}, first phone of each user held")
            await holder.hold(phones[first:], progress, label)
        else:
            await holder.hold(phones, progress, label)
        out["hold_s"] = round(time.monotonic() - t0, 1)
        if sessions_close and dovecot is not None:
            out["held_open_kb"] = await settled_memory(pid, progress, f"{label}, {len(phones):,} held")
            out["held_open_kb"]["imap_sessions"] = _sessions(dovecot.imaps_port)
            # Until every session the Pings' first looks opened has been closed (mail_idle_close after its last
            # use, by a sweep every half of it); the Pings' own looks then open (and close) a few again.
            until = time.monotonic() + sessions_close - out["held_open_kb"]["settle_s"]
            while (left := until - time.monotonic()) > 0:
                progress.show(f"{NAME}: {label}: waiting {left:.0f} s for the users' mail sessions to close "
                              f"({_sessions(dovecot.imaps_port):,} open)")
                await asyncio.sleep(min(1.0, left))
        held = await settled_memory(pid, progress, f"{label}, {len(phones):,} held")
        if dovecot is not None:
            held["imap_sessions"] = _sessions(dovecot.imaps_port)
        out["held_kb"] = held
        if counts_h0 and idle:
            # What taking the Pings in cost the back end: with sessions_close, up to their sessions' LOGOUT.
            counts_h1 = imap_command_counts(conf)
            out["hold_commands"] = {k: v - counts_h0.get(k, 0) for k, v in counts_h1.items()
                                    if v - counts_h0.get(k, 0)}
        early = holder.early()
        if holder.errors or early:
            bad = len(holder.errors) + len(early)
            out["errors"] = (holder.errors + early)[:10]
            if bad > len(phones) // 100:
                raise BenchError(f"{label}: {bad:,} of {len(phones):,} Pings failed or ended early, e.g. "
                                 f"{(holder.errors + early)[:3]}; log {server.log}:\n{log_tail(server.log)}")
        out["held"] = holder.sent - len(early)
        if idle and conf is not None:
            counts0, cpu0, t1 = imap_command_counts(conf), process_cpu_seconds(pid), time.monotonic()
            while (left := IDLE_SECONDS - (time.monotonic() - t1)) > 0:
                progress.show(f"{NAME}: {label}: counting back-end IMAP commands, {left:.0f} s left")
                await asyncio.sleep(min(1.0, left))
            counts1, minutes = imap_command_counts(conf), (time.monotonic() - t1) / 60
            out["idle"] = {"minutes": round(minutes, 2),
                           "gateway_cpu_s": round(process_cpu_seconds(pid) - cpu0, 2),
                           "commands": {k: v - counts0.get(k, 0) for k, v in counts1.items()
                                        if v - counts0.get(k, 0)}}
        if dovecot is not None and pick:
            pushed0 = await _notifications(*hook_metrics) if hook_metrics else {}
            sent = await deliver(dovecot.lmtp_port, pick, CHANGE_SPACING, progress)
            owed = sum(1 for p in phones if p.user in sent)
            deadline = time.monotonic() + 30
            while sum(len(holder.answered.get(u, [])) for u in sent) < owed and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            answers = [p for u in sent for p in holder.answered.get(u, [])]
            latencies = [p.answered - sent[p.user] for p in answers if p.status == "2"]
            firsts = [min(p.answered for p in holder.answered[u]) - sent[u] for u in sent if holder.answered.get(u)]
            out["latency"] = {"answers": len(latencies), "owed": owed, "users": len(sent),
                              "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
                              "max": max(latencies, default=None), "first_p50": _percentile(firsts, 0.5),
                              "first_p99": _percentile(firsts, 0.99),
                              "statuses": sorted({p.status or "" for p in answers})}
            if hook_metrics:
                pushed1 = await _notifications(*hook_metrics)
                pushed = {k: v - pushed0.get(k, 0) for k, v in pushed1.items()}
                out["latency"]["notifications"] = pushed
                if pushed.get("accepted", 0) < len(sent):
                    raise BenchError(f"{label}: {len(sent)} deliveries but the gateway accepted "
                                     f"{pushed.get('accepted', 0)} push notifications ({pushed}); the Dovecot log "
                                     f"{dovecot.log}:\n{log_tail(dovecot.log)}")
    finally:
        holder.close()
    return out


def _sessions(port: int) -> int:
    """Established TCP connections to ``port`` on loopback (the gateway's IMAP sessions to the bench Dovecot)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].rpartition(":")[2], 16) == port:
            count += 1
    return count


async def _notifications(port: int, ca_cert: Path) -> dict[str, int]:
    """casgate's count of Dovecot's push notifications by result (accepted, refused, bad, ignored), from /metrics."""
    status, body = await asyncio.to_thread(https_get, f"https://{HOST}:{port}/metrics", ca_cert, 30.0)
    if status != 200:
        raise BenchError(f"/metrics answered HTTP {status}")
    found = re.findall(r'^casgate_dovecot_push_notifications_total\{result="(\w+)"\} (\S+)$',
                       body.decode(errors="replace"), re.M)
    return {result: int(float(value)) for result, value in found}


def _per_ping(m: dict, pings: int, key: str = "VmRSS") -> float | None:
    if not m or key not in m.get("held_kb", {}) or key not in m.get("before_kb", {}):
        return None
    return (m["held_kb"][key] - m["before_kb"][key]) / pings * 1.024  # KiB -> KB (1000 bytes)


def _result(opts: Options, r: dict) -> dict:
    pings, users = r["pings"], r["users"]
    per = pings // users
    tls, plain = r["tls"], r["plain"]
    rows = []

    def mem_row(key: str, metric: str, ours: dict, bare: dict, field_: str = "VmRSS") -> None:
        a, b = _per_ping(ours, pings, field_), _per_ping(bare, pings, field_)
        rows.append({"key": key, "metric": metric, "casgate": a, "baseline": b,
                     "ratio": round(b / a, 3) if a and b else None})

    mem_row("rss_tls", f"KB of RSS per held Ping, TLS in the gateway (goal < {GOAL_TLS_KB:.0f})", tls, r["bare_tls"])
    mem_row("pss_tls", "KB of Pss per held Ping, TLS in the gateway", tls, r["bare_tls"], "Pss")
    mem_row("rss_plain", f"KB of RSS per held Ping, plain HTTP behind a balancer (goal < {GOAL_PLAIN_KB:.0f})",
            plain, r["bare_plain"])
    mem_row("pss_plain", "KB of Pss per held Ping, plain HTTP", plain, r["bare_plain"], "Pss")
    for key, m in (("tls", tls), ("plain", plain)):
        lat = m.get("latency") or {}
        for q in ("p50", "p99"):
            v = lat.get(q)
            rows.append({"key": f"latency_{q}_{key}", "metric": f"delivery to Ping answer {q}, ms, "
                         f"{'TLS' if key == 'tls' else 'plain'}" + (f" (goal p99 < {GOAL_P99_S * 1000:.0f})"
                                                                    if q == "p99" else ""),
                         "casgate": v * 1000 if v is not None else None, "baseline": None, "ratio": None})
    idle = tls.get("idle") or {}
    commands = idle.get("commands", {})
    per_user_min = commands.get("all", 0) / users / idle["minutes"] if idle else None
    rows.append({"key": "imap_per_user_min", "metric": "IMAP commands per user per minute while idle",
                 "casgate": per_user_min, "baseline": None, "ratio": None})
    hook = r.get("profile") == "hook"
    steady = _hook_steady(tls.get("hold_commands") or {}, users) if hook else None
    if steady:
        rows.append({"key": "imap_per_user_min_steady", "metric": "IMAP commands per user per minute, steady "
                     "(a look every 300 s and every 600 s, at each arrival look's measured cost)",
                     "casgate": steady["per_user_min"], "baseline": None, "ratio": None})
    rows.append({"key": "rss_held_mb", "metric": f"gateway RSS with {pings:,} Pings held, MB (TLS)",
                 "casgate": tls["held_kb"]["VmRSS"] / 1024, "baseline": r["bare_tls"]["held_kb"]["VmRSS"] / 1024,
                 "ratio": None})
    for key, m in (("tls", tls), ("plain", plain)):
        if "first_kb" not in m:
            continue
        user_kb = (m["first_kb"]["VmRSS"] - m["before_kb"]["VmRSS"]) * 1.024 / users
        more_kb = (m["held_kb"]["VmRSS"] - m["first_kb"]["VmRSS"]) * 1.024 / (pings - users) if pings > users else None
        what = "TLS" if key == "tls" else "plain"
        rows.append({"key": f"first_{key}", "metric": f"KB of RSS for a user's first Ping (with the user's back-end "
                     f"sessions), {what}", "casgate": user_kb, "baseline": None, "ratio": None})
        rows.append({"key": f"more_{key}", "metric": f"KB of RSS for each further Ping of the same user, {what}",
                     "casgate": more_kb, "baseline": None, "ratio": None})
    rss_tls, rss_plain = _per_ping(tls, pings), _per_ping(plain, pings)
    p99 = (tls.get("latency") or {}).get("p99")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    by_name = ", ".join(f"{k} {v / users / idle['minutes']:.2f}" for k, v in sorted(commands.items()) if k != "all")
    notes = [
        f"Goals: TLS {rss_tls or 0:.1f} KB vs < {GOAL_TLS_KB:.0f}: {verdict(bool(rss_tls) and rss_tls < GOAL_TLS_KB)};"
        f" plain {rss_plain or 0:.1f} KB vs < {GOAL_PLAIN_KB:.0f}: "
        f"{verdict(bool(rss_plain) and rss_plain < GOAL_PLAIN_KB)}; p99 {(p99 or 0) * 1000:.0f} ms vs < "
        f"{GOAL_P99_S * 1000:.0f}: {verdict(p99 is not None and p99 < GOAL_P99_S)}. Against about "
        f"{PHP_KB:,.0f} KB per device for a process-per-Ping PHP server that is "
        f"{PHP_KB / rss_tls if rss_tls else 0:,.0f}x (TLS) and {PHP_KB / rss_plain if rss_plain else 0:,.0f}x "
        "(plain) less.",
        f"{pings:,} Pings from {users:,} users ({per} devices each) held: TLS {tls.get('held', 0):,}, plain "
        f"{plain.get('held', 0):,}; sending them took {tls.get('hold_s')} s (TLS) and {plain.get('hold_s')} s "
        f"(plain), paced on the gateway's CPU. Gateway RSS before/held: TLS "
        f"{tls['before_kb']['VmRSS'] / 1024:.0f}/{tls['held_kb']['VmRSS'] / 1024:.0f} MB, plain "
        f"{plain['before_kb']['VmRSS'] / 1024:.0f}/{plain['held_kb']['VmRSS'] / 1024:.0f} MB.",
    ]
    if hook:
        notes.append(_hook_note(r, steady))
    else:
        parts = [f"{what} {m['held_open_kb']['VmRSS'] / 1024:.0f} MB right after the last Ping "
                 f"({m['held_open_kb'].get('imap_sessions', 0):,} IMAP sessions open), {m['held_kb']['VmRSS'] / 1024:.0f}"
                 f" MB {_close_after(False) * 1.5 + 5:.0f} s later, the table's figure "
                 f"({m['held_kb'].get('imap_sessions', 0):,} open)" for what, m in (("TLS", tls), ("plain", plain))
                 if "held_open_kb" in m]
        if parts:
            notes.append("Gateway RSS: " + "; ".join(parts) + ". The users' mail sessions (opened by each Ping's "
                         "first look) close after `mail_idle_close` (120 s, the default); their NOTIFY connections "
                         "stay, and the Pings make no looks of their own while NOTIFY is on.")
    if idle:
        notes.append(f"Back-end load over {idle['minutes'] * 60:.0f} s with every Ping held: "
                     f"{commands.get('all', 0):,} IMAP commands for {users:,} users ({by_name or 'none'} per user per "
                     f"minute); the gateway used {idle['gateway_cpu_s']:.1f} CPU-s "
                     f"({idle['gateway_cpu_s'] / (idle['minutes'] * 60):.1%} of its CPU).")
    for key, m in (("TLS", tls), ("plain", plain)):
        lat = m.get("latency") or {}
        if lat:
            notes.append(f"Latency ({key}): {lat['answers']} of {lat['owed']} Pings of the {lat['users']} users "
                         f"written to answered with Status 2 (statuses seen: {', '.join(lat['statuses'])}); "
                         f"first device of each user p50 {(lat['first_p50'] or 0) * 1000:.0f} ms, p99 "
                         f"{(lat['first_p99'] or 0) * 1000:.0f} ms; slowest {(lat['max'] or 0) * 1000:.0f} ms.")
    if r.get("dovecot_warnings"):
        notes.append("Dovecot warned: " + " | ".join(r["dovecot_warnings"]))
    profile = r.get("profile", "idle")
    return {"name": NAME if profile == "idle" else f"{NAME}_{profile}",
            "title": TITLE if profile == "idle" else f"{TITLE}, {profile} profile",
            "baseline_label": "bare aiohttp holding the requests",
            "intro": INTRO.format(users=users, per=per, version=VERSION, heartbeat=HEARTBEAT, pings=pings,
                                  changes=CHANGES, spacing=CHANGE_SPACING, idle=IDLE_SECONDS,
                                  push=PUSH_TEXT[profile],
                                  settled=" (once the mail sessions their first looks opened have closed: "
                                  f"`mail_idle_close` and the sweep that applies it, "
                                  f"{_close_after(hook) * 1.5 + 5:.0f} s later)",
                                  per_user="the user's mail session while open" if hook
                                  else "the user's IMAP NOTIFY and store sessions"),
            "rows": rows, "extra_notes": notes,
            "settings": {"rounds": 1, "seconds": "-", "connections": pings, "loop": tls.get("loop"),
                         "pings": pings, "users": users, "heartbeat": HEARTBEAT, "version": VERSION,
                         "client_cpu": opts.client_cpu, "server_cpu": opts.server_cpu},
            "raw": r}


def _hook_steady(commands: dict[str, int], users: int) -> dict | None:
    """The push hub's steady back-end load in the hook profile, from what taking the Pings in cost: each user's
    first Ping opened a mail session (its commands besides STATUS, LOGOUT included, per session) and every Ping
    did one STATUS. In the steady state the push hub looks every 300 s and the user's Pings together every 600 s,
    each look a new session (the last one has closed) and one STATUS."""
    sessions = commands.get("LOGOUT", 0)
    if not sessions:
        return None
    per_session = sum(v for k, v in commands.items() if k not in ("all", "STATUS")) / sessions
    return {"sessions": sessions, "per_session": round(per_session, 2),
            "per_user_min": (per_session + 1) * (1 / 5 + 1 / 10), "sessions_per_user": round(sessions / users, 2)}


def _hook_note(r: dict, steady: dict | None) -> str:
    tls, plain, users = r["tls"], r["plain"], r["users"]
    parts = []
    for what, m in (("TLS", tls), ("plain", plain)):
        pushed = (m.get("latency") or {}).get("notifications")
        if pushed is not None:
            parts.append(f"{what}: {pushed.get('accepted', 0)} accepted"
                         + "".join(f", {v} {k}" for k, v in sorted(pushed.items()) if k != "accepted" and v))
        if "held_open_kb" in m:
            parts.append(f"{what} RSS right after the last Ping {m['held_open_kb']['VmRSS'] / 1024:.0f} MB "
                         f"({m['held_open_kb'].get('imap_sessions', 0):,} IMAP sessions open), "
                         f"{MAIL_IDLE_CLOSE * 1.5 + 5:.0f} s later (the table's figure) "
                         f"{m['held_kb']['VmRSS'] / 1024:.0f} MB ({m['held_kb'].get('imap_sessions', 0):,} open)")
    hold = tls.get("hold_commands") or {}
    text = ("Push hook: the gateway's casgate_dovecot_push_notifications_total over the latency phase's "
            f"{(tls.get('latency') or {}).get('users', 0)} deliveries: " + "; ".join(parts)
            + ". Taking the TLS Pings in cost the back end "
            + ", ".join(f"{k} {v / users:.2f}" for k, v in sorted(hold.items()) if k != "all")
            + " commands per user (each Ping's first look is a fresh STATUS; the sessions closed about "
            f"{MAIL_IDLE_CLOSE}-{MAIL_IDLE_CLOSE * 1.5:.0f} s after it)")
    if steady:
        text += (f". Steady state: the push hub looks at each user's INBOX every 300 s and the user's held Pings "
                 "together every 600 s (`ping_check_interval`), each look a new session "
                 f"({steady['per_session']:.1f} commands besides STATUS; the LOGIN is done in imap-login, which "
                 f"this count leaves out) and one STATUS: {steady['per_user_min']:.2f} commands per user per "
                 "minute. The 60 s window above saw the Pings' looks (spread over their beat) and the sessions "
                 "they and the last Pings opened closing, but none of the push hub's, which come 300 s after each "
                 f"user's first Ping. Not counted either way: each phone's new Ping when its heartbeat "
                 f"({HEARTBEAT} s) ends, one STATUS more")
    return text + "."


# --- the launcher (plain-HTTP gateway, bare baseline) -----------------------------------------------------

def serve_main(argv: list[str] | None = None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m bench.eas_ping_scale serve",
                                description="Serve the gateway's application (or a bare handler that holds "
                                            "every ActiveSync request) on one port, plain or TLS, until SIGTERM.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", type=Path, help="casgate.toml: serve the gateway (all its listeners, plus this "
                                               "port as plain HTTP unless --cert is given)")
    p.add_argument("--bare", action="store_true", help="serve the bare baseline instead of the gateway")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--tracemalloc", type=Path, metavar="DIR", help="trace allocations; SIGUSR1 writes a snapshot")
    a = p.parse_args(argv)
    if a.tracemalloc:
        import tracemalloc
        tracemalloc.start(int(os.environ.get("PING_SCALE_FRAMES", "1")))
    from gateway.server import install_event_loop
    if a.bare:
        install_event_loop()
        asyncio.run(_serve_bare(a))
        return
    from gateway import logs
    from gateway.config import load
    cfg = load(a.config)
    logs.setup(cfg.log.level, cfg.log.format)
    install_event_loop(cfg.server.ssl_read_buffer)
    asyncio.run(_serve_gateway(cfg, a))


def _snapshots(loop: asyncio.AbstractEventLoop, folder: Path | None) -> None:
    if folder is None:
        return
    import tracemalloc
    folder.mkdir(parents=True, exist_ok=True)
    count = [0]

    def dump() -> None:
        count[0] += 1
        tracemalloc.take_snapshot().dump(str(folder / f"snapshot-{count[0]}.pickle"))
    loop.add_signal_handler(signal.SIGUSR1, dump)


async def _until_stopped(tracing: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    _snapshots(loop, tracing)
    await stop.wait()


def _tls(a) -> ssl.SSLContext | None:
    from gateway import tls
    return tls.server_context(a.cert, a.key) if a.cert else None


async def _serve_bare(a) -> None:
    from aiohttp import web

    async def hold(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.Event().wait()
        return web.Response()

    app = web.Application()
    app.router.add_post(EAS, hold)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, HOST, a.port, ssl_context=_tls(a), backlog=1024, reuse_address=True).start()
    try:
        await _until_stopped(a.tracemalloc)
    finally:
        await runner.cleanup()


async def _serve_gateway(cfg, a) -> None:
    from contextlib import AsyncExitStack

    from aiohttp import web

    from gateway.context import open_context
    from gateway.server import Listeners
    async with AsyncExitStack() as stack:
        ctx = await open_context(cfg, stack)
        listeners = Listeners(ctx)
        await listeners.start()
        try:
            assert listeners.runner is not None
            await web.TCPSite(listeners.runner, cfg.server.listen, a.port, ssl_context=_tls(a), backlog=1024,
                              reuse_address=True).start()
            await _until_stopped(a.tracemalloc)
        finally:
            await listeners.stop()


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m bench.eas_ping_scale serve --port N (--config casgate.toml | --bare) ...; "
                 "the benchmark itself runs from bench/run.py --only eas_ping_scale")
    serve_main(sys.argv[2:])
