"""Paired IMAP/POP3 measurements: the targets take turns in small blocks, so they share the machine's moods.

run_all.sh measures one target for minutes, then the next; on a shared machine the baseline's own figure
moves by 20-30 % between rounds, which swamps differences of a few per cent. Here every block runs the same
small piece of work against each target in turn (the order rotating), with the peers' own test functions
(bench_imap.py: imaplib and poplib), and the figures are medians over blocks. Prints one JSON object.

    python3 bench/imap_interleaved.py PEERS_DIR direct=127.0.0.1:10143:10110 gateway=127.0.0.1:12143:12110 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peers", help="the ../shared/peers/imap folder (its bench_imap.py does the work)")
    ap.add_argument("targets", nargs="+", metavar="NAME=HOST:IMAPPORT:POP3PORT",
                    help="the first one is the baseline")
    ap.add_argument("--login-blocks", type=int, default=40, help="blocks of --login-runs logins per target")
    ap.add_argument("--login-runs", type=int, default=5)
    ap.add_argument("--fetch-blocks", type=int, default=5, help="UID FETCH 1:* passes per target")
    ap.add_argument("--pop3-blocks", type=int, default=3, help="POP3 LIST+RETR-all runs per target")
    ap.add_argument("--no-pop3", action="append", default=[], metavar="NAME",
                    help="leave this target out of the POP3 runs (stock nginx needs minutes for one)")
    a = ap.parse_args()
    sys.path.insert(0, a.peers)
    import bench_imap  # noqa: PLC0415 - the peers' module, found at run time

    targets = []
    for spec in a.targets:
        name, _, ep = spec.partition("=")
        host, iport, pport = ep.split(":")
        targets.append((name, argparse.Namespace(
            host=host, port=int(iport), pop3_port=int(pport), user="alice@example.test", password="secret",
            starttls=False, timeout=60.0, login_runs=a.login_runs, fetch_passes=1, pop3_budget=60.0)))

    def turns(block: int):
        k = block % len(targets)
        return targets[k:] + targets[:k]

    login: dict[str, list[float]] = {}
    for block in range(a.login_blocks):
        for name, ns in turns(block):
            login.setdefault(name, []).append(bench_imap.t_login_latency(ns)["median_ms"])
        print(f"[interleaved] login block {block + 1}/{a.login_blocks}", file=sys.stderr, flush=True)
    fetch: dict[str, list[float]] = {}
    for block in range(a.fetch_blocks):
        for name, ns in turns(block):
            fetch.setdefault(name, []).append(bench_imap.t_fetch_all(ns)["mb_per_s"])
        print(f"[interleaved] fetch block {block + 1}/{a.fetch_blocks}", file=sys.stderr, flush=True)
    pop3: dict[str, list[float]] = {}
    for block in range(a.pop3_blocks):
        for name, ns in turns(block):
            if name not in a.no_pop3:
                pop3.setdefault(name, []).append(bench_imap.t_pop3(ns)["mb_per_s"])
        print(f"[interleaved] pop3 block {block + 1}/{a.pop3_blocks}", file=sys.stderr, flush=True)

    base = targets[0][0]

    def summary(series: dict[str, list[float]], higher: bool) -> dict:
        out = {}
        for name, xs in series.items():
            pairs = [(x / b if higher else b / x) for x, b in zip(xs, series[base]) if x and b]
            out[name] = {"median": statistics.median(xs), "blocks": len(xs),
                         "ratio_median": statistics.median(pairs) if pairs else None}
            if not higher:  # times: also the paired difference, e.g. a proxy's login overhead
                out[name]["over_baseline_median"] = statistics.median(x - b for x, b in zip(xs, series[base]))
        return out

    json.dump({"baseline": base, "login_ms": summary(login, False), "fetch_mb_s": summary(fetch, True),
               "pop3_mb_s": summary(pop3, True)}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
