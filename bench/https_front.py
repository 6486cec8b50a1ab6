"""Benchmark "HTTPS front door": TLS handshakes and keep-alive requests/s, casgate /healthz vs static aiohttp."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from gateway.demo.procs import free_port, stop_process

from .gateway_env import HOST, GatewayEnv
from .harness import (ROOT, BenchError, Options, Progress, https_get, median, run_wrk, spawn,
                      tls_session_facts, wait_http_ok)

NAME = "https_front"
TITLE = "HTTPS front door (issue 2)"
BASELINE = "baseline (aiohttp static)"
INTRO = ("`wrk` (1 thread, pinned to its own CPU) against casgate's `GET /healthz` (JSON body, request "
         "logging and metrics middleware, back-end probe cached for 2 s) and against the smallest aiohttp "
         "app (`GET /` -> `ok`). Both servers use the same certificate (ECDSA P-256), the same TLS "
         "settings and the same event loop, and each is pinned to the same single CPU. "
         "Handshakes: every request carries `Connection: close`, so each one pays a TCP connect and a "
         "full TLS handshake (wrk never resumes sessions). Keep-alive: requests on open connections. "
         "casgate runs with its production defaults, so it writes one JSON log line per request (to a file).")

#: (key, label, Connection: close?)
MEASURES = [
    ("handshakes", "TLS handshakes/s (new connection per request)", True),
    ("keepalive", "HTTPS requests/s (keep-alive)", False),
]


def loop_of(pid: int) -> str:
    """Which event loop a running Python process uses, judged by whether uvloop's library is mapped in."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "uvloop" if "uvloop" in maps else "asyncio"


def start_baseline(stack: ExitStack, env: GatewayEnv, opts: Options, progress: Progress) -> tuple[str, int]:
    """Start bench/baseline_app.py on the server CPU; returns its URL and pid."""
    port = free_port(HOST)
    log = env.workdir / "baseline.log"
    progress.show(f"setting up: starting the aiohttp baseline on CPU {opts.server_cpu}")
    proc = spawn([sys.executable, "-m", "bench.baseline_app", "--host", HOST, "--port", str(port),
                  "--cert", str(env.certs.cert), "--key", str(env.certs.key)], opts.server_cpu, log, cwd=ROOT)
    stack.callback(stop_process, proc)
    url = f"https://{HOST}:{port}/"
    wait_http_ok(url, env.certs.ca_cert, proc, log, "baseline app")
    return url, proc.pid


def check_errors(r: dict, who: str, key: str, rnd: int, progress: Progress) -> None:
    """Warn about a few failed requests; refuse the run when more than 1% failed (the rate would be meaningless)."""
    if not r["errors"]:
        return
    what = (f"{who} {key} round {rnd}: {r['errors']} of {r['requests']} requests failed "
            f"({r['status_errors']} non-2xx/3xx, {r['connect_errors']} connect, {r['read_errors']} read, "
            f"{r['write_errors']} write, {r['timeouts']} timeouts)")
    if r["errors"] > 0.01 * max(r["requests"], 1):
        raise BenchError(what + "; not a valid measurement")
    progress.note("warning: " + what)


def summarise(raw: list[dict], key: str, label: str) -> dict:
    """One table row from the recorded rounds of one measure: medians, their ratios, per-round values."""
    def series(who: str, field: str) -> list[float]:
        return [r[field] for r in raw if r["measure"] == key and r["server"] == who and r[field] is not None]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if a and b else None

    gw, base = series("casgate", "rps"), series("baseline", "rps")
    gw_cpu, base_cpu = series("casgate", "rps_per_cpu"), series("baseline", "rps_per_cpu")
    return {
        "key": key, "metric": label,
        "casgate": round(median(gw), 1), "baseline": round(median(base), 1),
        "ratio": ratio(median(gw), median(base)),
        "casgate_per_cpu": round(median(gw_cpu), 1), "baseline_per_cpu": round(median(base_cpu), 1),
        "cpu_ratio": ratio(median(gw_cpu), median(base_cpu)),
        "server_cpu_share": {"casgate": median(series("casgate", "server_cpu_share")),
                             "baseline": median(series("baseline", "server_cpu_share"))},
        "server_cpu_busy_share": {"casgate": median(series("casgate", "server_cpu_busy_share")),
                                  "baseline": median(series("baseline", "server_cpu_busy_share"))},
        "wrk_cpu_share": {"casgate": median(series("casgate", "wrk_cpu_share")),
                          "baseline": median(series("baseline", "wrk_cpu_share"))},
        "rounds": {"casgate": [round(v, 1) for v in gw], "baseline": [round(v, 1) for v in base],
                   "ratio": [ratio(g, b) for g, b in zip(gw, base)],
                   "cpu_ratio": [ratio(g, b) for g, b in zip(gw_cpu, base_cpu)]},
    }


def run(env: GatewayEnv, opts: Options, progress: Progress) -> dict:
    """Measure; returns this benchmark's result (rows of metric, casgate, baseline, ratio, plus raw data)."""
    with ExitStack() as stack:
        base_url, base_pid = start_baseline(stack, env, opts, progress)
        gw_url = f"{env.https_url}/healthz"
        status, body = https_get(gw_url, env.certs.ca_cert)
        if status != 200:
            raise BenchError(f"casgate /healthz answered {status} before the run: {body[:300]!r}")
        targets = {"casgate": gw_url, "baseline": base_url}
        pids = {"casgate": env.proc.pid, "baseline": base_pid}
        loops = {who: loop_of(pid) for who, pid in pids.items()}
        if loops["casgate"] != loops["baseline"]:
            progress.note(f"warning: event loops differ ({loops}); the ratio compares unlike servers")
        tls_facts = tls_session_facts(HOST, env.ports["https"], env.certs.ca_cert)

        plan = [opts.warmup] * (len(targets) if opts.warmup else 0) + \
            [opts.seconds] * (opts.rounds * len(MEASURES) * len(targets))
        done = 0

        def measure(what: str, who: str, close: bool, seconds: int) -> dict:
            nonlocal done
            left = sum(plan[done:]) + 0.3 * (len(plan) - done)
            done += 1
            progress.show(f"{TITLE}: [{done}/{len(plan)}] {what}: {who} {targets[who]} "
                          f"({seconds} s, about {left:.0f} s left)")
            result = run_wrk(targets[who], opts, seconds, close=close, server_pid=pids[who])
            env.check_alive()
            return result

        if opts.warmup:
            for who in targets:
                measure("warm-up", who, True, opts.warmup)
        raw: list[dict] = []
        for rnd in range(opts.rounds):
            order = ["casgate", "baseline"] if rnd % 2 == 0 else ["baseline", "casgate"]
            for key, _, close in MEASURES:
                for who in order:
                    r = measure(f"round {rnd + 1}/{opts.rounds}, {key}", who, close, opts.seconds)
                    raw.append({"round": rnd + 1, "measure": key, "server": who, "url": targets[who], **r})
                    check_errors(r, who, key, rnd + 1, progress)
    progress.clear()
    return {
        "name": NAME, "title": TITLE, "intro": INTRO, "baseline_label": BASELINE,
        "rows": [summarise(raw, key, label) for key, label, _ in MEASURES],
        "settings": {"seconds": opts.seconds, "rounds": opts.rounds, "connections": opts.connections,
                     "wrk_threads": 1, "server_cpu": opts.server_cpu, "client_cpu": opts.client_cpu,
                     "loop": loops, "tls": tls_facts, "targets": targets},
        "raw": raw,
    }
