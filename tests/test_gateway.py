"""The assembled gateway over real sockets: HTTPS /healthz and /metrics, IMAP/POP3 listeners, start-up errors."""

from __future__ import annotations

import imaplib
import json
import poplib
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest

from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config


def write_gateway_config(root: Path, certs, dovecot, extra_backends: str = "", **ports) -> Path:
    p = {name: ports.get(name, free_port()) for name in ("https", "imap", "imaps", "pop3", "pop3s")}
    config = config_toml(certs, dovecot, **p, extra=f'{extra_backends}\n[domains."example.test"]\nimap = "dovecot"\n')
    return write_config(root, config, users_toml(["alice@example.test"], '[[user]]\naddress = "bob@example.test"\n'))


def ports_of(config: Path) -> dict[str, int]:
    import tomllib
    s = tomllib.loads(config.read_text())["server"]
    return {k[:-5]: v for k, v in s.items() if k.endswith("_port")}


@pytest.fixture
def gateway_proc(tmp_path_factory, workdir, certs, dovecot):
    root = Path(workdir) / f"gw-{free_port()}"
    cfg = write_gateway_config(root, certs, dovecot)
    ports = ports_of(cfg)
    proc = start_gateway(root, ports.values())
    try:
        yield proc, ports, cfg
    finally:
        stop_gateway(proc)


def _get(url: str, ca: Path) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_healthz_and_metrics_over_tls(gateway_proc, certs):
    proc, ports, _ = gateway_proc
    status, body = _get(f"https://127.0.0.1:{ports['https']}/healthz", certs.ca_cert)
    data = json.loads(body)
    assert status == 200 and data["status"] == "ok"
    assert data["backends"]["dovecot"]["ok"] is True and data["backends"]["dovecot"]["type"] == "imap"
    status, body = _get(f"https://127.0.0.1:{ports['https']}/metrics", certs.ca_cert)
    assert status == 200
    text = body.decode()
    assert 'casgate_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'casgate_backend_up{backend="dovecot",type="imap"} 1.0' in text
    status, _ = _get(f"https://127.0.0.1:{ports['https']}/no-such-thing", certs.ca_cert)
    assert status == 404


def test_certificate_is_chosen_for_the_names_it_carries(gateway_proc, certs):
    _, ports, _ = gateway_proc
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    for name in ("mail.example.test", "autodiscover.example.test", "localhost"):
        with socket.create_connection(("127.0.0.1", ports["https"])) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:  # verifies the SAN against ``name``
                assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_imap_listeners_implicit_tls_and_starttls(gateway_proc, certs):
    _, ports, _ = gateway_proc
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx)
    assert "AUTH=PLAIN" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error):  # mailbox access is honestly refused, not faked
        m.login("alice@example.test", "whatever")
    m.logout()
    plain = imaplib.IMAP4("127.0.0.1", ports["imap"])
    assert "STARTTLS" in plain.capabilities and "LOGINDISABLED" in plain.capabilities
    plain.starttls(ctx)
    typ, data = plain.capability()
    assert typ == "OK" and b"STARTTLS" not in data[0] and b"AUTH=PLAIN" in data[0]
    plain.logout()


def test_pop3_listeners_implicit_tls_and_stls(gateway_proc, certs):
    _, ports, _ = gateway_proc
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    p = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=ctx)
    assert "STLS" not in p.capa()
    p.quit()
    p = poplib.POP3("127.0.0.1", ports["pop3"])
    assert "STLS" in p.capa()
    p.stls(ctx)
    assert "STLS" not in p.capa()
    p.quit()


def test_health_turns_degraded_when_a_back_end_is_down(workdir, certs, dovecot):
    dead = free_port()
    cfg = write_gateway_config(Path(workdir) / f"gw-dead-{dead}", certs, dovecot,
                               extra_backends=f'[backends.gone]\ntype = "caldav"\nurl = "https://127.0.0.1:{dead}/"\n')
    ports = ports_of(cfg)
    proc = start_gateway(cfg.parent, [ports["https"]])
    try:
        status, body = _get(f"https://127.0.0.1:{ports['https']}/healthz", certs.ca_cert)
        data = json.loads(body)
        assert status == 503 and data["status"] == "degraded"
        assert data["backends"]["gone"]["ok"] is False and data["backends"]["dovecot"]["ok"] is True
    finally:
        stop_gateway(proc)


def test_sigterm_stops_cleanly(gateway_proc):
    proc, ports, _ = gateway_proc
    proc.terminate()
    assert proc.wait(15) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports["https"]), timeout=1).close()


def test_one_bad_client_does_not_take_the_listener_down(gateway_proc, certs):
    _, ports, _ = gateway_proc
    # Garbage instead of a TLS handshake, a half-open connection, and a huge line.
    with socket.create_connection(("127.0.0.1", ports["https"])) as s:
        s.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 100)
    with socket.create_connection(("127.0.0.1", ports["imaps"])):
        pass
    with socket.create_connection(("127.0.0.1", ports["imap"])) as s:
        s.recv(1024)
        s.sendall(b"a " + b"x" * 100_000 + b"\r\n")
        data = b""
        s.settimeout(5)
        while chunk := s.recv(4096):
            data += chunk
        assert b"BYE" in data
    status, _ = _get(f"https://127.0.0.1:{ports['https']}/healthz", certs.ca_cert)
    assert status == 200
