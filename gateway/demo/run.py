"""``casgate demo``: a whole organisation on this machine (Dovecot, Radicale, SMTP, seeded users) behind the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from .. import config as config_mod
from .. import tls
from ..context import open_context
from ..http.dovecot_push import PATH as PUSH_PATH
from ..server import Listeners
from ..services.directory import write_users_file
from .dovecot import Dovecot
from .radicale import Radicale
from .sample_data import demo_people
from .seed import seed
from .submission import SubmissionServer

DOMAIN = "example.test"
DEFAULT_PORTS = {"https": 8443, "imaps": 1993, "imap": 1143, "pop3s": 1995, "pop3": 1110}


SERVICE_LOGIN = "casgate-freebusy"
PUSH_SECRET_FILE = "dovecot-push-secret"  # in the state folder; the demo's casgate.toml names it


def _secret_file(path: Path, make) -> str:
    """Read a generated secret, or make it and keep it (mode 0600) for the next run."""
    if path.exists():
        return path.read_text()
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def demo_passwords(state_dir: Path) -> dict[str, str]:
    """Each demo user's password, generated on the first run and kept for the next."""
    text = _secret_file(state_dir / "passwords.json", lambda: json.dumps(
        {address: secrets.token_urlsafe(12) for _, address in demo_people(DOMAIN)}, indent=2))
    return json.loads(text)


def service_password(state_dir: Path) -> str:
    """The gateway's own CalDAV account (reads every calendar for free/busy), kept beside the users'."""
    return _secret_file(state_dir / "service-password", lambda: secrets.token_urlsafe(18))


def push_secret(state_dir: Path) -> str:
    """The secret the demo's Dovecot sends with each push notification, kept beside the passwords."""
    return _secret_file(state_dir / PUSH_SECRET_FILE, lambda: secrets.token_urlsafe(18))


def write_config(state_dir: Path, ports: dict[str, int], certs: tls.CertPaths, dovecot: Dovecot,
                 radicale: Radicale, smtp_port: int) -> Path:
    """The demo's casgate.toml: the same format production uses."""
    text = f"""# Written by `casgate demo`; the same format as production (see casgate.example.toml).
[server]
listen = "127.0.0.1"
https_port = {ports['https']}
imaps_port = {ports['imaps']}
imap_port = {ports['imap']}
pop3s_port = {ports['pop3s']}
pop3_port = {ports['pop3']}

[tls]
cert = "{certs.cert}"
key = "{certs.key}"
ca_file = "{certs.ca_cert}"

[state]
backend = "sqlite"
path = "state.db"

[directory]
users_file = "users.toml"

[log]
format = "text"

# Dovecot's push hook reports each delivery, APPEND and flag change at once (no 500 ms IDLE delay).
[activesync]
dovecot_push_from = ["127.0.0.1"]
dovecot_push_secret_file = "{PUSH_SECRET_FILE}"

[backends.dovecot]
type = "imap"
url = "imaps://127.0.0.1:{dovecot.imaps_port}"
managesieve = "127.0.0.1:{dovecot.managesieve_port}"

[backends.radicale-caldav]
type = "caldav"
url = "{radicale.url}"
service_login = "{SERVICE_LOGIN}"
service_password_file = "service-password"

[backends.radicale-carddav]
type = "carddav"
url = "{radicale.url}"

[backends.submission]
type = "smtp"
url = "smtp://127.0.0.1:{smtp_port}"

[domains."{DOMAIN}"]
imap = "dovecot"
caldav = "radicale-caldav"
carddav = "radicale-carddav"
smtp = "submission"
"""
    path = state_dir / "casgate.toml"
    path.write_text(text)
    write_users_file(state_dir / "users.toml", [(a, n) for n, a in demo_people(DOMAIN)])
    return path


async def run_demo(state_dir: Path, certs_dir: Path, port_base: int = 0, do_seed: bool = True,
                   stop: asyncio.Event | None = None, out=sys.stdout) -> None:
    """Start everything, print the summary, serve until ``stop`` is set (or SIGINT/SIGTERM)."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)
    ports = {k: v + port_base for k, v in DEFAULT_PORTS.items()}
    bad = {k: p for k, p in ports.items() if not 0 < p < 65536}
    if bad:
        raise config_mod.ConfigError("--port-base", f"shifts ports out of range: {bad}")
    certs, _ = tls.init_certs(certs_dir.resolve(), DOMAIN)
    passwords = demo_passwords(state_dir)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        dovecot = Dovecot(state_dir / "dovecot", certs.cert, certs.key, DOMAIN, passwords,
                          push_url=f"https://127.0.0.1:{ports['https']}{PUSH_PATH}", push_ca=certs.ca_cert,
                          push_secret=push_secret(state_dir))
        dovecot.start()  # from the main thread: the back ends are tied to it (see procs.spawn)
        stack.callback(dovecot.stop)
        radicale = Radicale(state_dir / "radicale", certs.cert, certs.key, passwords,
                            service_user=(SERVICE_LOGIN, service_password(state_dir)))
        radicale.start()
        stack.callback(radicale.stop)
        smtp = SubmissionServer("127.0.0.1", 0, tls.server_context(certs.cert, certs.key), passwords,
                                "127.0.0.1", dovecot.lmtp_port, local_domains=(DOMAIN,))
        await smtp.start()
        stack.push_async_callback(smtp.stop)
        cfg = config_mod.load(write_config(state_dir, ports, certs, dovecot, radicale, smtp.port))
        ctx = await open_context(cfg, stack)
        listeners = Listeners(ctx)
        await listeners.start()
        stack.push_async_callback(listeners.stop)
        marker = state_dir / "seeded.json"
        if do_seed and not marker.exists():  # once the gateway listens, so that Dovecot's hook finds it
            backends_ctx = tls.client_context(certs.ca_cert)
            from adapters.imap import ImapEndpoint
            counts = await seed(ImapEndpoint("127.0.0.1", dovecot.imaps_port, "implicit", backends_ctx),
                                radicale.url, certs.ca_cert, passwords, DOMAIN)
            marker.write_text(json.dumps(counts))
        endpoints = {
            "domain": DOMAIN,
            "https_url": f"https://127.0.0.1:{listeners.bound['https']}",
            "imap": {"host": "127.0.0.1", "port": listeners.bound["imap"], "tls_port": listeners.bound["imaps"]},
            "pop3": {"host": "127.0.0.1", "port": listeners.bound["pop3"], "tls_port": listeners.bound["pop3s"]},
            "ews_url": f"https://127.0.0.1:{listeners.bound['https']}/EWS/Exchange.asmx",
            "ca_cert": str(certs.ca_cert),
            "users": [{"address": a, "password": p} for a, p in passwords.items()],
            "backends": {"imap": {"host": "127.0.0.1", "port": dovecot.imaps_port},
                         "caldav_url": radicale.url, "carddav_url": radicale.url,
                         "smtp": {"host": "127.0.0.1", "port": smtp.port},
                         "lmtp": {"host": "127.0.0.1", "port": dovecot.lmtp_port}},
            "config": str(state_dir / "casgate.toml"),
            "pid": os.getpid(),
        }
        tmp = state_dir / "endpoints.json.tmp"
        tmp.write_text(json.dumps(endpoints, indent=2))
        tmp.replace(state_dir / "endpoints.json")  # readers never see a half-written file
        stack.callback((state_dir / "endpoints.json").unlink, missing_ok=True)
        print(summary(endpoints), file=out, flush=True)
        await stop.wait()
        print("casgate demo: stopping", file=out, flush=True)


def summary(e: dict) -> str:
    users = "\n".join(f"    {u['address']:<22} {u['password']}" for u in e["users"])
    return f"""
casgate demo is running for {e['domain']} (Ctrl-C stops everything)
  HTTPS     {e['https_url']}   (/healthz, /metrics)
  EWS       {e['ews_url']}   (free/busy; also /freebusy/<address>.vfb)
  IMAP      127.0.0.1:{e['imap']['tls_port']} (TLS), 127.0.0.1:{e['imap']['port']} (STARTTLS)
  POP3      127.0.0.1:{e['pop3']['tls_port']} (TLS), 127.0.0.1:{e['pop3']['port']} (STLS)
  trust CA  {e['ca_cert']}
  users
{users}
  back ends Dovecot imaps 127.0.0.1:{e['backends']['imap']['port']}, Radicale {e['backends']['caldav_url']}, \
SMTP submission 127.0.0.1:{e['backends']['smtp']['port']}
  details   {e['config']} and endpoints.json beside it
"""
