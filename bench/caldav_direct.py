"""Baseline worker: fetch calendars' events straight from a CalDAV server with the caldav library, on request."""

# Runs as its own (pinned) process. Each line on stdin is a JSON job {"calendars": [url, ...],
# "start": iso, "end": iso}; each answer on stdout is {"seconds", "cpu_seconds", "objects"}. The
# calendars of one job are fetched concurrently by --workers threads, each with its own DAVClient
# (opened for the job, kept alive across that thread's calendars), with the time-range query the
# gateway's CalDAV adapter sends: Calendar.search(event=True, start, end, expand=False).

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from caldav.collection import Calendar
from caldav.davclient import DAVClient


def _job(args: argparse.Namespace, job: dict) -> dict:
    start, end = dt.datetime.fromisoformat(job["start"]), dt.datetime.fromisoformat(job["end"])
    local = threading.local()
    clients: list[DAVClient] = []
    lock = threading.Lock()

    def fetch(url: str) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = DAVClient(url=args.url, username=args.login, password=args.password,
                                              auth_type="basic", ssl_verify_cert=args.ca, timeout=60,
                                              enable_rfc6764=False)
            with lock:
                clients.append(client)
        found = Calendar(client=client, url=url).search(event=True, start=start, end=end, expand=False)
        return sum(1 for item in found if item.data)

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        objects = sum(pool.map(fetch, job["calendars"]))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for client in clients:
        client.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "objects": objects}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--login", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--workers", type=int, required=True)
    args = p.parse_args()
    with open(args.password_file) as f:
        args.password = f.read().strip()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_job(args, json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
