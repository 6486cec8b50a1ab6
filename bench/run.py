"""Run casgate's benchmarks against same-run baselines; print a table, write bench/results/ and docs/benchmarks.md."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script (`python bench/run.py`): make `bench` importable

from bench import report  # noqa: E402
from bench.harness import BenchError, Options, Progress, check_cpus, machine_info  # noqa: E402

#: Benchmark modules (under bench/) in the order they run and appear in docs/benchmarks.md.
#: Each has NAME, TITLE and run(env, opts, progress) -> result dict (see bench/https_front.py).
BENCHMARKS = ["https_front", "availability", "autodiscover", "imap_front", "eas_sync", "eas_peer",
              "eas_ping_scale", "owa_list"]

DESCRIPTION = """\
Measure casgate against a baseline in the same run and write the results.

What happens: a throwaway gateway is set up in a temporary folder under /var/tmp (its own
development certificates, a private Dovecot as the IMAP back end, `casgate serve` pinned to
one CPU), then each benchmark starts its baseline server on the same CPU and drives both with
`wrk` pinned to another CPU, over loopback only. Gateway and baseline measurements alternate
over several rounds; the medians and their ratio (casgate / baseline, higher is better) are
reported, plus the ratio of requests per server CPU-second (read from /proc), which other jobs
on a shared machine disturb far less. Every process started here is stopped at the end, also on
errors and Ctrl-C; a run where more than 1% of requests fail is refused.

Benchmarks: {names}.

Output: a table on stdout, live progress on stderr, bench/results/latest.json (this run: raw
wrk numbers, per-round values, machine facts), bench/results/<benchmark>.json (kept between
runs) and docs/benchmarks.md (regenerated from those files).

Needs: wrk and taskset (Debian packages wrk, util-linux), Dovecot (make install), 2 CPUs.
The HTTP benchmarks take about 1.5 minutes together. imap_front runs the peers' IMAP/POP3
procedure from ../shared/peers/imap (it installs and starts Dovecot and nginx's mail proxy
there, loopback only) with casgate as a third target: about 3 minutes per round plus 3 for
the idle-memory tests. eas_sync seeds the bench user's INBOX over IMAP (--eas-messages, 10,000
by default; seconds to a minute, once) and times a phone's initial ActiveSync Sync of it and 200
no-change Syncs against the same work done with raw IMAP on Dovecot (at most 3 rounds). eas_peer
sets up, starts and seeds the SOGo ActiveSync peer of ../shared/peers/sogo (Debian packages, loopback
only, root needed) and runs its bench_eas.py against SOGo and against casgate on the same Dovecot, taking
turns (at most 3 rounds, 1-2 minutes each, plus a few minutes of package installs on first use).
eas_ping_scale holds --pings ActiveSync Pings (10,000 by default) from --ping-users users (2,000) on one
gateway, with TLS and with plain HTTP, against a bare aiohttp handler: memory per held Ping, delivery-to-answer
latency and IMAP commands per user per minute (its own Dovecot; about 6-8 minutes at the defaults).
owa_list seeds a folder of --owa-messages messages (100,000 by default; a few minutes, once) and times the web
app's first page of it against the raw IMAP commands that page costs, sent straight to Dovecot (about a minute)."""


def _load(name: str):
    return importlib.import_module(f"bench.{name}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=DESCRIPTION.format(names=", ".join(
        f"{n} ({_load(n).TITLE})" for n in BENCHMARKS)), formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    p.add_argument("--seconds", type=int, default=d.seconds, metavar="N",
                   help="length of each wrk measurement in seconds, 1-60 (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, metavar="N",
                   help="how many times each gateway/baseline pair is measured; medians are kept, "
                        "1-15 (default: %(default)s)")
    p.add_argument("--connections", type=int, default=d.connections, metavar="N",
                   help="concurrent connections wrk keeps open, 1-1000 (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, metavar="N",
                   help="seconds of unrecorded load on each server before the rounds, 0-30 (default: %(default)s)")
    p.add_argument("--server-cpu", type=int, default=d.server_cpu, metavar="CPU",
                   help="CPU the gateway and the baselines are pinned to (default: %(default)s)")
    p.add_argument("--client-cpu", type=int, default=d.client_cpu, metavar="CPU",
                   help="CPU wrk is pinned to (default: %(default)s)")
    p.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only this benchmark (repeatable; one of: {', '.join(BENCHMARKS)}); the "
                        "others keep their last results in docs/benchmarks.md")
    p.add_argument("--owa-messages", type=int, default=100_000, metavar="N",
                   help="messages in the folder owa_list pages through, 100-1000000 (default: %(default)s)")
    p.add_argument("--eas-messages", type=int, default=10_000, metavar="N",
                   help="messages in the INBOX eas_sync syncs, 1-100000 (default: %(default)s)")
    p.add_argument("--pings", type=int, default=10_000, metavar="N",
                   help="Pings eas_ping_scale holds at once, 1-15000 (default: %(default)s)")
    p.add_argument("--ping-users", type=int, default=2_000, metavar="N",
                   help="users those Pings come from, 1 to --pings (default: %(default)s)")
    p.add_argument("--ping-profile", choices=["idle", "hook"], default="idle",
                   help="eas_ping_scale's gateway set-up: idle (the defaults: IMAP IDLE per waiting user) or hook "
                        "(Dovecot's push hook, no IDLE, rare looks; its result is kept as eas_ping_scale_hook) "
                        "(default: %(default)s)")
    p.add_argument("--no-docs", action="store_true",
                   help="print the table only; leave bench/results/ and docs/benchmarks.md alone")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary folder (config, logs, certificates) and print its path")
    return p


def _check_ranges(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for name, lo, hi in (("seconds", 1, 60), ("rounds", 1, 15), ("connections", 1, 1000), ("warmup", 0, 30)):
        v = getattr(a, name)
        if not lo <= v <= hi:
            p.error(f"--{name} must be between {lo} and {hi} (got {v})")
    if not 1 <= a.eas_messages <= 100_000:
        p.error(f"--eas-messages must be between 1 and 100000 (got {a.eas_messages})")
    if not 100 <= a.owa_messages <= 1_000_000:
        p.error(f"--owa-messages must be between 100 and 1000000 (got {a.owa_messages})")
    if not 1 <= a.pings <= 15_000 or not 1 <= a.ping_users <= a.pings:
        p.error(f"--pings must be between 1 and 15000 and --ping-users between 1 and --pings "
                f"(got {a.pings} and {a.ping_users})")
    if a.server_cpu == a.client_cpu:
        p.error("--server-cpu and --client-cpu must differ, or wrk steals the server's CPU")


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    _check_ranges(p, a)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    names = a.only or BENCHMARKS
    progress = Progress()
    t0 = time.monotonic()
    results: dict[str, dict] = {}
    try:
        opts = check_cpus(Options(seconds=a.seconds, rounds=a.rounds, connections=a.connections,
                                  warmup=a.warmup, server_cpu=a.server_cpu, client_cpu=a.client_cpu))
        machine = machine_info()
        from bench.gateway_env import start_gateway
        with ExitStack() as stack:
            try:
                env = start_gateway(stack, opts, progress, keep=a.keep_temp)
                for name in names:
                    extra = {"messages": a.eas_messages} if name == "eas_sync" else {}
                    if name == "owa_list":
                        extra = {"messages": a.owa_messages}
                    if name == "eas_ping_scale":
                        extra = {"pings": a.pings, "users": a.ping_users, "profile": a.ping_profile}
                    results[name] = _load(name).run(env, opts, progress, **extra)
            finally:
                progress.show("stopping every process started for the benchmark")
        progress.clear()
    except KeyboardInterrupt:
        progress.note("bench: interrupted; every process it started has been stopped")
        return 130
    except BenchError as exc:
        progress.note(f"bench: {exc}")
        return 1
    elapsed = time.monotonic() - t0
    for name in names:
        print(report.console_table(results[name]))
        print()
    print(f"{machine['date']}, {machine['nproc']} CPUs, Python {machine['python']}; medians of {opts.rounds} "
          f"rounds x {opts.seconds} s; ratio = casgate / baseline (higher is better); run took {elapsed:.0f} s")
    if not a.no_docs:
        for name in names:
            report.save_result(results[name], machine)
        latest = report.save_latest({"machine": machine, "options": dataclasses.asdict(opts),
                                     "elapsed_seconds": round(elapsed, 1), "benchmarks": results})
        docs = report.write_docs(BENCHMARKS)
        print(f"wrote {latest.relative_to(ROOT)} and {docs.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
