"""Benchmark "IMAP4 and POP3 front ends": casgate vs Dovecot direct and nginx's mail proxy, on the peers' workload.

The workload and its tools are ../shared/peers/imap (set up, started and seeded here when needed): a
Dovecot with 5,000 messages (90 MB) in alice's INBOX, nginx's mail proxy in front of it, and
bench_imap.py driven by run_all.sh. casgate joins as one more target, relaying IMAP to that Dovecot
in plain text as nginx does, and translating POP3 onto the same INBOX through its MailStore.
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
from gateway.demo.procs import free_port, stop_process, wait_for_port

from .gateway_env import HOST, casgate_command
from .harness import ROOT, BenchError, Options, Progress, spawn

NAME = "imap_front"
TITLE = "IMAP4 and POP3 front ends (issue 5)"
PEERS = ROOT.parent / "shared" / "peers" / "imap"
PEERS_ROOT = Path(os.environ.get("PEERS_ROOT", "/var/tmp/peers-imap"))
INTRO = (
    "The peers' workload (`../shared/peers/imap`: Dovecot from Debian with 5,000 messages, 90 MB, in one "
    "INBOX; `bench_imap.py` driven by `run_all.sh`, rounds interleaved over all targets in one run). "
    "Baseline: Dovecot direct. Peer: nginx's mail proxy (stock settings) in front of the same Dovecot. casgate "
    "relays IMAP to that Dovecot after logging the user in there (plain text on loopback, as nginx does) and "
    "serves POP3 by translating it onto the INBOX through its MailStore (IMAP), not by proxying Dovecot's POP3. "
    "Ratios are casgate / direct with higher better, so for times they are direct / casgate. Targets: FETCH "
    "at least 0.95, login overhead no more than nginx's, POP3 at least 0.7, at most 12 KB per idle proxied "
    "session on a plain-text client connection. The paired rows repeat login, FETCH and POP3 with the targets "
    "taking turns in small blocks, which is the fairer comparison on a shared machine.")

GATEWAY_CONFIG = """# Written by bench/imap_front.py.
[server]
listen = "{host}"
https_port = {https}
imap_port = {imap}
imaps_port = 0
pop3_port = {pop3}
pop3s_port = 0
shutdown_grace = 1.0
[tls]
cert = "{cert}"
key = "{key}"
[state]
path = "state.db"
[directory]
users_file = "users.toml"
[log]
level = "warning"
[imap]
allow_plaintext_loopback = true
max_connections_per_ip = 0
max_connections = 0
[pop3]
allow_plaintext_loopback = true
max_connections_per_ip = 0
max_connections = 0
[backends.peers]
type = "imap"
url = "imap://127.0.0.1:{backend_port}"
tls = "none"
[domains."example.test"]
imap = "peers"
"""

#: (key, label, getter, higher_is_better)
METRICS = [
    ("login", "(i) login+select+logout latency, median ms", lambda t: t["login_latency"]["median_ms"], False),
    ("fetch", "(ii) UID FETCH 1:* BODY.PEEK[] MB/s (imaplib)", lambda t: t["fetch_all"]["mb_per_s"], True),
    ("fetchraw", "(ii-raw) the same FETCH MB/s (asyncio client)", lambda t: t["fetch_raw"]["mb_per_s"], True),
    ("conc", "(iii) 200 concurrent sessions, wall s", lambda t: t["concurrent"]["wall_s"], False),
    ("pop3", "(iv) POP3 LIST+RETR all MB/s (poplib)", lambda t: t["pop3"]["mb_per_s"], True),
    ("pop3raw", "(iv-raw) the same POP3 MB/s (socket client)", lambda t: t["pop3_raw"]["mb_per_s"], True),
]


#: (key, label, series in imap_interleaved.py's output)
PAIRED = [
    ("login_p", "(i, paired) login+select+logout latency, median ms", "login_ms"),
    ("fetch_p", "(ii, paired) UID FETCH 1:* MB/s (imaplib)", "fetch_mb_s"),
    ("pop3_p", "(iv, paired) POP3 LIST+RETR all MB/s (poplib; stock nginx left out)", "pop3_mb_s"),
]


def _ports_env() -> dict[str, int]:
    env = {}
    for line in (PEERS_ROOT / "etc" / "ports.env").read_text().splitlines():
        k, _, v = line.partition("=")
        if v.strip().isdigit():
            env[k.strip()] = int(v)
    return env


def _sh(progress: Progress, what: str, cmd: list[str], log: Path, env: dict | None = None) -> None:
    progress.show(what)
    with open(log, "ab") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=out, cwd=PEERS, env=env)
    if rc:
        raise BenchError(f"{what} failed (exit {rc}); see {log}")


def _ratio(v: float | None, base: float | None, higher: bool) -> float | None:
    if not v or not base:
        return None
    return v / base if higher else base / v


def _medians(out: Path) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict]] = {}
    for f in sorted(out.glob("run*-*.json")):
        r = json.loads(f.read_text())
        runs.setdefault(r["label"], []).append(r["tests"])
    med: dict[str, dict[str, float]] = {}
    for label, tests in runs.items():
        for key, _, get, _ in METRICS:
            xs = []
            for t in tests:
                try:
                    xs.append(get(t))
                except (KeyError, TypeError):
                    pass
            if xs:
                med.setdefault(label, {})[key] = statistics.median(xs)
    return med


def _idle(f: Path, group: str) -> float | None:
    """RSS KB per held connection of one process group in a bench_imap.py --mode idle result file."""
    if not f.exists():
        return None
    groups = (json.loads(f.read_text())["tests"].get("idle") or {}).get("groups", {})
    return groups.get(group, {}).get("rss_kb_per_conn")


def run(env, opts: Options, progress: Progress) -> dict:
    """Run the peers' whole procedure with casgate added as a target; return the result for docs."""
    if not (PEERS / "run_all.sh").exists():
        raise BenchError(f"{PEERS} is missing: the IMAP peers benchmark comes from ../shared/peers/imap")
    rounds = max(1, min(opts.rounds, 5))
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="casgate-imapbench-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        log = work / "peers.log"
        _sh(progress, "imap_front: setting up the peers (Dovecot, nginx mail proxy)", ["bash", "setup.sh"], log)
        _sh(progress, "imap_front: starting the peers", ["bash", "start.sh"], log)
        stack.callback(subprocess.call, ["bash", "stop.sh"], cwd=PEERS, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        pe = _ports_env()
        _sh(progress, "imap_front: seeding 5,000 messages (once)",
            ["python3", "seed.py", "--port", str(pe["IMAP_PORT"]), "--if-needed"], log)
        certs, _ = tls.init_certs(work / "certs", "example.test")
        ports = {"https": free_port(HOST), "imap": free_port(HOST), "pop3": free_port(HOST)}
        (work / "casgate.toml").write_text(GATEWAY_CONFIG.format(
            host=HOST, cert=certs.cert, key=certs.key, backend_port=pe["IMAP_PORT"], **ports))
        (work / "users.toml").write_text('[[user]]\naddress = "alice@example.test"\n'
                                         '[[user]]\naddress = "bob@example.test"\n')
        gw_log = work / "casgate.log"
        proc = spawn([*casgate_command(), "serve", "-c", str(work / "casgate.toml")], None, gw_log, cwd=work)
        stack.callback(stop_process, proc)
        for port in ports.values():
            wait_for_port(HOST, port, 30, proc, "casgate", gw_log)
        out = work / "results"
        # IDLE_TARGETS must name the gateway itself: run_all.sh fixes its default before adding EXTRA_TARGETS.
        run_env = dict(os.environ, RUNS=str(rounds), TARGETS="direct nginx", IDLE_TARGETS="nginx gateway",
                       OUT=str(out),
                       EXTRA_TARGETS=f"gateway={HOST}:{ports['imap']}:{ports['pop3']}",
                       IDLE_MEM_PIDS=f"gateway={proc.pid}")
        _sh(progress, f"imap_front: run_all.sh, {rounds} rounds over direct, nginx, casgate (about "
                      f"{3 * rounds + 3} minutes)", ["bash", "run_all.sh"], log, run_env)
        paired_out = work / "interleaved.json"
        endpoints = [f"direct={HOST}:{pe['IMAP_PORT']}:{pe['POP3_PORT']}",
                     f"nginx={HOST}:{pe['NGX_IMAP_PORT']}:{pe['NGX_POP3_PORT']}",
                     f"gateway={HOST}:{ports['imap']}:{ports['pop3']}"]
        progress.show("imap_front: interleaved login, FETCH and POP3 blocks (about 2 minutes)")
        with open(paired_out, "wb") as out_f, open(log, "ab") as err_f:
            rc = subprocess.call(["python3", str(ROOT / "bench" / "imap_interleaved.py"), str(PEERS), *endpoints,
                                  "--no-pop3", "nginx"], stdout=out_f, stderr=err_f)
        if rc:
            raise BenchError(f"imap_interleaved.py failed (exit {rc}); see {log}")
        paired = json.loads(paired_out.read_text())
        tls_out = work / "idle-tls.json"
        _sh(progress, "imap_front: idle memory with TLS (STARTTLS) client connections",
            ["python3", "bench_imap.py", HOST, str(ports["imap"]), "--mode", "idle", "--starttls",
             "--label", "gateway-tls", "--json", str(tls_out), "--mem-pid", f"gateway={proc.pid}"], log)
        med = _medians(out)
        idle_plain = _idle(out / "idle-gateway.json", "gateway")
        idle_nginx = _idle(out / "idle-nginx.json", "nginx_all")  # master and workers, as casgate's whole process
        idle_tls = _idle(tls_out, "gateway")
        summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
        keep = ROOT / "bench" / "results" / "imap_front_peers"  # raw per-target JSON, kept for later reading
        shutil.rmtree(keep, ignore_errors=True)
        if out.exists():
            shutil.copytree(out, keep)
            if tls_out.exists():
                shutil.copy(tls_out, keep / "idle-gateway-tls.json")
        if proc.poll() is not None:
            raise BenchError(f"casgate exited during the benchmark; see {gw_log}")
    rows = []
    direct, nginx, ours = med.get("direct", {}), med.get("nginx", {}), med.get("gateway", {})
    for key, label, _, higher in METRICS:
        rows.append({"key": key, "metric": label, "casgate": ours.get(key), "baseline": direct.get(key),
                     "ratio": _ratio(ours.get(key), direct.get(key), higher), "peer": nginx.get(key),
                     "peer_ratio": _ratio(nginx.get(key), direct.get(key), higher)})
    for key, label, series in PAIRED:
        got = paired.get(series, {})
        ours_p, direct_p, nginx_p = got.get("gateway", {}), got.get("direct", {}), got.get("nginx", {})
        rows.append({"key": key, "metric": label, "casgate": ours_p.get("median"), "baseline": direct_p.get("median"),
                     "ratio": ours_p.get("ratio_median"), "peer": nginx_p.get("median"),
                     "peer_ratio": nginx_p.get("ratio_median")})
    rows.append({"key": "idle", "metric": "idle proxied IMAP session, RSS KB per connection (1,000 held)",
                 "casgate": idle_plain, "baseline": None, "ratio": None, "peer": idle_nginx, "peer_ratio": None})
    rows.append({"key": "idle_tls", "metric": "the same with TLS (STARTTLS) client connections",
                 "casgate": idle_tls, "baseline": None, "ratio": None, "peer": None, "peer_ratio": None})
    login_overhead = (ours.get("login", 0) - direct.get("login", 0)) if direct.get("login") else None
    nginx_overhead = (nginx.get("login", 0) - direct.get("login", 0)) if direct.get("login") else None
    paired_login = paired.get("login_ms", {})
    paired_over = {t: paired_login.get(t, {}).get("over_baseline_median") for t in ("gateway", "nginx")}
    return {"name": NAME, "title": TITLE, "intro": INTRO, "baseline_label": "Dovecot direct",
            "peer_label": "nginx mail proxy", "rows": rows,
            "extra_notes": [f"Login overhead over direct: casgate {login_overhead:+.2f} ms, nginx "
                            f"{nginx_overhead:+.2f} ms (medians)." if login_overhead is not None and
                            nginx_overhead is not None else "Login overhead: n/a.",
                            f"Login overhead over direct, paired blocks: casgate {paired_over['gateway']:+.2f} ms, "
                            f"nginx {paired_over['nginx']:+.2f} ms (median of per-block differences)."
                            if None not in paired_over.values() else "Paired login overhead: n/a.",
                            "Rows marked (paired) come from bench/imap_interleaved.py: the targets take turns "
                            "in small blocks (5 logins, one FETCH pass, one POP3 run), so machine noise hits "
                            "them alike; their ratio is the median of per-block ratios."],
            "settings": {"rounds": rounds, "seconds": "-", "connections": "1 / 200 / 1,000 (per test)",
                         "loop": "uvloop"},
            "peers_summary": summary}
