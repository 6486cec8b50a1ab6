"""Benchmark "ActiveSync vs SOGo": the SOGo peer's own client and mailbox, run against SOGo and against casgate.

The workload and its tools are ../shared/peers/sogo: SOGo 5.8's ActiveSync (Debian) behind nginx, on its
own loopback Dovecot, with 2,000 messages seeded into alice's INBOX, and `bench_eas.py` (pyactivesync
0.17.0, EAS 14.1) timing Provision, FolderSync, the initial Sync and a Ping round trip. casgate is started
in front of that same Dovecot and `bench_eas.py` is pointed at it with `--server`, so both answer the
identical client, requests and mailbox; the two targets alternate over the rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from gateway import tls
from gateway.demo.procs import free_port, stop_process

from .gateway_env import HOST, casgate_command, config_text
from .harness import ROOT, BenchError, Options, Progress, log_tail, pinned, spawn, wait_http_ok
from .https_front import loop_of

NAME = "eas_peer"
TITLE = "ActiveSync vs SOGo (issue 6)"
PEER = ROOT.parent / "shared" / "peers" / "sogo"
PEER_RUN = Path("/var/tmp/peers")  # where the peer's scripts keep pid files, logs and mail
PEER_PYTHON = Path("/tmp/peers-venv/bin/python")  # made by setup.sh, holds pyactivesync
PEER_DAEMONS = (("memcached", "memcached"), ("dovecot", "dovecot"), ("sogo", "sogod"), ("nginx", "nginx"))
SOGO_SERVER = f"{HOST}:20443"
IMAP_PORT = 10143
USER = "alice@example.test"
VERSION = "14.1"
MAX_ROUNDS = 3  # each round is a whole initial sync per target (SOGo's alone takes about 40 s)
TARGET_RATIO = 10.0
SETUP_TIMEOUT, START_TIMEOUT, SEED_TIMEOUT, RUN_TIMEOUT = 1800, 180, 600, 900
INTRO = (
    "The SOGo peer's own benchmark (`../shared/peers/sogo`: SOGo 5.8 with `sogo-activesync` from Debian behind "
    "nginx, on its own Dovecot at 127.0.0.1:10143; `seed.py` puts 2,000 deterministic ~4 KB messages, every "
    "10th with a 1.5 KB attachment, in alice's INBOX). casgate runs in front of that same Dovecot (plain IMAP on "
    "loopback, default settings: a held Ping waits on the push hub, which keeps INBOX in IMAP IDLE), pinned to "
    "one CPU. "
    "The identical client, `bench_eas.py` (pyactivesync 0.17.0, EAS {version}, one new device per run, pinned "
    "to the other CPU), measures both: Provision, FolderSync 0, the initial Sync of the INBOX (SyncKey 0, then "
    "WindowSize 100 until no MoreAvailable; no BodyPreference, as pyactivesync sends none), one settle Sync, then "
    "a Ping round trip (Ping with HeartbeatInterval 120, an IMAP APPEND 2 s later, time from the APPEND to the "
    "Ping's answer) and the Sync that fetches the new item. SOGo and casgate alternate over the rounds; medians "
    "shown. Ratios are casgate / SOGo for rates and SOGo / casgate for times, so higher is better. Server-stack "
    "CPU is what bench_eas.py reads from /proc for the process trees serving the sync: sogod, Dovecot, nginx, "
    "PostgreSQL and memcached for SOGo; casgate and Dovecot for casgate. Target (issue 6): initial sync at "
    "least {target:.0f}x SOGo's items/s.")


def _script(progress: Progress, what: str, cmd: list[str], log: Path, timeout: float,
            cwd: Path = PEER) -> int:
    """Run one of the peer's scripts in its own session with no stdin (else it may wait on the terminal)."""
    progress.show(what)
    with open(log, "ab") as out:
        out.write(f"\n=== {what}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd,
                                start_new_session=True)
        try:
            return proc.wait(timeout)
        except BaseException:  # a timeout or Ctrl-C: take the whole script (and what it forked) down
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
            proc.wait()
            raise


def _require(progress: Progress, what: str, cmd: list[str], log: Path, timeout: float) -> None:
    try:
        rc = _script(progress, what, cmd, log, timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} took more than {timeout:.0f} s; log {log}:\n{log_tail(log)}") from None
    if rc:
        raise BenchError(f"{what} failed (exit {rc}); log {log}:\n{log_tail(log)}")


def _alive(name: str, comm: str) -> bool:
    """The peer daemon's recorded pid runs and is the expected program (start.sh's own test)."""
    try:
        pid = int((PEER_RUN / f"{name}.pid").read_text().split()[0])
        return (Path(f"/proc/{pid}/comm").read_text().strip()) == comm
    except (OSError, ValueError, IndexError):
        return False


def _stop_peer(progress: Progress, log: Path) -> None:
    try:
        if _script(progress, "eas_peer: stopping the SOGo peer (stop.sh)", ["bash", "stop.sh"], log, START_TIMEOUT):
            progress.note(f"eas_peer: stop.sh failed; see {log}")
    except subprocess.TimeoutExpired:
        progress.note(f"eas_peer: stop.sh took more than {START_TIMEOUT} s; check /var/tmp/peers/*.pid")


def _setup_peer(stack: ExitStack, progress: Progress, log: Path) -> bool:
    """setup.sh, start.sh and seed.py; stop.sh at the end unless the peer was already up. True if we started it."""
    if not (PEER / "bench_eas.py").exists():
        raise BenchError(f"{PEER} is missing: the SOGo peer benchmark comes from ../shared/peers/sogo")
    if os.geteuid() != 0:
        raise BenchError("the SOGo peer's setup.sh needs root (apt-get, a vmail user, /etc/sogo/sogo.conf)")
    for tool in ("apt-get", "dpkg-query", "taskset"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing; the SOGo peer is set up from Debian packages")
    _require(progress, "eas_peer: setting up the SOGo peer (setup.sh; installs Debian packages on first use)",
             ["bash", "setup.sh"], log, SETUP_TIMEOUT)
    if not PEER_PYTHON.exists():
        raise BenchError(f"setup.sh did not create {PEER_PYTHON}; log {log}:\n{log_tail(log)}")
    already = all(_alive(name, comm) for name, comm in PEER_DAEMONS)
    if not already:  # registered before start.sh so that a half-started peer is stopped too
        stack.callback(_stop_peer, progress, log)
    _require(progress, "eas_peer: starting the SOGo peer (PostgreSQL, memcached, Dovecot, sogod, nginx)",
             ["bash", "start.sh"], log, START_TIMEOUT)
    _require(progress, "eas_peer: seeding alice's INBOX with 2,000 messages (seed.py)",
             [str(PEER_PYTHON), "seed.py", "--port", str(IMAP_PORT), "--user", USER], log, SEED_TIMEOUT)
    return not already


def _start_casgate(stack: ExitStack, work: Path, opts: Options,
                   progress: Progress) -> tuple[subprocess.Popen, Path, int]:
    """casgate on the server CPU with the peer's Dovecot as its IMAP back end; (process, log, https port)."""
    progress.show(f"eas_peer: starting casgate in front of the peer's Dovecot, on CPU {opts.server_cpu}")
    certs, _ = tls.init_certs(work / "certs", "example.test")
    port = free_port(HOST)
    ports = {"https": port, "imap": 0, "imaps": 0, "pop3": 0, "pop3s": 0}
    (work / "casgate.toml").write_text(config_text(ports, certs, 0, imap_url=f"imap://127.0.0.1:{IMAP_PORT}",
                                                   imap_tls="none"))
    (work / "users.toml").write_text('[[user]]\naddress = "alice@example.test"\nname = "Alice Example"\n'
                                     '[[user]]\naddress = "bob@example.test"\nname = "Bob Example"\n')
    log = work / "casgate.log"
    proc = spawn([*casgate_command(), "serve", "-c", str(work / "casgate.toml")], opts.server_cpu, log, cwd=work)
    stack.callback(stop_process, proc)
    wait_http_ok(f"https://{HOST}:{port}/healthz", certs.ca_cert, proc, log, "casgate /healthz")
    (work / "casgate.pid").write_text(f"{proc.pid}\n")
    return proc, log, port


def _bench_eas(progress: Progress, opts: Options, label: str, server: str, pidfiles: list[Path], out: Path,
               log: Path, what: str) -> dict:
    """One run of the peer's bench_eas.py against ``server``; its JSON output (raises if it wrote none)."""
    cmd = [str(PEER_PYTHON), "bench_eas.py", "--server", server, "--runs", "1", "--eas-version", VERSION,
           "--user", USER, "--imap-host", HOST, "--imap-port", str(IMAP_PORT), "--label", label, "--json", str(out)]
    for f in pidfiles:
        cmd += ["--cpu-pidfile", str(f)]
    try:
        rc = _script(progress, what, pinned(cmd, opts.client_cpu), log, RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench_eas.py against {label} took more than {RUN_TIMEOUT} s; log {log}:\n"
                         f"{log_tail(log)}") from None
    if not out.exists():
        raise BenchError(f"bench_eas.py against {label} failed (exit {rc}) without a result; log {log}:\n"
                         f"{log_tail(log, 30)}")
    data = json.loads(out.read_text())
    data["exit_status"] = rc
    return data


def _check_run(data: dict, label: str, log: Path, gateway_log: Path | None) -> dict:
    """The run's figures; a run that did not bring the whole INBOX is an error, a failed Ping only a note."""
    run = data["runs"][0]
    expected = data.get("mailbox_messages")
    if run.get("items") != expected:
        tail = f"\ncasgate log {gateway_log}:\n{log_tail(gateway_log, 30)}" if gateway_log else ""
        raise BenchError(f"{label}: the initial sync brought {run.get('items')} items, not {expected}; log {log}:\n"
                         f"{log_tail(log, 20)}{tail}")
    return run


def run(env, opts: Options, progress: Progress) -> dict:
    """Set up and seed the peer, start casgate before its Dovecot, alternate bench_eas.py runs; the result for docs."""
    del env  # the shared throwaway gateway has its own Dovecot; this benchmark needs the peer's
    rounds = max(1, min(opts.rounds, MAX_ROUNDS))
    runs: dict[str, list[dict]] = {"casgate": [], "sogo": []}
    headers: dict[str, dict] = {}
    messages = 0
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="casgate-easpeer-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        log = work / "peer.log"
        started_peer = _setup_peer(stack, progress, log)
        proc, gw_log, port = _start_casgate(stack, work, opts, progress)
        loop = loop_of(proc.pid)
        targets = {
            "sogo": (f"sogo-{_sogo_version()}", SOGO_SERVER,
                     [PEER_RUN / f"{n}.pid" for n in ("sogo", "dovecot", "nginx", "postgres", "memcached")]),
            "casgate": ("casgate", f"{HOST}:{port}", [work / "casgate.pid", PEER_RUN / "dovecot.pid"]),
        }
        for rnd in range(rounds):
            for who in (("sogo", "casgate") if rnd % 2 == 0 else ("casgate", "sogo")):
                label, server, pidfiles = targets[who]
                what = (f"eas_peer: round {rnd + 1}/{rounds}, {'SOGo' if who == 'sogo' else 'casgate'}: bench_eas.py "
                        f"(Provision, FolderSync, initial Sync of 2,000 items, Ping; "
                        f"{'about 50 s' if who == 'sogo' else 'a few seconds'})")
                data = _bench_eas(progress, opts, label, server, pidfiles, work / f"{who}-{rnd + 1}.json", log, what)
                if who == "casgate" and proc.poll() is not None:
                    raise BenchError(f"casgate exited with status {proc.returncode}; log {gw_log}:\n{log_tail(gw_log)}")
                run_figures = _check_run(data, label, log, gw_log if who == "casgate" else None)
                run_figures["exit_status"] = data["exit_status"]
                run_figures["requests_by_cmd"] = data.get("requests_by_cmd")
                run_figures["loadavg"] = [data["host"]["loadavg_at_start"], data["host"]["loadavg_at_end"]]
                runs[who].append(run_figures)
                headers[who] = data.get("options", {}).get("headers", {})
                messages = data.get("mailbox_messages")
        ping_errors = {who: [r["ping_error"] for r in rs if r.get("ping_error")] for who, rs in runs.items()}
        gateway_warnings = _gateway_problems(gw_log)
    progress.clear()
    return _result(opts, rounds, messages, runs, headers, ping_errors, gateway_warnings, loop, started_peer)


def _sogo_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "sogo-activesync"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.split("-")[0] or "5.8"


def _gateway_problems(log: Path) -> list[str]:
    """casgate's own warnings and errors during the runs (kept in the result; the log folder is removed)."""
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("level", "")).lower() in ("warning", "error", "critical"):
            found.append(line[:400])
    return found[:20]


def _med(runs: list[dict], key: str, scale: float = 1.0) -> float | None:
    values = [r[key] * scale for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


def _result(opts: Options, rounds: int, messages: int, runs: dict[str, list[dict]], headers: dict[str, dict],
            ping_errors: dict[str, list[str]], gateway_warnings: list[str], loop: str, started_peer: bool) -> dict:
    ours, peer = runs["casgate"], runs["sogo"]

    def per_cpu(rs: list[dict]) -> float | None:
        return _med([{"v": r["items"] / r["server_cpu_s_initial_sync"]} for r in rs
                     if r.get("server_cpu_s_initial_sync")], "v")

    def row(key: str, metric: str, field: str, scale: float = 1.0, higher: bool = False,
            ratio: bool = True) -> dict:
        a, b = _med(ours, field, scale), _med(peer, field, scale)
        return {"key": key, "metric": metric, "casgate": a, "baseline": b,
                "ratio": (_ratio(a, b) if higher else _ratio(b, a)) if ratio else None}

    rate_ratio = _ratio(_med(ours, "items_per_s"), _med(peer, "items_per_s"))
    rows = [
        row("initial_rate", f"initial sync of {messages:,} messages, items/s (target: ratio >= {TARGET_RATIO:.0f})",
            "items_per_s", higher=True),
        row("initial_wall", "the same, wall s", "initial_sync_s"),
        row("window", "the same, median time per 100-item Sync window, ms", "window_s_median", 1000),
        row("sync_requests", "the same, Sync requests", "sync_requests", ratio=False),
        row("sync_bytes", "the same, response bytes (WBXML after gzip decoding), KB", "sync_bytes", 1 / 1024,
            ratio=False),
        row("server_cpu", "the same, server-stack CPU s", "server_cpu_s_initial_sync"),
        {"key": "items_per_cpu", "metric": "the same, items per server-stack CPU-second",
         "casgate": per_cpu(ours), "baseline": per_cpu(peer), "ratio": _ratio(per_cpu(ours), per_cpu(peer))},
        row("provision", "Provision, ms (casgate: two round trips with a policy; SOGo: one, no policy)",
            "provision_s", 1000),
        row("foldersync", "FolderSync 0, ms", "foldersync_s", 1000),
        row("ping_rtt", "Ping round trip (APPEND to Ping answer), ms", "ping_rtt_s", 1000),
        row("append_to_item", "APPEND to new item in hand (Ping answer + Sync), ms", "append_to_item_s", 1000),
    ]
    verdict = "met" if rate_ratio is not None and rate_ratio >= TARGET_RATIO else "NOT met"
    notes = [
        f"Target: casgate's initial sync at least {TARGET_RATIO:.0f}x SOGo's items/s: {verdict} "
        f"(ratio {rate_ratio if rate_ratio is not None else 'n/a'}, medians over {rounds} round(s)).",
        "casgate's Ping round trip is push: the push hub keeps the INBOX in IMAP IDLE, so the held Ping is "
        "answered as soon as Dovecot reports the APPEND, whenever it comes (the Ping's own look is 30 s apart). "
        "SOGo polls IMAP every 5 s (SOGoInternalSyncInterval in the peer's set-up; peer README, finding 6), so its "
        "round trip is phase-locked to bench_eas.py's fixed 2 s arm delay: about 3 s here, 0-5 s for mail "
        "arriving at random times.",
        "pyactivesync sends no BodyPreference, so both servers answer with untruncated plain-text bodies "
        "(SOGo: AirSyncBase Type 1). Bytes are the response bodies pyactivesync gets after `requests` undoes "
        "any gzip, so they compare content, not wire size.",
        "The machine is a shared 2-core VM where other sessions' tests and benchmarks may run at the same time; "
        "the wall-clock figures carry that noise (the load averages at the start and end of each run are kept "
        "in bench/results/eas_peer.json). SOGo's sync is latency-bound (about 2 s per 100-item window whatever "
        "the CPU, see the peer's README, finding 7), so its figures move little with load.",
    ]
    for who, errors in ping_errors.items():
        if errors:
            notes.append(f"Ping failed against {who} in {len(errors)} run(s): {errors[0]}")
    for who, rs in runs.items():
        bad = [r["exit_status"] for r in rs if r["exit_status"]]
        if bad:
            notes.append(f"bench_eas.py exited with status {bad[0]} in {len(bad)} {who} run(s) (it does so when "
                         "a Ping check fails).")
    if gateway_warnings:
        notes.append(f"casgate logged {len(gateway_warnings)} warning(s) or error(s) during the runs; the first: "
                     f"{gateway_warnings[0][:300]}")
    return {"name": NAME, "title": TITLE, "baseline_label": "SOGo 5.8 ActiveSync",
            "intro": INTRO.format(version=VERSION, target=TARGET_RATIO),
            "rows": rows, "extra_notes": notes,
            "settings": {"rounds": rounds, "seconds": "-", "connections": 1, "loop": loop, "version": VERSION,
                         "messages": messages, "client_cpu": opts.client_cpu, "server_cpu": opts.server_cpu,
                         "ping": "push hub (IMAP IDLE)", "options_headers": headers,
                         "peer_started_here": started_peer},
            "raw": {"casgate": ours, "sogo": peer, "casgate_log_warnings": gateway_warnings}}
