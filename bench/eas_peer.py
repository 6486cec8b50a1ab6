"""Benchmark "ActiveSync vs SOGo": the SOGo peer's own client and mailbox, run against SOGo and against casgate.

The workload and its tools are ../shared/peers/sogo: SOGo 5.8's ActiveSync (Debian) behind nginx, on its
own loopback Dovecot, with 2,000 messages seeded into alice's INBOX, and `bench_eas.py` (pyactivesync
0.17.0, EAS 14.1) timing Provision, FolderSync, the initial Sync and a Ping round trip. Two casgates are
started in front of that same Dovecot and `bench_eas.py` is pointed at each with `--server`, so all answer
the identical client, requests and mailbox; the targets take turns over the rounds. The peer's Dovecot is
set up as a casgate deployment sets up its own: it also loads casgate's push hook (push_notification with
the Lua script of gateway/services/dovecot_push.py), which POSTs each change to the first casgate; the
second ("IDLE only") accepts no notifications, so it shows what IMAP IDLE alone gives. SOGo ignores the hook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from gateway import tls
from gateway.demo.procs import free_port, stop_process
from gateway.http.dovecot_push import PATH as PUSH_PATH
from gateway.services.dovecot_push import LUA_PLUGINS, LUA_SCRIPT, plugin_settings

from .gateway_env import HOST, casgate_command, config_text, push_receiver_table, write_secret
from .harness import ROOT, BenchError, Options, Progress, https_get, log_tail, pinned, spawn, wait_http_ok
from .https_front import loop_of

NAME = "eas_peer"
TITLE = "ActiveSync vs SOGo (issue 6)"
PEER = ROOT.parent / "shared" / "peers" / "sogo"
PEER_RUN = Path("/var/tmp/peers")  # where the peer's scripts keep pid files, logs and mail
PEER_CONF = PEER_RUN / "dovecot" / "dovecot.conf"  # written afresh by setup.sh on every run
PEER_PYTHON = Path("/tmp/peers-venv/bin/python")  # made by setup.sh, holds pyactivesync
PEER_DAEMONS = (("memcached", "memcached"), ("dovecot", "dovecot"), ("sogo", "sogod"), ("nginx", "nginx"))
PLUGINS_LINE = "\nmail_plugins = acl\n"  # setup.sh's global mail_plugins, which the hook's plugins join
SOGO_SERVER = f"{HOST}:20443"
IMAP_PORT = 10143
USER = "alice@example.test"
VERSION = "14.1"
MAX_ROUNDS = 5  # each round is a whole initial sync per target (SOGo's alone takes about 40 s)
TARGET_RATIO = 10.0
SETUP_TIMEOUT, START_TIMEOUT, SEED_TIMEOUT, RUN_TIMEOUT = 1800, 180, 600, 900
# Who is measured, in the order of even rounds (odd rounds reverse it), and how each is named.
TARGETS = ("sogo", "casgate", "idle")
LABELS = {"sogo": "SOGo", "casgate": "casgate", "idle": "casgate (IDLE only)"}
INTRO = (
    "The SOGo peer's own benchmark (`../shared/peers/sogo`: SOGo 5.8 with `sogo-activesync` from Debian behind "
    "nginx, on its own Dovecot at 127.0.0.1:10143; `seed.py` puts 2,000 deterministic ~4 KB messages, every "
    "10th with a 1.5 KB attachment, in alice's INBOX). Two casgates run in front of that same Dovecot (plain "
    "IMAP on loopback, default settings otherwise), pinned to one CPU. The peer's Dovecot also loads casgate's "
    "push hook, as a casgate deployment's Dovecot does: Dovecot's push_notification plugin with the Lua driver "
    "and the script of `gateway/services/dovecot_push.py`, which POSTs every APPEND or delivery to "
    "`https://127.0.0.1:<port>/casgate/dovecot-push` of the first casgate (`[activesync] dovecot_push_from = "
    "[\"127.0.0.1\"]` and a shared secret); a held Ping is answered from that notification. The second, "
    "\"casgate (IDLE only)\", has no dovecot_push_from, so its held Ping waits on the push hub's IMAP IDLE "
    "alone; SOGo does not use the hook either. "
    "The identical client, `bench_eas.py` (pyactivesync 0.17.0, EAS {version}, one new device per run, pinned "
    "to the other CPU), measures all three: Provision, FolderSync 0, the initial Sync of the INBOX (SyncKey 0, "
    "then WindowSize 100 until no MoreAvailable; no BodyPreference, as pyactivesync sends none), one settle "
    "Sync, then a Ping round trip (Ping with HeartbeatInterval 120, an IMAP APPEND 2 s later, time from the "
    "APPEND to the Ping's answer) and the Sync that fetches the new item. The three take turns over the "
    "rounds; medians shown. Ratios are casgate / SOGo for rates and SOGo / casgate for times, so higher is "
    "better. Server-stack CPU is what bench_eas.py reads from /proc for the process trees serving the sync: "
    "sogod, Dovecot, nginx, PostgreSQL and memcached for SOGo; casgate and Dovecot for casgate. Target "
    "(issue 6): initial sync at least {target:.0f}x SOGo's items/s.")


@dataclass(frozen=True)
class Hook:
    """Where the peer's Dovecot sends its notifications, and the files it reads to do so."""

    url: str
    secret: str
    ca_cert: Path  # casgate's CA, which the Lua HTTP client must trust
    folder: Path  # a 0755 folder of its own: Dovecot's vmail user reads the script and the CA copy there


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


def _hook_dovecot(stack: ExitStack, hook: Hook) -> None:
    """Add casgate's push hook to the peer's dovecot.conf as setup.sh just wrote it; ``stack`` puts setup.sh's
    text back at the end (after the peer is stopped), so the peer is left as its own scripts make it."""
    original = PEER_CONF.read_text()
    if original.count(PLUGINS_LINE) != 1:
        raise BenchError(f"{PEER_CONF} has no single line {PLUGINS_LINE.strip()!r} to add the push hook's plugins "
                         "to; setup.sh has changed, adapt bench/eas_peer.py")
    script, ca = hook.folder / "casgate-push.lua", hook.folder / "casgate-ca.pem"
    script.write_text(LUA_SCRIPT)
    shutil.copyfile(hook.ca_cert, ca)
    for f in (script, ca):
        f.chmod(0o644)
    hooked = (original.replace(PLUGINS_LINE, f"\nmail_plugins = acl {LUA_PLUGINS}\n")
              + "# Added by casgate's bench/eas_peer.py for one run: its push hook (put back when the run ends).\n"
              + f"ssl_client_ca_file = {ca}\n" + plugin_settings(str(script), hook.url, hook.secret))
    stack.callback(PEER_CONF.write_text, original)
    PEER_CONF.write_text(hooked)
    check = subprocess.run(["doveconf", "-c", str(PEER_CONF), "-n"], capture_output=True, text=True, timeout=30)
    if check.returncode:
        raise BenchError(f"Dovecot refuses {PEER_CONF} with casgate's push hook added:\n{check.stderr[-2000:]}")


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def _start_peer(stack: ExitStack, progress: Progress, log: Path, hook: Hook) -> bool:
    """setup.sh, the push hook, start.sh; at the end stop.sh, or a restart without the hook if the peer was
    already up. True if the peer was started here."""
    if not (PEER / "bench_eas.py").exists():
        raise BenchError(f"{PEER} is missing: the SOGo peer benchmark comes from ../shared/peers/sogo")
    if os.geteuid() != 0:
        raise BenchError("the SOGo peer's setup.sh needs root (apt-get, a vmail user, /etc/sogo/sogo.conf)")
    for tool in ("apt-get", "dpkg-query", "taskset", "doveconf"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing; the SOGo peer is set up from Debian packages")
    _require(progress, "eas_peer: setting up the SOGo peer (setup.sh; installs Debian packages on first use)",
             ["bash", "setup.sh"], log, SETUP_TIMEOUT)
    if not PEER_PYTHON.exists():
        raise BenchError(f"setup.sh did not create {PEER_PYTHON}; log {log}:\n{log_tail(log)}")
    running = [name for name, comm in PEER_DAEMONS if _alive(name, comm)]
    if running:  # its Dovecot read its config without the hook: restart, and leave it running as found
        progress.note("eas_peer: the SOGo peer is running; restarting it so that its Dovecot loads casgate's push "
                      "hook (it is started again without the hook at the end)")
        _stop_peer(progress, log)
        if any(_alive(name, comm) for name, comm in PEER_DAEMONS):
            raise BenchError(f"stop.sh left part of the SOGo peer running; log {log}:\n{log_tail(log)}")
        if len(running) == len(PEER_DAEMONS):
            stack.callback(_script, progress, "eas_peer: starting the SOGo peer again, as it was found",
                           ["bash", "start.sh"], log, START_TIMEOUT)
    if _port_taken(IMAP_PORT):
        raise BenchError(f"{HOST}:{IMAP_PORT}, the SOGo peer's Dovecot port, is taken by another program (the IMAP "
                         "peer of ../shared/peers/imap? stop it with its stop.sh first)")
    _hook_dovecot(stack, hook)
    stack.callback(_stop_peer, progress, log)  # registered before start.sh so that a half-started peer is stopped
    _require(progress, "eas_peer: starting the SOGo peer (PostgreSQL, memcached, Dovecot with casgate's push hook, "
             "sogod, nginx)", ["bash", "start.sh"], log, START_TIMEOUT)
    return len(running) < len(PEER_DAEMONS)


def _start_casgate(stack: ExitStack, folder: Path, port: int, certs: tls.CertPaths, tables: str, opts: Options,
                   progress: Progress) -> tuple[subprocess.Popen, Path]:
    """One casgate on the server CPU with the peer's Dovecot as its IMAP back end; (process, log)."""
    progress.show(f"eas_peer: starting {LABELS[folder.name]} in front of the peer's Dovecot, on CPU {opts.server_cpu}")
    ports = {"https": port, "imap": 0, "imaps": 0, "pop3": 0, "pop3s": 0}
    (folder / "casgate.toml").write_text(config_text(ports, certs, 0, imap_url=f"imap://127.0.0.1:{IMAP_PORT}",
                                                     imap_tls="none", tables=tables))
    (folder / "users.toml").write_text('[[user]]\naddress = "alice@example.test"\nname = "Alice Example"\n'
                                       '[[user]]\naddress = "bob@example.test"\nname = "Bob Example"\n')
    log = folder / "casgate.log"
    proc = spawn([*casgate_command(), "serve", "-c", str(folder / "casgate.toml")], opts.server_cpu, log, cwd=folder)
    stack.callback(stop_process, proc)
    wait_http_ok(f"https://{HOST}:{port}/healthz", certs.ca_cert, proc, log, f"casgate ({folder.name}) /healthz")
    (folder / "casgate.pid").write_text(f"{proc.pid}\n")
    return proc, log


def _notifications(port: int, ca_cert: Path) -> dict[str, int]:
    """casgate's count of Dovecot's notifications by result (accepted, refused, bad, ignored), from /metrics."""
    try:
        status, body = https_get(f"https://{HOST}:{port}/metrics", ca_cert)
    except OSError:
        return {}
    found = re.findall(r'^casgate_dovecot_push_notifications_total\{result="(\w+)"\} (\S+)$',
                       body.decode(errors="replace"), re.M) if status == 200 else []
    return {result: int(float(value)) for result, value in found}


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
    """Set up the peer with casgate's push hook, start two casgates, seed, take turns; the result for docs."""
    del env  # the shared throwaway gateway has its own Dovecot; this benchmark needs the peer's
    rounds = max(1, min(opts.rounds, MAX_ROUNDS))
    runs: dict[str, list[dict]] = {who: [] for who in TARGETS}
    headers: dict[str, dict] = {}
    messages = 0
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="casgate-easpeer-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        hook_dir = Path(tempfile.mkdtemp(prefix="casgate-easpeer-hook-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, hook_dir, ignore_errors=True)
        os.chmod(hook_dir, 0o755)  # only the Lua script and a copy of the CA certificate go here
        log = work / "peer.log"
        certs, _ = tls.init_certs(work / "certs", "example.test")
        ports = {who: free_port(HOST) for who in ("casgate", "idle")}
        for who in ports:
            (work / who).mkdir()
        secret = write_secret(work / "casgate" / "push.secret")
        hook = Hook(f"https://{HOST}:{ports['casgate']}{PUSH_PATH}", secret, certs.ca_cert, hook_dir)
        started_peer = _start_peer(stack, progress, log, hook)
        procs: dict[str, tuple[subprocess.Popen, Path]] = {
            "casgate": _start_casgate(stack, work / "casgate", ports["casgate"], certs,
                                      push_receiver_table("push.secret"), opts, progress),
            "idle": _start_casgate(stack, work / "idle", ports["idle"], certs, "", opts, progress)}
        # Seeded after the gateways start, so that the hook's 2,000 notifications find the first one listening.
        _require(progress, "eas_peer: seeding alice's INBOX with 2,000 messages (seed.py)",
                 [str(PEER_PYTHON), "seed.py", "--port", str(IMAP_PORT), "--user", USER], log, SEED_TIMEOUT)
        seeded = _notifications(ports["casgate"], certs.ca_cert)
        loop = loop_of(procs["casgate"][0].pid)
        targets = {
            "sogo": (f"sogo-{_sogo_version()}", SOGO_SERVER,
                     [PEER_RUN / f"{n}.pid" for n in ("sogo", "dovecot", "nginx", "postgres", "memcached")]),
            **{who: ("casgate" if who == "casgate" else "casgate-idle", f"{HOST}:{ports[who]}",
                     [work / who / "casgate.pid", PEER_RUN / "dovecot.pid"]) for who in ports},
        }
        for rnd in range(rounds):
            for who in (TARGETS if rnd % 2 == 0 else TARGETS[::-1]):
                label, server, pidfiles = targets[who]
                what = (f"eas_peer: round {rnd + 1}/{rounds}, {LABELS[who]}: bench_eas.py (Provision, FolderSync, "
                        f"initial Sync of 2,000 items, Ping; {'about 50 s' if who == 'sogo' else 'a few seconds'})")
                data = _bench_eas(progress, opts, label, server, pidfiles, work / f"{who}-{rnd + 1}.json", log, what)
                gw_log = procs[who][1] if who in procs else None
                if who in procs and procs[who][0].poll() is not None:
                    raise BenchError(f"casgate ({who}) exited with status {procs[who][0].returncode}; log {gw_log}:\n"
                                     f"{log_tail(gw_log)}")
                run_figures = _check_run(data, label, log, gw_log)
                run_figures["exit_status"] = data["exit_status"]
                run_figures["requests_by_cmd"] = data.get("requests_by_cmd")
                run_figures["loadavg"] = [data["host"]["loadavg_at_start"], data["host"]["loadavg_at_end"]]
                runs[who].append(run_figures)
                headers[who] = data.get("options", {}).get("headers", {})
                messages = data.get("mailbox_messages")
        total = _notifications(ports["casgate"], certs.ca_cert)
        notified = {"while_seeding": seeded, "in_all": total}
        ping_errors = {who: [r["ping_error"] for r in rs if r.get("ping_error")] for who, rs in runs.items()}
        gateway_warnings = [f"{who}: {line}" for who, (_, gw_log) in procs.items()
                            for line in _gateway_problems(gw_log)]
    progress.clear()
    return _result(opts, rounds, messages, runs, headers, ping_errors, gateway_warnings, loop, started_peer, notified)


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


def _ms(rs: list[dict], key: str) -> list[float]:
    return [r[key] * 1000 for r in rs if isinstance(r.get(key), (int, float))]


def _spread(values: list[float]) -> str:
    if not values:
        return "no sample"
    shown = ", ".join(f"{v:,.0f}" for v in values)
    return f"median {statistics.median(values):,.0f}, max {max(values):,.0f} (runs: {shown})"


def _result(opts: Options, rounds: int, messages: int, runs: dict[str, list[dict]], headers: dict[str, dict],
            ping_errors: dict[str, list[str]], gateway_warnings: list[str], loop: str, started_peer: bool,
            notified: dict[str, dict[str, int]]) -> dict:
    ours, idle, peer = runs["casgate"], runs["idle"], runs["sogo"]

    def per_cpu(rs: list[dict]) -> float | None:
        return _med([{"v": r["items"] / r["server_cpu_s_initial_sync"]} for r in rs
                     if r.get("server_cpu_s_initial_sync")], "v")

    def row(key: str, metric: str, field: str, scale: float = 1.0, higher: bool = False,
            ratio: bool = True) -> dict:
        a, b, c = _med(ours, field, scale), _med(peer, field, scale), _med(idle, field, scale)

        def vs_sogo(x: float | None) -> float | None:
            return (_ratio(x, b) if higher else _ratio(b, x)) if ratio else None
        return {"key": key, "metric": metric, "casgate": a, "baseline": b, "ratio": vs_sogo(a),
                "peer": c, "peer_ratio": vs_sogo(c)}

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
         "casgate": per_cpu(ours), "baseline": per_cpu(peer), "ratio": _ratio(per_cpu(ours), per_cpu(peer)),
         "peer": per_cpu(idle), "peer_ratio": _ratio(per_cpu(idle), per_cpu(peer))},
        row("provision", "Provision, ms (casgate: two round trips with a policy; SOGo: one, no policy)",
            "provision_s", 1000),
        row("foldersync", "FolderSync 0, ms", "foldersync_s", 1000),
        row("ping_rtt", "Ping round trip (APPEND to Ping answer), ms", "ping_rtt_s", 1000),
        row("append_to_item", "APPEND to new item in hand (Ping answer + Sync), ms", "append_to_item_s", 1000),
    ]
    loads = [r["loadavg"][0][0] for rs in runs.values() for r in rs if r.get("loadavg")]
    verdict = "met" if rate_ratio is not None and rate_ratio >= TARGET_RATIO else "NOT met"
    accepted = notified["in_all"].get("accepted", 0) - notified["while_seeding"].get("accepted", 0)
    others = {k: v for k, v in notified["in_all"].items() if k != "accepted" and v}
    notes = [
        f"Target: casgate's initial sync at least {TARGET_RATIO:.0f}x SOGo's items/s: {verdict} "
        f"(ratio {rate_ratio if rate_ratio is not None else 'n/a'}, medians over {rounds} round(s)).",
        "Ping round trip, ms, one sample per round: casgate " + _spread(_ms(ours, "ping_rtt_s")) + "; casgate "
        "(IDLE only) " + _spread(_ms(idle, "ping_rtt_s")) + "; SOGo " + _spread(_ms(peer, "ping_rtt_s")) + ".",
        "casgate's Ping round trip is push twice over. With the hook, the Dovecot process that commits the APPEND "
        "POSTs it to casgate, and the notification wakes the held Ping within milliseconds. Without it (the IDLE "
        "only column, and casgate's fallback when Dovecot sends nothing), the push hub keeps the INBOX in IMAP "
        "IDLE, and Dovecot tells an IDLE client of a change only after its mailbox watcher's fixed 500 ms "
        "batching delay, so about half a second. SOGo polls IMAP every 5 s (SOGoInternalSyncInterval in the "
        "peer's set-up; peer README, finding 6), so its round trip is phase-locked to bench_eas.py's fixed 2 s "
        "arm delay: about 3 s here, 0-5 s for mail arriving at random times.",
        f"The hooked casgate accepted {notified['while_seeding'].get('accepted', 0):,} notifications while seed.py "
        f"appended the mailbox and {accepted:,} during the rounds (3 per bench_eas.py run, whichever target it "
        "measured: the probe message's APPEND and its removal; Dovecot reports each change, whoever waits)"
        + (f"; other results: {others}" if others else "") + ". The peer's dovecot.conf is put back as setup.sh "
        "wrote it at the end of the run.",
        "pyactivesync sends no BodyPreference, so all servers answer with untruncated plain-text bodies "
        "(SOGo: AirSyncBase Type 1). Bytes are the response bodies pyactivesync gets after `requests` undoes "
        "any gzip, so they compare content, not wire size.",
        "The machine is a shared 2-core VM where other sessions' tests and benchmarks may run at the same time"
        + (f" (1-minute load average {min(loads):.1f} to {max(loads):.1f} as the runs began)"
           if loads else "") + "; "
        "the wall-clock figures carry that noise (the load averages at the start and end of each run are kept "
        "in bench/results/eas_peer.json). SOGo's sync is latency-bound (about 2 s per 100-item window whatever "
        "the CPU, see the peer's README, finding 7), so its figures move little with load.",
    ]
    for who, errors in ping_errors.items():
        if errors:
            notes.append(f"Ping failed against {LABELS[who]} in {len(errors)} run(s): {errors[0]}")
    for who, rs in runs.items():
        bad = [r["exit_status"] for r in rs if r["exit_status"]]
        if bad:
            notes.append(f"bench_eas.py exited with status {bad[0]} in {len(bad)} {LABELS[who]} run(s) (it does so "
                         "when a Ping check fails).")
    if gateway_warnings:
        notes.append(f"casgate logged {len(gateway_warnings)} warning(s) or error(s) during the runs; the first: "
                     f"{gateway_warnings[0][:300]}")
    return {"name": NAME, "title": TITLE, "baseline_label": "SOGo 5.8 ActiveSync", "peer_label": LABELS["idle"],
            "intro": INTRO.format(version=VERSION, target=TARGET_RATIO),
            "rows": rows, "extra_notes": notes,
            "settings": {"rounds": rounds, "seconds": "-", "connections": 1, "loop": loop, "version": VERSION,
                         "messages": messages, "client_cpu": opts.client_cpu, "server_cpu": opts.server_cpu,
                         "ping": {"casgate": "Dovecot push hook (push_notification, Lua driver), IMAP IDLE behind it",
                                  "idle": "push hub, IMAP IDLE only"},
                         "notifications": notified, "peer_dovecot_conf": "restored to setup.sh's text at the end",
                         "options_headers": headers, "peer_started_here": started_peer},
            "raw": {"casgate": ours, "casgate_idle_only": idle, "sogo": peer, "casgate_log_warnings": gateway_warnings}}
