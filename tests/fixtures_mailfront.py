"""Fixtures for the IMAP and POP3 front-end tests: gateways in front of the session Dovecot, raw clients."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

__all__ = ["mailfront", "strict_mailfront", "MailFrontGateway", "LineClient", "IMAP_USER", "POP_USER",
           "PROXY_FROM", "MASTER"]

IMAP_USER = "imapper@example.test"
POP_USER = "pop@example.test"
MASTER = ("casgate-master", "master-secret-9")  # a Dovecot master user (SASL authorization identity)
PROXY_FROM = "127.0.0.2"  # the "load balancer": connections from here start with a PROXY header


@dataclass
class MailFrontGateway:
    root: Path
    proc: object
    ports: dict[str, int]
    certs: object

    @property
    def log(self) -> str:
        return (self.root / "gateway.log").read_text(errors="replace")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca_cert))

    def connect(self, port_name: str, source: str | None = None, header: bytes = b"",
                timeout: float = 10) -> "LineClient":
        sock = socket.create_connection(("127.0.0.1", self.ports[port_name]), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        if header:
            sock.sendall(header)
        if port_name in ("imaps", "pop3s"):
            sock = self.tls_context().wrap_socket(sock, server_hostname="localhost")
        return LineClient(sock, self)


class LineClient:
    """A minimal blocking line client for transcripts the stdlib clients cannot produce."""

    def __init__(self, sock: socket.socket, gw: MailFrontGateway) -> None:
        self.sock, self.gw, self.buf = sock, gw, b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until(self, prefix: bytes) -> list[bytes]:
        """Lines up to and including the first that starts with ``prefix``."""
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(prefix):
                return lines

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def starttls(self) -> None:
        self.sock = self.gw.tls_context().wrap_socket(self.sock, server_hostname="localhost")

    def closed(self) -> bool:
        """True when the server has closed the connection (after any pending lines)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def _gateway(workdir, certs, dovecot, name: str, fronts: str, users_extra: str = "") -> MailFrontGateway:
    root = Path(workdir) / f"{name}-{free_port()}"
    ports = {n: free_port() for n in ("https", "imap", "imaps", "pop3", "pop3s")}
    extra = f"""
[backends.dead]
type = "imap"
url = "imap://127.0.0.1:{free_port()}"
tls = "none"
timeout = 2
[domains."example.test"]
imap = "dovecot"
{fronts}
"""
    users = users_toml([IMAP_USER, POP_USER], '[[user]]\naddress = "dan@example.test"\nimap = "dead"\n' + users_extra)
    write_config(root, config_toml(certs, dovecot, **ports, extra=extra), users)
    proc = start_gateway(root, ports.values())
    return MailFrontGateway(root, proc, ports, certs)


@pytest.fixture(scope="session")
def mailfront(workdir, certs, dovecot):
    """A gateway with default limits, a trusted balancer at 127.0.0.2, a master-user back end for carol."""
    fronts = f"""
[backends.mastered]
type = "imap"
url = "imaps://127.0.0.1:{dovecot.imaps_port}"
master_login = "{MASTER[0]}"
master_password = "{MASTER[1]}"
[imap]
proxy_protocol_from = ["{PROXY_FROM}"]
max_connections_per_ip = 20
[pop3]
proxy_protocol_from = ["{PROXY_FROM}"]
"""
    gw = _gateway(workdir, certs, dovecot, "mailfront", fronts,
                  '[[user]]\naddress = "carol@example.test"\nimap = "mastered"\n')
    yield gw
    stop_gateway(gw.proc)


@pytest.fixture(scope="session")
def strict_mailfront(workdir, certs, dovecot):
    """A gateway with tight limits and timeouts, and plain-text logins allowed from loopback."""
    fronts = """
[imap]
allow_plaintext_loopback = true
preauth_timeout = 1
idle_timeout = 1
max_auth_attempts = 2
max_commands_before_login = 5
[pop3]
allow_plaintext_loopback = true
preauth_timeout = 1
idle_timeout = 1
"""
    gw = _gateway(workdir, certs, dovecot, "strictfront", fronts)
    yield gw
    stop_gateway(gw.proc)
