"""Held Pings parked outside aiohttp (gateway/http/park.py), over raw HTTP/1.1 on TLS sockets to a real gateway
and the session's Dovecot, whose NOTIFY tells the push hub of new mail in any folder: the answer, the connection's next request, a request sent while parked, a client that
leaves, a newer Ping of the same device, the heartbeat's end, Connection: close, and a pipelined Ping that cannot
be parked and is held the ordinary way."""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import ssl
import time
import uuid
from urllib.parse import urlencode

import pytest

from gateway.activesync import wbxml
from gateway.activesync.wbxml import Element
from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER = "tablet@example.test"
EAS = "/Microsoft-Server-ActiveSync"
H = "FolderHierarchy"


@pytest.fixture(scope="module")
def gateway(workdir, certs, dovecot, users):
    root = workdir / f"eas-parked-{free_port()}"
    https = free_port()
    extra = ('[domains."example.test"]\nimap = "dovecot"\n[activesync]\nrequire_provisioning = false\n'
             "ping_min_heartbeat = 1\nping_check_interval = 60\npush_poll_interval = 60\n")
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([USER]))
    proc = start_gateway(root, [https])
    yield {"port": https, "ca": str(certs.ca_cert), "password": users[USER], "root": root}
    stop_gateway(proc)
    log = (root / "gateway.log").read_text()
    assert "Traceback" not in log and "Unhandled" not in log and "Exception in callback" not in log, log[-3000:]


class Conn:
    """One client connection speaking HTTP/1.1 by hand, so the test sees exactly what is on the wire."""

    def __init__(self, gw: dict, device: str) -> None:
        ctx = ssl.create_default_context(cafile=gw["ca"])
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw["port"]), timeout=20),
                                    server_hostname="127.0.0.1")
        self.gw, self.device, self.buf = gw, device, b""
        self.auth = "Basic " + base64.b64encode(f"{USER}:{gw['password']}".encode()).decode()

    def request(self, command: str, doc: Element | None, extra: str = "") -> bytes:
        body = wbxml.encode(doc) if doc is not None else b""
        query = urlencode({"Cmd": command, "User": USER, "DeviceId": self.device, "DeviceType": "TestPhone"})
        return (f"POST {EAS}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {self.auth}\r\n"
                f"MS-ASProtocolVersion: 14.1\r\nContent-Type: application/vnd.ms-sync.wbxml\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def options(self) -> bytes:
        return (f"OPTIONS {EAS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {self.auth}\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the gateway closed the connection")
        self.buf += chunk

    def response(self, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def nothing_for(self, seconds: float) -> bool:
        """True when the gateway sends nothing for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except (TimeoutError, socket.timeout):
            return not self.buf
        return False

    def call(self, command: str, doc: Element | None) -> Element:
        self.send(self.request(command, doc))
        status, headers, body = self.response()
        assert status == 200, body
        return wbxml.decode(body)

    def close(self) -> None:
        self.sock.close()


def _ping(folder: str, heartbeat: int = 60) -> Element:
    return Element("Ping", "Ping", [Element("Ping", "HeartbeatInterval", text=str(heartbeat)), Element(
        "Ping", "Folders", [Element("Ping", "Folder", [Element("Ping", "Id", text=folder),
                                                       Element("Ping", "Class", text="Email")])])])


def _sync(folder: str, key: str) -> Element:
    A = "AirSync"
    return Element(A, "Sync", [Element(A, "Collections", [Element(A, "Collection", [
        Element(A, "SyncKey", text=key), Element(A, "CollectionId", text=folder)])])])


def _metric(gw: dict, name: str, labels: str = "") -> float:
    ctx = ssl.create_default_context(cafile=gw["ca"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw["port"]), timeout=10),
                         server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", data.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def _held(gw: dict) -> float:
    return _metric(gw, "casgate_eas_pings_held")


def _parked(gw: dict) -> float:
    return _metric(gw, "casgate_eas_commands_total", '{command="Ping",result="held"}')


def _until(check, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture
def folder(gateway, dovecot, certs):
    """A fresh IMAP folder, synced through the gateway by a fresh device: (device, folder id, IMAP session)."""
    m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                          ssl_context=ssl.create_default_context(cafile=str(certs.ca_cert)))
    m.login(USER, gateway["password"])
    name = "Parked" + uuid.uuid4().hex[:8]
    assert m.create(name)[0] == "OK"
    device = "PARK" + uuid.uuid4().hex[:12].upper()
    c = Conn(gateway, device)
    hierarchy = c.call("FolderSync", Element(H, "FolderSync", [Element(H, "SyncKey", text="0")]))
    folder_id = next(f.text_of("ServerId") for f in hierarchy.find("Changes").findall("Add")
                     if f.text_of("DisplayName") == name)
    key = c.call("Sync", _sync(folder_id, "0")).find("Collections").find("Collection").text_of("SyncKey")
    c.send(c.request("Sync", _sync(folder_id, key)))
    assert c.response()[0] == 200
    c.close()
    yield device, folder_id, m, name
    m.delete(name)
    m.logout()


def _deliver(m: imaplib.IMAP4_SSL, name: str) -> None:
    msg = (f"From: a@example.test\r\nTo: {USER}\r\nSubject: parked {uuid.uuid4().hex[:6]}\r\n"
           f"Message-ID: <{uuid.uuid4()}@example.test>\r\n\r\nhello\r\n")
    assert m.append(name, None, None, msg.encode())[0] == "OK"


def _status(body: bytes) -> str:
    return wbxml.decode(body).text_of("Status")


def test_a_parked_ping_answers_the_change_and_its_connection_serves_the_next_request(gateway, folder):
    device, folder_id, m, name = folder
    before = _parked(gateway)
    c = Conn(gateway, device)
    c.send(c.request("Ping", _ping(folder_id)))
    _until(lambda: _parked(gateway) == before + 1 and _held(gateway) >= 1)
    assert c.nothing_for(0.5)
    t0 = time.monotonic()
    _deliver(m, name)
    status, headers, body = c.response()
    # Not INBOX, and the push hub polls a minute apart: only Dovecot's NOTIFY can have told it this soon.
    assert time.monotonic() - t0 < 3
    assert status == 200 and headers["content-type"] == "application/vnd.ms-sync.wbxml"
    assert headers["ms-server-activesync"] and headers["cache-control"] == "private"
    doc = wbxml.decode(body)
    assert doc.text_of("Status") == "2"
    assert [f.text for f in doc.find("Folders").findall("Folder")] == [folder_id]
    assert f'"device": "{device}", "result": "ok", "http": 200' in (gateway["root"] / "gateway.log").read_text()
    # The same connection, handed back to aiohttp, serves the next request and parks the next Ping.
    c.send(c.options())
    status, headers, _ = c.response()
    assert status == 200 and "Ping" in headers["ms-asprotocolcommands"]
    c.send(c.request("Ping", _ping(folder_id, heartbeat=2)))
    status, _, body = c.response()  # still owed the new message, so answered at once
    assert status == 200 and _status(body) == "2"
    _until(lambda: _held(gateway) == 0)
    c.close()


def test_a_request_sent_while_parked_is_answered_after_the_ping(gateway, folder):
    device, folder_id, m, name = folder
    before = _parked(gateway)
    c = Conn(gateway, device)
    c.send(c.request("Ping", _ping(folder_id)))
    _until(lambda: _parked(gateway) == before + 1)
    c.send(c.options())
    assert c.nothing_for(0.5)  # the OPTIONS waits behind the Ping, as HTTP/1.1 orders answers
    _deliver(m, name)
    status, _, body = c.response()
    assert status == 200 and _status(body) == "2"
    status, headers, _ = c.response()
    assert status == 200 and "14.1" in headers["ms-asprotocolversions"]
    c.close()


def test_a_client_that_leaves_a_parked_ping_is_forgotten(gateway, folder):
    device, folder_id, _, _ = folder
    c = Conn(gateway, device)
    c.send(c.request("Ping", _ping(folder_id)))
    _until(lambda: _held(gateway) == 1)
    c.close()
    _until(lambda: _held(gateway) == 0)


def test_a_newer_ping_of_the_device_ends_the_parked_one_and_a_heartbeat_ends_with_status_1(gateway, folder):
    device, folder_id, _, _ = folder
    first, second = Conn(gateway, device), Conn(gateway, device)
    first.send(first.request("Ping", _ping(folder_id)))
    _until(lambda: _held(gateway) == 1)
    t0 = time.monotonic()
    second.send(second.request("Ping", _ping(folder_id, heartbeat=2)))
    status, _, body = first.response(timeout=5)
    assert status == 200 and _status(body) == "1"
    status, _, body = second.response(timeout=10)
    assert status == 200 and _status(body) == "1" and 1.5 < time.monotonic() - t0 < 8
    _until(lambda: _held(gateway) == 0)
    first.close()
    second.close()


def test_connection_close_is_honoured_after_the_parked_answer(gateway, folder):
    device, folder_id, _, _ = folder
    before = _parked(gateway)
    c = Conn(gateway, device)
    c.send(c.request("Ping", _ping(folder_id, heartbeat=1), extra="Connection: close\r\n"))
    status, headers, body = c.response()
    assert status == 200 and _status(body) == "1" and headers["connection"] == "close"
    assert _parked(gateway) == before + 1
    with pytest.raises(ConnectionError):
        c._fill()
    c.close()


def test_a_pipelined_ping_is_held_inside_aiohttp_and_both_answers_come_in_order(gateway, folder):
    device, folder_id, m, name = folder
    before = _parked(gateway)
    c = Conn(gateway, device)
    c.send(c.request("Ping", _ping(folder_id)) + c.options())  # one write: aiohttp has both before the hold
    _until(lambda: _held(gateway) == 1)
    assert _parked(gateway) == before
    _deliver(m, name)
    status, _, body = c.response()
    assert status == 200 and _status(body) == "2"
    status, headers, _ = c.response()
    assert status == 200 and "ms-asprotocolversions" in headers
    c.close()
