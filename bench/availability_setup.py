"""Availability benchmark set-up: seeded Radicale, a casgate with a CalDAV back end, the direct-fetch worker."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from gateway.demo.procs import free_port, stop_process
from gateway.demo.radicale import Radicale

from . import radicale_seed
from .calendar_data import address
from .gateway_env import DOMAIN, HOST, GatewayEnv, casgate_command, config_text
from .harness import ROOT, BenchError, Options, Progress, _die_with_parent, log_tail, pinned, spawn, wait_http_ok

REQUESTER = f"bench@{DOMAIN}"  # the gateway_env user: Dovecot knows it, so the gateway lets it log in
#: availability.timeout for the benchmark's gateway. The default (10 s per mailbox, counted from the start of
#: the request) fails every mailbox of a cold 100-mailbox request on a 2-CPU machine, which leaves nothing
#: to time; the back end's own timeout (10 s per HTTP request) still applies.
AVAILABILITY_TIMEOUT = 10.0  # the production default


@dataclass
class AvailabilityEnv:
    """What the measurements talk to."""

    radicale: Radicale
    gateway: subprocess.Popen
    gateway_log: Path
    ews_url: str
    https_port: int
    login: tuple[str, str]
    worker: subprocess.Popen
    worker_log: Path
    seeded: int
    warm_seconds: float

    def calendar_url(self, user: int) -> str:
        return self.radicale.url.rstrip("/") + radicale_seed.calendar_path(user)

    def check_alive(self) -> None:
        processes = [("casgate", self.gateway, self.gateway_log), ("Radicale", self.radicale.proc, self.radicale.log),
                     ("the caldav worker", self.worker, self.worker_log)]
        for what, proc, log in processes:
            if proc is None or proc.poll() is not None:
                raise BenchError(f"{what} exited; log {log}:\n{log_tail(log)}")


def gateway_config(https_port: int, env: GatewayEnv, radicale: Radicale) -> str:
    """casgate.toml: HTTPS only, the bench Dovecot for logins, Radicale as CalDAV back end (service account)."""
    login, password = radicale.service_user
    ports = {"https": https_port, "imaps": 0, "imap": 0, "pop3s": 0, "pop3": 0}
    return config_text(
        ports, env.certs, env.dovecot.imaps_port,
        tables=f"\n[availability]\ntimeout = {AVAILABILITY_TIMEOUT:g}\n",
        backends=f'\n[backends.radicale]\ntype = "caldav"\nurl = "{radicale.url}"\n'
                 f'service_login = "{login}"\nservice_password = "{password}"\n',
        routes='caldav = "radicale"\n')


def users_toml(users: int) -> str:
    entries = [(REQUESTER, "Bench User")] + [(address(n), f"User {n:03d}") for n in range(users)]
    return "".join(f'[[user]]\naddress = "{a}"\nname = "{name}"\n\n' for a, name in entries)


def start_worker(stack: ExitStack, root: Path, radicale: Radicale, ca: Path, cpu: int, workers: int
                 ) -> tuple[subprocess.Popen, Path]:
    """The caldav direct-fetch worker (bench/caldav_direct.py), pinned to ``cpu``, ready for jobs."""
    secret = root / "service-password"
    secret.write_text(radicale.service_user[1])
    secret.chmod(0o600)
    log = root / "caldav_direct.log"
    cmd = [sys.executable, "-m", "bench.caldav_direct", "--url", radicale.url, "--login", radicale.service_user[0],
           "--password-file", str(secret), "--ca", str(ca), "--workers", str(workers)]
    with open(log, "ab") as err:
        proc = subprocess.Popen(pinned(cmd, cpu), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)
    stack.callback(stop_process, proc)
    stack.callback(proc.stdin.close)
    if not select.select([proc.stdout], [], [], 60)[0] or not json.loads(proc.stdout.readline() or "{}").get("ready"):
        raise BenchError(f"the caldav worker did not start; log {log}:\n{log_tail(log)}")
    return proc, log


def direct_fetch(env: AvailabilityEnv, calendars: list[str], start, end) -> dict:
    """One job for the worker: fetch ``calendars`` over [start, end); returns its timing."""
    env.worker.stdin.write((json.dumps({"calendars": calendars, "start": start.isoformat(),
                                        "end": end.isoformat()}) + "\n").encode())
    env.worker.stdin.flush()
    line = env.worker.stdout.readline()
    if not line:
        env.worker.wait(5)
        raise BenchError(f"the caldav worker died; log {env.worker_log}:\n{log_tail(env.worker_log)}")
    return json.loads(line)


def start_all(stack: ExitStack, env: GatewayEnv, opts: Options, progress: Progress, users: int, per_user: int,
              workers: int) -> AvailabilityEnv:
    """Seed and start Radicale (client CPU), casgate (server CPU) and the direct-fetch worker (server CPU)."""
    root = env.workdir / "availability"
    root.mkdir()
    seeded = radicale_seed.write_calendars(root / "radicale" / "collections", users, per_user, progress)
    progress.show(f"setting up: starting Radicale on CPU {opts.client_cpu}")
    radicale = radicale_seed.start(stack, root / "radicale", env.certs, users, opts.client_cpu)
    warm = radicale_seed.warm_item_cache(radicale, env.certs, radicale.service_user, users, per_user,
                                         [opts.client_cpu, opts.server_cpu], progress)
    progress.show("setting up: checking that a caldav time-range query sees every seeded event")
    radicale_seed.verify_query(radicale, radicale.service_user, env.certs.ca_cert, 0, per_user)

    gw_dir = root / "casgate"
    gw_dir.mkdir()
    https_port = free_port(HOST)
    (gw_dir / "casgate.toml").write_text(gateway_config(https_port, env, radicale))
    (gw_dir / "users.toml").write_text(users_toml(users))
    os.chmod(gw_dir / "casgate.toml", 0o600)  # it holds the service password
    progress.show(f"setting up: starting casgate with a CalDAV back end on CPU {opts.server_cpu}")
    log = gw_dir / "casgate.log"
    proc = spawn([*casgate_command(), "serve", "-c", str(gw_dir / "casgate.toml")], opts.server_cpu, log, cwd=gw_dir)
    stack.callback(stop_process, proc)
    base = f"https://{HOST}:{https_port}"
    wait_http_ok(f"{base}/healthz", env.certs.ca_cert, proc, log, "casgate (availability) /healthz", timeout=60)

    progress.show(f"setting up: starting the caldav direct-fetch worker on CPU {opts.server_cpu}")
    worker, worker_log = start_worker(stack, root, radicale, env.certs.ca_cert, opts.server_cpu, workers)
    return AvailabilityEnv(radicale, proc, log, f"{base}/EWS/Exchange.asmx", https_port,
                           (REQUESTER, env.users[REQUESTER]), worker, worker_log, seeded, warm)
