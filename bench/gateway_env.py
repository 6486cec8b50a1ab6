"""A throwaway gateway for benchmarks: temp folder, dev certificates, private Dovecot, pinned `casgate serve`."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from gateway import tls
from gateway.demo.dovecot import Dovecot
from gateway.demo.procs import free_port, stop_process

from .harness import BenchError, Options, Progress, log_tail, spawn, wait_http_ok

DOMAIN = "example.test"
HOST = "127.0.0.1"


def casgate_command() -> list[str]:
    """The `casgate` console script of this venv (``python -m gateway`` when it is missing)."""
    script = Path(sys.executable).parent / "casgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def push_receiver_table(secret_file: str) -> str:
    """casgate.toml's [activesync] table that lets a Dovecot on loopback call /casgate/dovecot-push (its push hook,
    gateway/services/dovecot_push.py) with the secret kept in ``secret_file``."""
    return f'\n[activesync]\ndovecot_push_from = ["{HOST}"]\ndovecot_push_secret_file = "{secret_file}"\n'


def write_secret(path: Path) -> str:
    """A new random secret, saved in ``path`` (mode 0600) for the gateway to read, and returned."""
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def config_text(ports: dict[str, int], certs: tls.CertPaths, dovecot_imaps_port: int, *, tables: str = "",
                backends: str = "", routes: str = "", imap_url: str = "", imap_tls: str = "auto") -> str:
    """casgate.toml for a benchmark: the bench Dovecot as IMAP back end, production defaults otherwise.

    ``tables`` (e.g. [availability]) and ``backends`` ([backends.*]) are inserted as they are;
    ``routes`` adds lines to the domain's table (e.g. ``caldav = "radicale"``); ``imap_url`` and
    ``imap_tls`` put another IMAP server (a peer's Dovecot) in the bench Dovecot's place.
    """
    imap_url = imap_url or f"imaps://{HOST}:{dovecot_imaps_port}"
    return f"""# Written by bench/ for one benchmark run.
[server]
listen = "{HOST}"
https_port = {ports['https']}
imaps_port = {ports['imaps']}
imap_port = {ports['imap']}
pop3s_port = {ports['pop3s']}
pop3_port = {ports['pop3']}
shutdown_grace = 1.0

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
level = "info"
format = "json"
{tables}
[backends.dovecot]
type = "imap"
url = "{imap_url}"
tls = "{imap_tls}"
{backends}
[domains."{DOMAIN}"]
imap = "dovecot"
{routes}"""


@dataclass
class GatewayEnv:
    """Everything a benchmark may talk to: the gateway's ports, its certificates, the Dovecot behind it."""

    workdir: Path
    certs: tls.CertPaths
    ports: dict[str, int]
    users: dict[str, str]
    dovecot: Dovecot
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    @property
    def https_url(self) -> str:
        return f"https://{HOST}:{self.ports['https']}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"casgate exited with status {self.proc.returncode}; log {self.log}:\n"
                             f"{log_tail(self.log)}")


def start_gateway(stack: ExitStack, opts: Options, progress: Progress, keep: bool = False) -> GatewayEnv:
    """Start Dovecot and the gateway; ``stack`` stops them and removes the folder (unless ``keep``)."""
    workdir = Path(tempfile.mkdtemp(prefix="casgate-bench-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)  # Dovecot's mail user must be able to enter it
    if keep:
        stack.callback(progress.note, f"kept the benchmark folder {workdir}")
    else:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    progress.show("setting up: certificates")
    certs, _ = tls.init_certs(workdir / "certs", DOMAIN)
    users = {f"bench@{DOMAIN}": secrets.token_urlsafe(12)}
    progress.show("setting up: starting Dovecot")
    dovecot = Dovecot(workdir / "dovecot", certs.cert, certs.key, DOMAIN, users)
    stack.callback(dovecot.stop)
    try:
        dovecot.start()
    except RuntimeError as exc:
        raise BenchError(f"Dovecot did not start: {exc}") from None
    ports = {name: free_port(HOST) for name in ("https", "imaps", "imap", "pop3s", "pop3")}
    config = workdir / "casgate.toml"
    config.write_text(config_text(ports, certs, dovecot.imaps_port))
    (workdir / "users.toml").write_text(f'[[user]]\naddress = "bench@{DOMAIN}"\nname = "Bench User"\n')
    progress.show(f"setting up: starting casgate on CPU {opts.server_cpu}")
    log = workdir / "casgate.log"
    proc = spawn([*casgate_command(), "serve", "-c", str(config)], opts.server_cpu, log, cwd=workdir)
    stack.callback(stop_process, proc)
    env = GatewayEnv(workdir, certs, ports, users, dovecot, proc, log)
    wait_http_ok(f"{env.https_url}/healthz", certs.ca_cert, proc, log, "casgate /healthz")
    return env
