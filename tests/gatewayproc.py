"""Writing a test gateway's casgate.toml and users.toml, and running `python -m gateway serve` on them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from gateway.demo.procs import stop_process, wait_for_port


def users_toml(addresses: Iterable[str], extra: str = "") -> str:
    """A [[user]] table per address, named after its local part ("Alice Example"), then ``extra`` verbatim."""
    return "".join(f'[[user]]\naddress = "{a}"\nname = "{a.split("@")[0].title()} Example"\n'
                   for a in addresses) + extra


def caldav_backend(name: str, url: str, login: tuple[str, str]) -> str:
    """A [backends.NAME] table for a CalDAV server reached with a service login."""
    return (f'[backends.{name}]\ntype = "caldav"\nurl = "{url}"\n'
            f'service_login = "{login[0]}"\nservice_password = "{login[1]}"\n')


def config_toml(certs, dovecot, *, https: int, listen: str = "127.0.0.1", imap: int = 0, imaps: int = 0,
                pop3: int = 0, pop3s: int = 0, server_extra: str = "", extra: str = "") -> str:
    """The [server], [tls], [state], [directory] and [backends.dovecot] tables every test gateway has.

    ``server_extra`` goes inside [server]; ``extra`` follows verbatim, for the test's own tables.
    """
    return f"""
[server]
listen = "{listen}"
https_port = {https}
imap_port = {imap}
imaps_port = {imaps}
pop3_port = {pop3}
pop3s_port = {pop3s}
{server_extra}
[tls]
cert = "{certs.cert}"
key = "{certs.key}"
ca_file = "{certs.ca_cert}"
[state]
path = "state.db"
[directory]
users_file = "users.toml"
[backends.dovecot]
type = "imap"
url = "imaps://127.0.0.1:{dovecot.imaps_port}"
managesieve = "127.0.0.1:{dovecot.managesieve_port}"
{extra}
"""


def write_config(root: Path, config: str, users: str) -> Path:
    """Write root/casgate.toml and root/users.toml (making root) and return the config's path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.toml").write_text(users)
    (root / "casgate.toml").write_text(config)
    return root / "casgate.toml"


def start_gateway(root: Path, ports: Iterable[int], env: dict[str, str] | None = None,
                  host: str = "127.0.0.1") -> subprocess.Popen:
    """Serve root/casgate.toml, logging to root/gateway.log, and wait until every one of ``ports`` accepts."""
    with open(root / "gateway.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(root / "casgate.toml")],
                                stdout=log, stderr=log, env=env)
    try:
        for port in ports:  # the listeners open one after another
            wait_for_port(host, port, 20, proc, "gateway", root / "gateway.log")
    except BaseException:
        stop_gateway(proc)
        raise
    return proc


def stop_gateway(proc: subprocess.Popen) -> None:
    """Stop a gateway started by start_gateway (SIGTERM, then SIGKILL if it lingers)."""
    stop_process(proc, 15)
