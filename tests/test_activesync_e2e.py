"""ActiveSync through the gateway to the session's real Dovecot, driven by pyactivesync (an independent EAS
16.1 client) and by raw requests for the HTTP layer's answers to malformed and unprovisioned requests."""

from __future__ import annotations

import imaplib
import ssl
import time
import uuid

import pytest
import requests
from pyactivesync import Client, EmailChange, FolderType
from pyactivesync.exceptions import EASError

from gateway.activesync import wbxml
from gateway.activesync.wbxml import Element
from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

PHONE = "phone@example.test"
TABLET = "tablet@example.test"
WBXML = "application/vnd.ms-sync.wbxml"


@pytest.fixture(scope="session")
def eas(workdir, certs, dovecot, submission):
    root = workdir / f"eas-{free_port()}"
    https = free_port()
    extra = (f'[backends.plain]\ntype = "imap"\nurl = "imaps://127.0.0.1:{dovecot.imaps_port}"\n'
             f'[backends.dead]\ntype = "imap"\nurl = "imap://127.0.0.1:{free_port()}"\ntls = "none"\ntimeout = 2\n'
             f'[backends.submission]\ntype = "smtp"\nurl = "smtp://127.0.0.1:{submission.port}"\ntls = "starttls"\n'
             '[domains."example.test"]\nimap = "dovecot"\nsmtp = "submission"\n'
             "[activesync]\nping_min_heartbeat = 1\nping_check_interval = 0.2\n")
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra),
                 users_toml([PHONE, TABLET], '[[user]]\naddress = "dan@example.test"\nimap = "dead"\n'
                                             '[[user]]\naddress = "carol@example.test"\nimap = "plain"\n'))
    proc = start_gateway(root, [https])
    yield {"port": https, "ca": str(certs.ca_cert), "root": root}
    stop_gateway(proc)


def _client(eas, users, who=PHONE, device=None) -> Client:
    c = Client(f"127.0.0.1:{eas['port']}", who, users[who], device_id=device or uuid.uuid4().hex[:16].upper(),
               verify_ssl=True)
    c._transport.session.verify = eas["ca"]
    c._transport.session.trust_env = False  # a REQUESTS_CA_BUNDLE in the environment would win over verify
    return c


def _imap(dovecot, certs, who, users) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=ctx)
    m.login(who, users[who])
    return m


def _append(m: imaplib.IMAP4_SSL, subject: str, folder: str = "INBOX", html: bool = False) -> None:
    if html:
        body = ("Content-Type: multipart/alternative; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
                f"plain {subject}\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>html {subject}</p>\r\n--b1--\r\n")
        head = "MIME-Version: 1.0\r\n"
    else:
        body, head = f"\r\nbody of {subject}\r\n", "Content-Type: text/plain; charset=utf-8\r\n"
    msg = (f"From: Sender <sender@example.test>\r\nTo: {PHONE}\r\nSubject: {subject}\r\n"
           f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4()}@example.test>\r\n{head}{body}")
    typ, _ = m.append(folder, None, None, msg.encode())
    assert typ == "OK"


def _synced_inbox(c: Client):
    """(the Inbox folder, its sync key after a whole initial sync, every item added)."""
    inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
    key = c.sync_folder(inbox.id).sync_key
    items = []
    while True:
        result = c.sync_folder(inbox.id, key, window_size=200)
        items += result.added
        key = result.sync_key
        if not result.more_available:
            return inbox, key, items


def _post(eas, who, users, cmd, body: bytes = b"", *, version="14.1", policy_key=None, device="RAWDEVICE1",
          user=None, extra_headers=None):
    headers = {"Content-Type": WBXML}
    if version:
        headers["MS-ASProtocolVersion"] = version
    if policy_key is not None:
        headers["X-MS-PolicyKey"] = str(policy_key)
    headers.update(extra_headers or {})
    params = {"Cmd": cmd, "User": user or who, "DeviceId": device, "DeviceType": "TestPhone"}
    return requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync", params=params, data=body,
                         headers=headers, auth=(who, users[who]), verify=eas["ca"], timeout=30)


def _folder_sync(key="0") -> bytes:
    return wbxml.encode(Element("FolderHierarchy", "FolderSync", [Element("FolderHierarchy", "SyncKey", text=key)]))


def test_options_lists_versions_and_commands(eas, users):
    r = requests.options(f"https://127.0.0.1:{eas['port']}/microsoft-server-activesync",
                         auth=(PHONE, users[PHONE]), verify=eas["ca"], timeout=10)
    assert r.status_code == 200
    assert r.headers["MS-ASProtocolVersions"] == "2.5,12.0,12.1,14.0,14.1,16.0,16.1"
    commands = r.headers["MS-ASProtocolCommands"].split(",")
    assert {"Sync", "FolderSync", "Provision"} <= set(commands)
    r = requests.options(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync", verify=eas["ca"], timeout=10)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]


def test_unprovisioned_devices_are_told_to_provision(eas, users):
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), device="UNPROV1")
    assert r.status_code == 200
    doc = wbxml.decode(r.content)
    assert (doc.ns, doc.name, doc.text_of("Status")) == ("FolderHierarchy", "FolderSync", "142")
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), device="UNPROV1", policy_key=12345)
    assert wbxml.decode(r.content).text_of("Status") in ("142", "144")
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), device="UNPROV1", version="12.1")
    assert r.status_code == 449  # before 14.0 the answer is an HTTP status


def test_malformed_requests_get_http_errors(eas, users):
    assert _post(eas, PHONE, users, "FolderSync", _folder_sync(), version=None).status_code == 400
    assert _post(eas, PHONE, users, "FolderSync", _folder_sync(), version="9.9").status_code == 400
    assert _post(eas, PHONE, users, "NoSuchCommand", b"").status_code == 501
    assert _post(eas, PHONE, users, "FolderSync", _folder_sync(), user="tablet@example.test").status_code == 403
    with _client(eas, users) as c:
        key = c.provision()
    r = _post(eas, PHONE, users, "FolderSync", b"\x03\x01\x6a\x00\x45\x99", policy_key=key,
              device=c._transport.device_id)
    assert r.status_code == 400


def test_provision_then_folder_hierarchy(eas, users):
    with _client(eas, users) as c:
        key = c.provision()
        assert key.isdigit() and int(key) > 0
        folders = {f.name: f for f in c.list_folders()}
    assert folders["Inbox"].type == FolderType.INBOX
    assert folders["Sent"].type == FolderType.SENT_ITEMS
    assert folders["Drafts"].type == FolderType.DRAFTS
    assert folders["Trash"].type == FolderType.DELETED_ITEMS
    assert folders["Junk"].type == FolderType.USER_GENERIC or int(folders["Junk"].type) == 12
    assert len({f.id for f in folders.values()}) == len(folders)
    # Another device of the same user sees the same ServerIds.
    with _client(eas, users) as c2:
        assert {f.name: f.id for f in c2.list_folders()} == {n: f.id for n, f in folders.items()}


def test_initial_sync_in_windows_then_no_change(eas, users, dovecot, certs):
    m = _imap(dovecot, certs, PHONE, users)
    for i in range(23):
        _append(m, f"window test {i}", html=i % 2 == 0)
    m.logout()
    with _client(eas, users) as c:
        inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
        result = c.sync_folder(inbox.id)
        assert not result.added
        seen: dict[str, dict] = {}
        rounds = 0
        while True:
            result = c.sync_folder(inbox.id, result.sync_key, window_size=10)
            rounds += 1
            assert len(result.added) <= 10
            for item in result.added:
                assert item.server_id not in seen
                seen[item.server_id] = item.fields
            if not result.more_available:
                break
        assert rounds == 3 and len(seen) == 23
        subjects = {f.get("Email.Subject") for f in seen.values()}
        assert {f"window test {i}" for i in range(23)} <= subjects
        t0 = time.perf_counter()
        again = c.sync_folder(inbox.id, result.sync_key)
        assert again.sync_key == result.sync_key and not again.added and not again.changed and not again.deleted
        assert time.perf_counter() - t0 < 5


def test_read_flag_delete_reach_the_imap_store_and_server_changes_come_back(eas, users, dovecot, certs):
    m = _imap(dovecot, certs, TABLET, users)
    for i in range(3):
        _append(m, f"change test {i}")
    with _client(eas, users, TABLET) as c:
        inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
        key = c.sync_folder(inbox.id).sync_key
        result = c.sync_folder(inbox.id, key)
        by_subject = {item.fields["Email.Subject"]: item.server_id for item in result.added}
        assert len(by_subject) == 3
        uid = {s: int(sid.rsplit(":", 1)[1]) for s, sid in by_subject.items()}
        done = c.apply_email_changes(inbox.id, result.sync_key, [
            EmailChange(by_subject["change test 0"], read=True),
            EmailChange(by_subject["change test 1"], flagged=True),
            EmailChange(by_subject["change test 2"], delete=True),
        ])
        assert set(done.statuses.values()) == {"1"}
        m.select("INBOX")
        flags = {s: m.uid("FETCH", str(u), "(FLAGS)")[1][0] for s, u in uid.items() if s != "change test 2"}
        assert b"\\Seen" in flags["change test 0"] and b"\\Flagged" in flags["change test 1"]
        assert m.uid("SEARCH", None, f"UID {uid['change test 2']}")[1] == [b""]
        m.select("Trash")
        assert m.search(None, 'SUBJECT "change test 2"')[1][0]
        # A change made on the server (another client) reaches the device as a Change.
        m.select("INBOX")
        m.uid("STORE", str(uid["change test 0"]), "-FLAGS", "(\\Seen)")
        later = c.sync_folder(inbox.id, done.sync_key)
        assert [i.server_id for i in later.changed] == [by_subject["change test 0"]]
        assert later.changed[0].fields.get("Email.Read") == "0"
        assert not later.added and not later.deleted
        # The device's own changes are not echoed back.
        assert by_subject["change test 1"] not in {i.server_id for i in later.changed}
    m.logout()


def test_a_lost_sync_response_is_answered_again_the_same(eas, users, dovecot, certs):
    m = _imap(dovecot, certs, TABLET, users)
    with _client(eas, users, TABLET) as c:
        inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
        first = c.sync_folder(inbox.id)
        everything = c.sync_folder(inbox.id, first.sync_key, window_size=100)
        for i in range(4):
            _append(m, f"retry test {i}")
        answered = c.sync_folder(inbox.id, everything.sync_key, window_size=100)
        assert len(answered.added) == 4
        # The response was "lost": the device asks again with the key it still has.
        again = c.sync_folder(inbox.id, everything.sync_key, window_size=100)
        assert again.sync_key == answered.sync_key
        assert sorted(i.server_id for i in again.added) == sorted(i.server_id for i in answered.added)
        after = c.sync_folder(inbox.id, again.sync_key)
        assert not after.added and not after.changed and not after.deleted
        # An unknown key gives Status 3, and a clean resync from 0 works.
        with pytest.raises(EASError):
            c.sync_folder(inbox.id, "{deadbeefdeadbeef}7")
    m.logout()


def _devices(eas, *args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "gateway", "devices", *args, "-c", str(eas["root"] / "casgate.toml")],
                          capture_output=True, text=True, timeout=60)


def _provision_request(*children: Element) -> bytes:
    return wbxml.encode(Element("Provision", "Provision", list(children)))


def test_devices_command_wipe_block_allow_remove(eas, users):
    device = "WIPEME" + uuid.uuid4().hex[:8].upper()
    with _client(eas, users, PHONE, device) as c:
        key = c.provision()
        c.list_folders()
    listed = _devices(eas, "list", PHONE)
    assert listed.returncode == 0 and device in listed.stdout and "allowed" in listed.stdout
    shown = _devices(eas, "show", PHONE, device)
    assert '"provisioned": true' in shown.stdout and f'"policy_key": {key}' in shown.stdout
    assert "Model" not in shown.stderr
    # Block: refused at once (Status 129 from 14.0 on, HTTP 403 before).
    assert _devices(eas, "block", PHONE, device).returncode == 0
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), policy_key=key, device=device)
    assert wbxml.decode(r.content).text_of("Status") == "129"
    assert _post(eas, PHONE, users, "FolderSync", _folder_sync(), policy_key=key, device=device,
                 version="12.1").status_code == 403
    assert _devices(eas, "allow", PHONE, device).returncode == 0
    assert wbxml.decode(_post(eas, PHONE, users, "FolderSync", _folder_sync(), policy_key=key,
                              device=device).content).text_of("Status") == "1"
    # Wipe: the next request is told to provision (140), Provision answers RemoteWipe, the ack marks it wiped.
    assert _devices(eas, "wipe", PHONE, device).returncode == 0
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), policy_key=key, device=device)
    assert wbxml.decode(r.content).text_of("Status") == "140"
    policy = Element("Provision", "Policies", [Element("Provision", "Policy", [
        Element("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML")])])
    answer = wbxml.decode(_post(eas, PHONE, users, "Provision", _provision_request(policy), device=device).content)
    assert answer.find("RemoteWipe") is not None
    ack = Element("Provision", "RemoteWipe", [Element("Provision", "Status", text="1")])
    answer = wbxml.decode(_post(eas, PHONE, users, "Provision", _provision_request(ack), device=device).content)
    assert answer.text_of("Status") == "1"
    assert '"status": "wiped"' in _devices(eas, "show", PHONE, device).stdout
    # Remove: the partnership and its state are gone.
    assert _devices(eas, "remove", PHONE, device).returncode == 0
    gone = _devices(eas, "show", PHONE, device)
    assert gone.returncode == 1 and "no device" in gone.stderr


def test_provision_acknowledging_a_wrong_key_is_refused(eas, users):
    device = "WRONGKEY" + uuid.uuid4().hex[:6].upper()
    ask = Element("Provision", "Policies", [Element("Provision", "Policy", [
        Element("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML")])])
    first = wbxml.decode(_post(eas, PHONE, users, "Provision", _provision_request(ask), device=device).content)
    policy = first.find("Policies").find("Policy")
    temporary = policy.text_of("PolicyKey")
    assert policy.text_of("Status") == "1" and policy.find("Data").find("EASProvisionDoc") is not None
    bad = Element("Provision", "Policies", [Element("Provision", "Policy", [
        Element("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML"),
        Element("Provision", "PolicyKey", text=str(int(temporary) ^ 1)), Element("Provision", "Status", text="1")])])
    answer = wbxml.decode(_post(eas, PHONE, users, "Provision", _provision_request(bad), device=device).content)
    assert answer.find("Policies").find("Policy").text_of("Status") == "5"
    assert answer.find("Policies").find("Policy").find("PolicyKey") is None


def test_base64_query_and_gzip_bodies(eas, users, dovecot, certs):
    import gzip

    from gateway.activesync.request import EasRequest, encode_base64_query
    device = "GZIP" + uuid.uuid4().hex[:8].upper()
    with _client(eas, users, PHONE, device) as c:
        key = int(c.provision())
    query = encode_base64_query(EasRequest(command="FolderSync", user=PHONE, device_id=device,
                                           device_type="TestPhone", version="14.1", policy_key=key, locale=0x0409))
    r = requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync?{query}",
                      data=gzip.compress(_folder_sync()), auth=(PHONE, users[PHONE]), verify=eas["ca"], timeout=30,
                      headers={"Content-Type": WBXML, "Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    doc = wbxml.decode(r.content)
    assert doc.text_of("Status") == "1" and int(doc.find("Changes").text_of("Count")) >= 5
    inbox = next(a.text_of("ServerId") for a in doc.find("Changes").findall("Add") if a.text_of("Type") == "2")
    m = _imap(dovecot, certs, PHONE, users)
    for i in range(3):
        _append(m, f"gzip test {i}", html=True)
    m.logout()

    sync_query = encode_base64_query(EasRequest(command="Sync", user=PHONE, device_id=device, device_type="TestPhone",
                                                version="14.1", policy_key=key, locale=0x0409))

    def sync(key: str) -> requests.Response:
        body = Element("AirSync", "Sync", [Element("AirSync", "Collections", [Element("AirSync", "Collection", [
            Element("AirSync", "SyncKey", text=key), Element("AirSync", "CollectionId", text=inbox),
            Element("AirSync", "WindowSize", text="3"), Element("AirSync", "Options", [
                Element("AirSyncBase", "BodyPreference", [Element("AirSyncBase", "Type", text="4")])])])])])
        return requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync?{sync_query}",
                             data=gzip.compress(wbxml.encode(body)), auth=(PHONE, users[PHONE]), verify=eas["ca"],
                             timeout=30, headers={"Content-Type": WBXML, "Content-Encoding": "gzip",
                                                  "Accept-Encoding": "gzip"})
    started = wbxml.decode(sync("0").content)
    assert started.find("Collections") is not None, wbxml.to_xml(started)
    first = started.find("Collections").find("Collection").text_of("SyncKey")
    r = sync(first)
    assert r.headers.get("Content-Encoding") == "gzip"  # requests inflates r.content for us
    items = wbxml.decode(r.content).find("Collections").find("Collection").find("Commands").findall("Add")
    assert len(items) == 3
    for item in items:
        data = item.find("ApplicationData").find("Body", "AirSyncBase")
        raw = data.find("Data").opaque or data.text_of("Data", default="").encode()  # MIME goes out as opaque bytes
        assert data.text_of("Type") == "4" and b"gzip test" in raw and raw.startswith(b"From: ")
    # A corrupt gzip body and a body over the limit are refused without harm.
    bad = _post(eas, PHONE, users, "FolderSync", b"\x1f\x8bnot gzip", policy_key=key, device=device,
                extra_headers={"Content-Encoding": "gzip"})
    assert bad.status_code == 400


def test_device_rules_block_and_quarantine(eas, users, workdir, certs, dovecot):
    root = workdir / f"eas-rules-{free_port()}"
    https = free_port()
    rules = ('[[activesync.device_rules]]\ndevice_type = "Blocked*"\naccess = "block"\n'
             '[[activesync.device_rules]]\nuser_agent = "*quarantine*"\naccess = "quarantine"\n')
    write_config(root, config_toml(certs, dovecot, https=https,
                                   extra='[domains."example.test"]\nimap = "dovecot"\n' + rules),
                 users_toml([PHONE]))
    proc = start_gateway(root, [https])
    try:
        other = {"port": https, "ca": eas["ca"], "root": root}
        params = {"Cmd": "FolderSync", "User": PHONE, "DeviceId": "RULES1", "DeviceType": "BlockedPhone"}
        r = requests.post(f"https://127.0.0.1:{https}/Microsoft-Server-ActiveSync", params=params,
                          data=_folder_sync(), auth=(PHONE, users[PHONE]), verify=eas["ca"], timeout=30,
                          headers={"Content-Type": WBXML, "MS-ASProtocolVersion": "14.1"})
        assert wbxml.decode(r.content).text_of("Status") == "129"
        r = _post(other, PHONE, users, "FolderSync", _folder_sync(), device="RULES2",
                  extra_headers={"User-Agent": "Some-quarantine-Agent/1"})
        assert wbxml.decode(r.content).text_of("Status") == "129"
        assert "quarantined" in _devices(other, "list", PHONE).stdout
        # An administrator's allow outranks the rule.
        assert _devices(other, "allow", PHONE, "RULES2").returncode == 0
        r = _post(other, PHONE, users, "FolderSync", _folder_sync(), device="RULES2",
                  extra_headers={"User-Agent": "Some-quarantine-Agent/1"})
        assert wbxml.decode(r.content).text_of("Status") == "142"  # allowed now; next it must provision
    finally:
        stop_gateway(proc)


def test_estimate_then_move_between_folders(eas, users, dovecot, certs):
    m = _imap(dovecot, certs, TABLET, users)
    with _client(eas, users, TABLET) as c:
        folders = {f.name: f for f in c.list_folders()}
        inbox, archive = folders["Inbox"], folders["Archive"]
        key = c.sync_folder(inbox.id).sync_key
        m.select("INBOX")
        before = int(m.search(None, "ALL")[1][0].split()[-1]) if m.search(None, "ALL")[1][0] else 0
        assert c.get_item_estimate(inbox.id, key) == len(m.search(None, "ALL")[1][0].split()) and before >= 0
        synced = c.sync_folder(inbox.id, key, window_size=200)
        assert c.get_item_estimate(inbox.id, synced.sync_key) == 0
        _append(m, "move me")
        assert c.get_item_estimate(inbox.id, synced.sync_key) == 1
        got = c.sync_folder(inbox.id, synced.sync_key)
        item = next(i for i in got.added if i.fields.get("Email.Subject") == "move me")
        archive_key = c.sync_folder(archive.id).sync_key
        archive_key = c.sync_folder(archive.id, archive_key, window_size=200).sync_key
        new_id = c.move_item(item.server_id, inbox.id, archive.id)
        assert new_id.startswith(archive.id + ":") and new_id != item.server_id
        m.select("Archive")
        assert m.search(None, 'SUBJECT "move me"')[1][0]
        # Neither folder echoes the device's own move back to it.
        after = c.sync_folder(inbox.id, got.sync_key)
        assert item.server_id not in after.deleted
        arch = c.sync_folder(archive.id, archive_key)
        assert new_id not in {i.server_id for i in arch.added}
        with pytest.raises(EASError):
            c.move_item(item.server_id, inbox.id, archive.id)  # already gone from the source
    m.logout()


def _append_with_attachment(m: imaplib.IMAP4_SSL, subject: str, payload: bytes) -> None:
    import base64 as b64
    encoded = b64.encodebytes(payload).decode().replace("\n", "\r\n")
    msg = (f"From: Sender <sender@example.test>\r\nTo: {TABLET}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
           f"Message-ID: <{uuid.uuid4()}@example.test>\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
           "--zz\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see the <b>report</b></p>\r\n"
           "--zz\r\nContent-Type: application/octet-stream; name=report.bin\r\n"
           "Content-Disposition: attachment; filename=report.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{encoded}--zz--\r\n")
    assert m.append("INBOX", None, None, msg.encode())[0] == "OK"


def test_fetch_body_and_attachment_and_empty_folder(eas, users, dovecot, certs):
    from pyactivesync import BodyType
    payload = bytes(range(256)) * 40
    m = _imap(dovecot, certs, TABLET, users)
    _append_with_attachment(m, "with attachment", payload)
    with _client(eas, users, TABLET) as c:
        folders = {f.name: f for f in c.list_folders()}
        inbox = folders["Inbox"]
        key = c.sync_folder(inbox.id).sync_key
        items = []
        while True:
            result = c.sync_folder(inbox.id, key, window_size=100)
            items += result.added
            key = result.sync_key
            if not result.more_available:
                break
        item = next(i for i in items if i.fields.get("Email.Subject") == "with attachment")
        fetched = c.fetch_item(inbox.id, item.server_id, body_type=BodyType.HTML)
        assert "<b>report</b>" in (fetched.body.data if isinstance(fetched.body.data, str)
                                   else fetched.body.data.decode())
        (attachment,) = fetched.attachments
        assert attachment.display_name == "report.bin"
        assert c.fetch_attachment(attachment.file_reference) == payload
        query = {"Cmd": "ItemOperations", "User": TABLET, "DeviceId": c._transport.device_id,
                 "DeviceType": "pyactivesync"}

        def fetch(reference: str, multipart: bool) -> requests.Response:
            body = wbxml.encode(Element("ItemOperations", "ItemOperations", [Element("ItemOperations", "Fetch", [
                Element("ItemOperations", "Store", text="Mailbox"),
                Element("AirSyncBase", "FileReference", text=reference)])]))
            return requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync", params=query,
                                 data=body, auth=(TABLET, users[TABLET]), verify=eas["ca"], timeout=30,
                                 headers={"Content-Type": WBXML, "MS-ASProtocolVersion": "14.1",
                                          "MS-ASAcceptMultiPart": "T" if multipart else "F",
                                          "X-MS-PolicyKey": c._transport.policy_key})
        for bad in (attachment.file_reference.rsplit(":", 1)[0] + ":9", "nonsense", "1:2:3:4"):
            doc = wbxml.decode(fetch(bad, False).content)
            assert doc.find("Response").find("Fetch").text_of("Status") == "15"
        # The multipart form: the same bytes as a binary part.
        r = fetch(attachment.file_reference, True)
        assert r.headers["Content-Type"] == "application/vnd.ms-sync.multipart"
        import struct
        count = struct.unpack_from("<i", r.content)[0]
        table = [struct.unpack_from("<ii", r.content, 4 + 8 * i) for i in range(count)]
        doc = wbxml.decode(r.content[table[0][0]:table[0][0] + table[0][1]])
        part = int(doc.find("Response").find("Fetch").find("Properties").text_of("Part"))
        offset, length = table[part]
        assert r.content[offset:offset + length] == payload
    m.logout()


def test_empty_folder_contents_empties_deleted_items(eas, users, dovecot, certs):
    m = _imap(dovecot, certs, TABLET, users)
    _append(m, "in the trash", folder="Trash")
    with _client(eas, users, TABLET) as c:
        trash = next(f for f in c.list_folders() if f.type == FolderType.DELETED_ITEMS)
        body = wbxml.encode(Element("ItemOperations", "ItemOperations", [
            Element("ItemOperations", "EmptyFolderContents", [Element("AirSync", "CollectionId", text=trash.id)])]))
        r = _post(eas, TABLET, users, "ItemOperations", body, policy_key=c._transport.policy_key,
                  device=c._transport.device_id)
        doc = wbxml.decode(r.content)
        assert doc.find("Response").find("EmptyFolderContents").text_of("Status") == "1"
    m.select("Trash")
    assert m.search(None, "ALL")[1] == [b""]
    m.logout()


def test_folder_create_rename_delete_reach_imap(eas, users, dovecot, certs):
    name = "Projects" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    with _client(eas, users, TABLET) as c:
        inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
        made = c.create_folder(name)
        assert any(name.encode() in line for line in m.list()[1])
        child = c.create_folder("Sub", parent_id=made.id)
        assert any(f"{name}/Sub".encode() in line for line in m.list()[1])
        with pytest.raises(EASError):
            c.create_folder(name)  # exists
        c.update_folder(made.id, name + "-renamed")
        listed = b"\n".join(m.list()[1])
        assert f"{name}-renamed/Sub".encode() in listed and f'"{name}"'.encode() not in listed
        after = {f.id: f for f in c.list_folders()}
        assert after[made.id].name == name + "-renamed" and after[child.id].parent_id == made.id  # ids kept
        with pytest.raises(EASError):
            c.delete_folder(inbox.id)  # a default folder cannot go
        c.delete_folder(made.id)
        assert name.encode() not in b"\n".join(m.list()[1])
        assert made.id not in {f.id for f in c.list_folders()}
    m.logout()


def test_settings_user_and_device_information_and_oof_not_offered(eas, users):
    device = "SETTINGS" + uuid.uuid4().hex[:6].upper()
    with _client(eas, users, PHONE, device) as c:
        key = c.provision()
        info = Element("Settings", "DeviceInformation", [Element("Settings", "Set", [
            Element("Settings", "Model", text="Pixel 9"), Element("Settings", "OS", text="Android 16")])])
        body = wbxml.encode(Element("Settings", "Settings", [
            info, Element("Settings", "UserInformation", [Element("Settings", "Get")])]))
        doc = wbxml.decode(_post(eas, PHONE, users, "Settings", body, policy_key=key, device=device).content)
        assert doc.text_of("Status") == "1" and doc.find("DeviceInformation").text_of("Status") == "1"
        account = doc.find("UserInformation").find("Get").find("Accounts").find("Account")
        assert account.text_of("UserDisplayName") == "Phone Example"
        assert account.find("EmailAddresses").text_of("PrimarySmtpAddress") == PHONE
        shown = _devices(eas, "show", PHONE, device).stdout
        assert '"model": "Pixel 9"' in shown and '"os": "Android 16"' in shown
        # A user whose back end has no ManageSieve: out-of-office is refused as not offered, not faked.
    carol = "carol@example.test"
    with _client(eas, users, carol) as c:
        key = c.provision()
        oof = wbxml.encode(Element("Settings", "Settings", [Element("Settings", "Oof", [
            Element("Settings", "Get", [Element("Settings", "BodyType", text="Text")])])]))
        doc = wbxml.decode(_post(eas, carol, users, "Settings", oof, policy_key=key,
                                 device=c._transport.device_id).content)
        assert doc.text_of("Status") == "1" and doc.find("Oof").text_of("Status") == "7"


def test_out_of_office_get_and_set_through_managesieve(eas, users):
    from pyactivesync.models import OofState
    with _client(eas, users, PHONE) as c:
        assert int(c.get_oof().state) == 0
        c.set_oof(OofState(1), reply_message="Away until Monday")
        got = c.get_oof()
        assert int(got.state) == 1
        assert {m.applies_to for m in got.messages if m.enabled} == {"Internal", "ExternalKnown", "ExternalUnknown"}
        assert all(m.reply_message == "Away until Monday" for m in got.messages if m.enabled)
        c.set_oof(OofState(2), start_time="2030-01-01T08:00:00.000Z", end_time="2030-01-04T08:00:00.000Z",
                  reply_message="Skiing")
        scheduled = c.get_oof()
        assert int(scheduled.state) == 2 and scheduled.start_time.startswith("2030-01-01T08:00:00")
        c.set_oof(OofState(0))
        assert int(c.get_oof().state) == 0


def test_validate_cert_over_the_wire(eas, users, certs):
    import base64 as b64

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    device = "CERTS" + uuid.uuid4().hex[:6].upper()
    with _client(eas, users, PHONE, device) as c:
        key = c.provision()
    body = wbxml.encode(Element("ValidateCert", "ValidateCert", [Element("ValidateCert", "Certificates", [
        Element("ValidateCert", "Certificate", text=b64.b64encode(server.public_bytes(Encoding.DER)).decode()),
        Element("ValidateCert", "Certificate", text="bm90IGEgY2VydGlmaWNhdGU=")])]))
    doc = wbxml.decode(_post(eas, PHONE, users, "ValidateCert", body, policy_key=key, device=device).content)
    statuses = [c.text_of("Status") for c in doc.findall("Certificate")]
    # The dev certificate chains to the trusted dev CA, but it is a TLS server certificate, not an e-mail one.
    assert doc.text_of("Status") == "1" and statuses == ["6", "5"]


def test_search_the_mailbox(eas, users, dovecot, certs):
    import datetime as dt
    marker = "zebra" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    for i in range(3):
        _append(m, f"{marker} number {i}")
    _append(m, "unrelated", folder="Archive")
    with _client(eas, users, TABLET) as c:
        folders = {f.name: f for f in c.list_folders()}
        inbox = folders["Inbox"]
        yesterday = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        recent = c.search_mailbox(inbox.id, date_received_after=yesterday, max_results=100)
        assert {f"{marker} number {i}" for i in range(3)} <= {r.get("Email.Subject") for r in recent}
        future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert c.search_mailbox(inbox.id, date_received_after=future) == []

        def free_text(text: str, collection: str | None, window: str = "0-1") -> Element:
            terms = [Element("AirSync", "Class", text="Email")]
            if collection:
                terms.append(Element("AirSync", "CollectionId", text=collection))
            terms.append(Element("Search", "FreeText", text=text))
            body = wbxml.encode(Element("Search", "Search", [Element("Search", "Store", [
                Element("Search", "Name", text="Mailbox"),
                Element("Search", "Query", [Element("Search", "And", terms)]),
                Element("Search", "Options", [Element("Search", "Range", text=window)])])]))
            r = _post(eas, TABLET, users, "Search", body, policy_key=c._transport.policy_key,
                      device=c._transport.device_id)
            return wbxml.decode(r.content).find("Response").find("Store")

        store = free_text(marker, None)  # all folders
        assert store.text_of("Status") == "1" and store.text_of("Total") == "3"
        results = store.findall("Result")
        assert len(results) == 2 and store.text_of("Range") == "0-1"
        long_id = results[0].text_of("LongId")
        assert long_id.startswith(inbox.id + ":") and marker in results[0].find("Properties").text_of("Subject", "Email")
        fetched = c.fetch_item(inbox.id, long_id)
        assert marker in fetched.fields.get("Email.Subject", "")
        assert free_text(marker, folders["Archive"].id).text_of("Total") == "0"
        # 16.1 Find: the same search with compact results (pyactivesync's free-text search uses it).
        found = c.find_mailbox(marker, folder_id=inbox.id, max_results=10)
        assert found.status == "1" and len(found.items) == 3
        assert all(i.fields.get("Email.Subject", "").startswith(marker) for i in found.items)
        assert all(i.fields.get("Find.Preview") == "body of " + i.fields["Email.Subject"] for i in found.items)
        library = wbxml.encode(Element("Search", "Search", [Element("Search", "Store", [
            Element("Search", "Name", text="DocumentLibrary"), Element("Search", "Query", text="x")])]))
        doc = wbxml.decode(_post(eas, TABLET, users, "Search", library, policy_key=c._transport.policy_key,
                                 device=c._transport.device_id).content)
        assert doc.find("Response").find("Store").text_of("Status") == "2"  # not offered, said so
    m.logout()


def test_ping_empty_change_set_then_a_new_message(eas, users, dovecot, certs):
    import threading
    m = _imap(dovecot, certs, TABLET, users)
    with _client(eas, users, TABLET) as c:
        inbox, key, _ = _synced_inbox(c)
        t0 = time.monotonic()
        quiet = c.ping([inbox.id], heartbeat=2)
        assert quiet.status == "1" and not quiet.changed_folder_ids and 1.5 < time.monotonic() - t0 < 10
        timer = threading.Timer(0.5, lambda: _append(m, "ping wake"))
        timer.start()
        t0 = time.monotonic()
        woken = c.ping([inbox.id], heartbeat=30)
        timer.join()
        assert woken.status == "2" and woken.changed_folder_ids == [inbox.id]
        assert time.monotonic() - t0 < 5
        got = c.sync_folder(inbox.id, key)
        assert [i.fields.get("Email.Subject") for i in got.added] == ["ping wake"]
        # Out-of-range heartbeat: Status 5 with the bound.
        body = wbxml.encode(Element("Ping", "Ping", [Element("Ping", "HeartbeatInterval", text="99999"),
                                                    Element("Ping", "Folders", [Element("Ping", "Folder", [
                                                        Element("Ping", "Id", text=inbox.id),
                                                        Element("Ping", "Class", text="Email")])])]))
        doc = wbxml.decode(_post(eas, TABLET, users, "Ping", body, policy_key=c._transport.policy_key,
                                 device=c._transport.device_id).content)
        assert doc.text_of("Status") == "5" and doc.text_of("HeartbeatInterval") == "3540"
    m.logout()


async def test_send_reply_forward_through_smtp_with_a_copy_in_sent(eas, users, dovecot, certs):
    """Async: the SMTP submission fixture runs on this test's event loop, so the blocking client runs in a thread."""
    import asyncio
    import email
    from email.message import EmailMessage
    marker = "sendtest" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    p = _imap(dovecot, certs, PHONE, users)

    def found(box: imaplib.IMAP4_SSL, folder: str, subject: str) -> list[bytes]:
        box.select(folder)
        hits = box.search(None, "SUBJECT", f'"{subject}"')[1][0].split()
        return [box.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in hits]

    def phone_side():
        with _client(eas, users, TABLET) as c:
            msg = EmailMessage()
            msg["From"] = "Someone Else <ceo@example.test>"  # no send-as: the gateway puts the user in
            msg["To"] = PHONE
            msg["Bcc"] = "carol@example.test"
            msg["Subject"] = marker
            msg.set_content("hello from the phone")
            client_id = uuid.uuid4().hex
            c.send_mail(msg, client_id=client_id)
            with pytest.raises(EASError):
                c.send_mail(msg, client_id=client_id)  # the retry of a sent message is not sent again
            return c
    await asyncio.to_thread(phone_side)
    for _ in range(50):
        if found(p, "INBOX", marker):
            break
        await asyncio.sleep(0.1)
    received = found(p, "INBOX", marker)
    assert len(received) == 1
    parsed = email.message_from_bytes(received[0])
    assert TABLET in parsed["From"] and parsed["Bcc"] is None and "hello from the phone" in parsed.get_payload()
    sent = found(m, "Sent", marker)
    assert len(sent) == 1 and b"carol@example.test" in sent[0]  # the Sent copy keeps the Bcc

    # Reply and forward, with the original appended and its attachment carried over.
    payload = bytes(range(200)) * 10
    _append_with_attachment(m, marker + " original", payload)

    def reply_and_forward():
        with _client(eas, users, TABLET) as c:
            inbox, key, items = _synced_inbox(c)
            original = next(i for i in items if i.fields.get("Email.Subject") == marker + " original")
            for command, subject in (("SmartReply", "Re: " + marker), ("SmartForward", "Fwd: " + marker)):
                mime = (f"From: {TABLET}\r\nTo: {PHONE}\r\nSubject: {subject}\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n\r\nmy answer\r\n").encode()
                body = wbxml.encode(Element("ComposeMail", command, [
                    Element("ComposeMail", "ClientId", text=uuid.uuid4().hex),
                    Element("ComposeMail", "Source", [Element("ComposeMail", "FolderId", text=inbox.id),
                                                      Element("ComposeMail", "ItemId", text=original.server_id)]),
                    Element("ComposeMail", "Mime", opaque=mime)]))
                r = _post(eas, TABLET, users, command, body, policy_key=c._transport.policy_key,
                          device=c._transport.device_id)
                assert r.status_code == 200 and r.content == b"", r.content
    await asyncio.to_thread(reply_and_forward)
    for _ in range(50):
        if found(p, "INBOX", "Fwd: " + marker) and found(p, "INBOX", "Re: " + marker):
            break
        await asyncio.sleep(0.1)
    reply = email.message_from_bytes(found(p, "INBOX", "Re: " + marker)[0])
    text = reply.get_payload(decode=True).decode() if not reply.is_multipart() else reply.as_string()
    assert "my answer" in text and "see the" in text  # the original is quoted below
    forward = email.message_from_bytes(found(p, "INBOX", "Fwd: " + marker)[0])
    attachments = [part.get_payload(decode=True) for part in forward.walk() if part.get_filename() == "report.bin"]
    assert attachments == [payload]
    m.select("INBOX")
    flags = m.fetch(m.search(None, "SUBJECT", f'"{marker} original"')[1][0], "(FLAGS)")[1][0]
    assert b"\\Answered" in flags and b"$Forwarded" in flags
    m.logout()
    p.logout()


async def test_protocol_12_1_raw_mime_sendmail_with_save_in_sent(eas, users, dovecot, certs):
    """Before 14.0 SendMail's body is the message itself (Content-Type message/rfc822), SaveInSent in the query."""
    import asyncio
    marker = "raw121" + uuid.uuid4().hex[:6]
    device = "RAW121" + uuid.uuid4().hex[:6].upper()

    def device_side():
        provision = wbxml.encode(Element("Provision", "Provision", [Element("Provision", "Policies", [
            Element("Provision", "Policy", [Element("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML")])])]))
        first = wbxml.decode(_post(eas, TABLET, users, "Provision", provision, device=device, version="12.1").content)
        temporary = first.find("Policies").find("Policy").text_of("PolicyKey")
        ack = wbxml.encode(Element("Provision", "Provision", [Element("Provision", "Policies", [
            Element("Provision", "Policy", [Element("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML"),
                                            Element("Provision", "PolicyKey", text=temporary),
                                            Element("Provision", "Status", text="1")])])]))
        final = wbxml.decode(_post(eas, TABLET, users, "Provision", ack, device=device, version="12.1",
                                   policy_key=temporary).content).find("Policies").find("Policy").text_of("PolicyKey")
        mime = (f"From: {TABLET}\r\nTo: {PHONE}\r\nSubject: {marker}\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\nsent the old way\r\n").encode()
        r = requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync",
                          params={"Cmd": "SendMail", "User": TABLET, "DeviceId": device, "DeviceType": "OldPhone",
                                  "SaveInSent": "T"},
                          data=mime, auth=(TABLET, users[TABLET]), verify=eas["ca"], timeout=30,
                          headers={"Content-Type": "message/rfc822", "MS-ASProtocolVersion": "12.1",
                                   "X-MS-PolicyKey": final})
        assert r.status_code == 200 and r.content == b""
        bad = requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync",
                            params={"Cmd": "SendMail", "User": TABLET, "DeviceId": device, "DeviceType": "OldPhone"},
                            data=b"Subject: nobody to send to\r\n\r\nx\r\n", auth=(TABLET, users[TABLET]),
                            verify=eas["ca"], timeout=30,
                            headers={"Content-Type": "message/rfc822", "MS-ASProtocolVersion": "12.1",
                                     "X-MS-PolicyKey": final})
        assert bad.status_code == 500  # before 14.0 a failed send is an HTTP error
    await asyncio.to_thread(device_side)
    p = _imap(dovecot, certs, PHONE, users)
    m = _imap(dovecot, certs, TABLET, users)
    for _ in range(50):
        p.select("INBOX")
        if p.search(None, "SUBJECT", f'"{marker}"')[1][0]:
            break
        await asyncio.sleep(0.1)
    assert p.search(None, "SUBJECT", f'"{marker}"')[1][0]
    m.select("Sent")
    assert m.search(None, "SUBJECT", f'"{marker}"')[1][0]
    p.logout()
    m.logout()


def test_a_mail_store_that_is_down_gives_503_with_retry_after(eas):
    r = requests.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync",
                      params={"Cmd": "FolderSync", "User": "dan@example.test", "DeviceId": "DOWN1",
                              "DeviceType": "TestPhone"}, data=_folder_sync(), auth=("dan@example.test", "whatever"),
                      verify=eas["ca"], timeout=30, headers={"Content-Type": WBXML, "MS-ASProtocolVersion": "14.1"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0


async def test_16_drafts_created_retried_and_sent(eas, users, dovecot, certs):
    import asyncio
    from email.message import EmailMessage
    marker = "draft" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)

    def device_side():
        with _client(eas, users, TABLET) as c:
            folders = {f.type: f for f in c.list_folders()}
            drafts, inbox = folders[FolderType.DRAFTS], folders[FolderType.INBOX]
            key = c.sync_folder(drafts.id).sync_key
            key = c.sync_folder(drafts.id, key).sync_key
            msg = EmailMessage()
            msg["To"] = PHONE
            msg["Subject"] = marker
            msg.set_content("a draft body")
            made = c.create_email_draft(drafts.id, key, msg, client_id="draft-1")
            assert made.status == "1" and made.server_id.startswith(drafts.id + ":")
            # The answer was lost: the device sends the same Add with the same key again.
            again = c.create_email_draft(drafts.id, key, msg, client_id="draft-1")
            assert again.server_id == made.server_id and again.sync_key == made.sync_key
            # Not a draft folder: refused, not faked.
            inbox_key = c.sync_folder(inbox.id).sync_key
            refused = c.create_email_draft(inbox.id, inbox_key, msg, client_id="not-a-draft")
            assert refused.status == "6" and refused.server_id is None
            # Send the draft: Email2:Send in a Change.
            body = wbxml.encode(Element("AirSync", "Sync", [Element("AirSync", "Collections", [
                Element("AirSync", "Collection", [
                    Element("AirSync", "SyncKey", text=made.sync_key), Element("AirSync", "CollectionId", text=drafts.id),
                    Element("AirSync", "Commands", [Element("AirSync", "Change", [
                        Element("AirSync", "ServerId", text=made.server_id),
                        Element("AirSync", "ApplicationData", [Element("Email2", "Send")])])])])])]))
            r = _post(eas, TABLET, users, "Sync", body, version="16.1", policy_key=c._transport.policy_key,
                      device=c._transport.device_id)
            collection = wbxml.decode(r.content).find("Collections").find("Collection")
            assert collection.text_of("Status") == "1"
            deleted = [d.text_of("ServerId") for d in collection.find("Commands").findall("Delete")]
            assert deleted == [made.server_id]
    m.select("Drafts")
    await asyncio.to_thread(device_side)
    m.select("Drafts")
    assert m.search(None, "SUBJECT", f'"{marker}"')[1] == [b""]  # sent, so no longer a draft
    p = _imap(dovecot, certs, PHONE, users)
    for _ in range(50):
        p.select("INBOX")
        if p.search(None, "SUBJECT", f'"{marker}"')[1][0]:
            break
        await asyncio.sleep(0.1)
    assert len(p.search(None, "SUBJECT", f'"{marker}"')[1][0].split()) == 1
    m.select("Sent")
    assert m.search(None, "SUBJECT", f'"{marker}"')[1][0]
    p.logout()
    m.logout()


def test_flag_due_dates_and_categories_reach_imap_and_other_devices(eas, users, dovecot, certs):
    marker = "flagcat" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    _append(m, marker)

    def sync_all(c, folder_id, key="0"):
        if key == "0":
            key = c.sync_folder(folder_id).sync_key
        items = []
        while True:
            result = c.sync_folder(folder_id, key, window_size=200)
            items += result.added + result.changed
            key = result.sync_key
            if not result.more_available:
                return key, items

    with _client(eas, users, TABLET) as a, _client(eas, users, TABLET) as b:
        inbox = next(f for f in a.list_folders() if f.type == FolderType.INBOX)
        key_a, items = sync_all(a, inbox.id)
        item = next(i for i in items if i.fields.get("Email.Subject") == marker)
        key_b, _ = sync_all(b, inbox.id)
        due = "2030-02-03T04:05:06.000Z"
        change = wbxml.encode(Element("AirSync", "Sync", [Element("AirSync", "Collections", [
            Element("AirSync", "Collection", [
                Element("AirSync", "SyncKey", text=key_a), Element("AirSync", "CollectionId", text=inbox.id),
                Element("AirSync", "Commands", [Element("AirSync", "Change", [
                    Element("AirSync", "ServerId", text=item.server_id),
                    Element("AirSync", "ApplicationData", [
                        Element("Email", "Flag", [Element("Email", "Status", text="2"),
                                                  Element("Email", "FlagType", text="Follow up"),
                                                  Element("Tasks", "DueDate", text=due),
                                                  Element("Tasks", "UtcDueDate", text=due)]),
                        Element("Email", "Categories", [Element("Email", "Category", text="Work"),
                                                        Element("Email", "Category", text="Big project")])])])])])])]))
        r = _post(eas, TABLET, users, "Sync", change, policy_key=a._transport.policy_key,
                  device=a._transport.device_id)
        assert wbxml.decode(r.content).find("Collections").find("Collection").text_of("Status") == "1"
        m.select("INBOX")
        uid = item.server_id.rsplit(":", 1)[1]
        flags = m.uid("FETCH", uid, "(FLAGS)")[1][0]
        assert b"\\Flagged" in flags and b"$label2" in flags and b"Big_project" in flags
        # The other device hears of it, due date and categories included.
        key_b, changes = sync_all(b, inbox.id, key_b)
        seen = next(i for i in changes if i.server_id == item.server_id)
        assert seen.fields.get("Tasks.DueDate") == due and seen.fields.get("Email.FlagType") == "Follow up"
        assert "Work" in seen.fields.values() or seen.fields.get("Email.Category") in ("Work", "Big project")
        # A category added by another IMAP client reaches the device as a Change.
        m.uid("STORE", uid, "+FLAGS", "(Urgent)")
        key_a2, changes = sync_all(a, inbox.id, r and wbxml.decode(r.content).find("Collections").find(
            "Collection").text_of("SyncKey"))
        assert any(i.server_id == item.server_id for i in changes)
        # A message expunged by another IMAP client reaches the other device as a Delete.
        m.select("INBOX")
        m.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        m.expunge()
        gone = b.sync_folder(inbox.id, key_b)
        assert gone.deleted == [item.server_id] and not gone.added
    m.logout()


def test_random_bodies_never_take_the_gateway_down(eas, users):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    device = "FUZZ" + uuid.uuid4().hex[:8].upper()
    with _client(eas, users, PHONE, device) as c:
        key = c.provision()
    session = requests.Session()
    session.auth = (PHONE, users[PHONE])
    session.verify = eas["ca"]
    session.trust_env = False
    commands = ["Sync", "FolderSync", "Provision", "ItemOperations", "Search", "Settings", "MoveItems",
                "GetItemEstimate", "SendMail", "SmartReply", "Ping", "ValidateCert", "Find", "FolderCreate"]
    real = wbxml.encode(Element("AirSync", "Sync", [Element("AirSync", "Collections", [
        Element("AirSync", "Collection", [Element("AirSync", "SyncKey", text="0"),
                                          Element("AirSync", "CollectionId", text="1")])])]))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(commands),
           st.one_of(st.binary(max_size=300),
                     st.binary(max_size=40).map(lambda tail: b"\x03\x01\x6a\x00" + tail),
                     st.integers(0, len(real) - 1).map(lambda cut: real[:cut])))
    def post(command, body):
        r = session.post(f"https://127.0.0.1:{eas['port']}/Microsoft-Server-ActiveSync", data=body, timeout=30,
                         params={"Cmd": command, "User": PHONE, "DeviceId": device, "DeviceType": "Fuzzer"},
                         headers={"Content-Type": WBXML, "MS-ASProtocolVersion": "14.1", "X-MS-PolicyKey": key})
        assert r.status_code in (200, 400, 500 if command in ("SendMail", "SmartReply") else 200), (command, body)
        assert r.status_code != 500 or command in ("SendMail", "SmartReply")
    post()
    r = _post(eas, PHONE, users, "FolderSync", _folder_sync(), policy_key=key, device=device)
    assert r.status_code == 200 and wbxml.decode(r.content).text_of("Status") == "1"  # still serving
    metrics = requests.get(f"https://127.0.0.1:{eas['port']}/metrics", verify=eas["ca"], timeout=10).text
    assert 'casgate_eas_commands_total{command="FolderSync",result="ok"}' in metrics


def test_a_conflicting_change_loses_to_the_server_by_default(eas, users, dovecot, certs):
    marker = "conflict" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    _append(m, marker)
    with _client(eas, users, TABLET) as c:
        inbox = next(f for f in c.list_folders() if f.type == FolderType.INBOX)
        key = c.sync_folder(inbox.id).sync_key
        while True:
            result = c.sync_folder(inbox.id, key, window_size=200)
            key = result.sync_key
            item = next((i for i in result.added if i.fields.get("Email.Subject") == marker), None) or locals().get(
                "item")
            if not result.more_available:
                break
        uid = item.server_id.rsplit(":", 1)[1]
        m.select("INBOX")
        m.uid("STORE", uid, "+FLAGS", "(\\Flagged)")  # the server changes it...
        done = c.apply_email_changes(inbox.id, key, [EmailChange(item.server_id, read=True)])  # ...and so does the phone
        flags = m.uid("FETCH", uid, "(FLAGS)")[1][0]
        assert b"\\Seen" not in flags and b"\\Flagged" in flags  # the server won: the phone's change was not applied
        later = c.sync_folder(inbox.id, done.sync_key)
        server_version = next(i for i in later.changed if i.server_id == item.server_id)
        assert server_version.fields.get("Email.Read") == "0" and server_version.fields.get("Email.Status") == "2"
    m.logout()


def test_item_operations_moves_a_whole_conversation(eas, users, dovecot, certs):
    from gateway.activesync.email_item import conversation_id
    marker = "thread" + uuid.uuid4().hex[:6]
    root_id = f"<{uuid.uuid4()}@example.test>"
    original = (f"From: a@example.test\r\nTo: {TABLET}\r\nSubject: {marker}\r\nMessage-ID: {root_id}\r\n\r\nfirst\r\n")
    reply = (f"From: b@example.test\r\nTo: {TABLET}\r\nSubject: Re: {marker}\r\nMessage-ID: <{uuid.uuid4()}@x>\r\n"
             f"In-Reply-To: {root_id}\r\nReferences: {root_id}\r\n\r\nsecond\r\n")
    m = _imap(dovecot, certs, TABLET, users)
    for raw in (original, reply):
        assert m.append("INBOX", None, None, raw.encode())[0] == "OK"
    _append(m, marker + " unrelated")
    with _client(eas, users, TABLET) as c:
        archive = next(f for f in c.list_folders() if f.name == "Archive")
        body = wbxml.encode(Element("ItemOperations", "ItemOperations", [Element("ItemOperations", "Move", [
            Element("ItemOperations", "ConversationId", opaque=conversation_id(original.encode())),
            Element("ItemOperations", "DstFldId", text=archive.id)])]))
        doc = wbxml.decode(_post(eas, TABLET, users, "ItemOperations", body, policy_key=c._transport.policy_key,
                                 device=c._transport.device_id).content)
        assert doc.find("Response").find("Move").text_of("Status") == "1"
    m.select("Archive")
    assert len(m.search(None, "SUBJECT", f'"{marker}"')[1][0].split()) == 2
    m.select("INBOX")
    left = m.search(None, "SUBJECT", f'"{marker}"')[1][0].split()
    assert len(left) == 1  # only the unrelated message stays
    m.logout()


def test_protocol_2_5_device_provisions_with_wap_xml_and_syncs(eas, users, dovecot, certs):
    device = "OLD25" + uuid.uuid4().hex[:6].upper()
    m = _imap(dovecot, certs, TABLET, users)
    _append(m, "for an old phone", html=True)
    m.logout()
    ask = wbxml.encode(Element("Provision", "Provision", [Element("Provision", "Policies", [
        Element("Provision", "Policy", [Element("Provision", "PolicyType", text="MS-WAP-Provisioning-XML")])])]))
    first = wbxml.decode(_post(eas, TABLET, users, "Provision", ask, device=device, version="2.5").content)
    policy = first.find("Policies").find("Policy")
    assert policy.text_of("Status") == "1" and policy.text_of("Data").startswith("<wap-provisioningdoc>")
    ack = wbxml.encode(Element("Provision", "Provision", [Element("Provision", "Policies", [
        Element("Provision", "Policy", [Element("Provision", "PolicyType", text="MS-WAP-Provisioning-XML"),
                                        Element("Provision", "PolicyKey", text=policy.text_of("PolicyKey")),
                                        Element("Provision", "Status", text="1")])])]))
    key = wbxml.decode(_post(eas, TABLET, users, "Provision", ack, device=device, version="2.5",
                             policy_key=policy.text_of("PolicyKey")).content).find("Policies").find(
        "Policy").text_of("PolicyKey")
    # Wrong policy key before 14.0: HTTP 449.
    assert _post(eas, TABLET, users, "FolderSync", _folder_sync(), device=device, version="2.5",
                 policy_key=1).status_code == 449
    hierarchy = wbxml.decode(_post(eas, TABLET, users, "FolderSync", _folder_sync(), device=device, version="2.5",
                                   policy_key=key).content)
    inbox = next(a.text_of("ServerId") for a in hierarchy.find("Changes").findall("Add") if a.text_of("Type") == "2")

    def sync(sync_key: str) -> Element:
        body = wbxml.encode(Element("AirSync", "Sync", [Element("AirSync", "Collections", [
            Element("AirSync", "Collection", [
                Element("AirSync", "Class", text="Email"), Element("AirSync", "SyncKey", text=sync_key),
                Element("AirSync", "CollectionId", text=inbox), Element("AirSync", "WindowSize", text="5"),
                Element("AirSync", "Options", [Element("AirSync", "Truncation", text="1")])])])]))
        doc = wbxml.decode(_post(eas, TABLET, users, "Sync", body, device=device, version="2.5",
                                 policy_key=key).content)
        return doc.find("Collections").find("Collection")
    started = sync("0")
    assert started.text_of("Class") == "Email" and started.text_of("Status") == "1"
    window = sync(started.text_of("SyncKey"))
    assert window.find("Commands") is not None, wbxml.to_xml(window)
    adds = window.find("Commands").findall("Add")
    assert 0 < len(adds) <= 5
    data = adds[0].find("ApplicationData")
    assert data.find("Body", "Email") is not None and data.find("Body", "AirSyncBase") is None  # 2.5 shape
    assert data.text_of("BodyTruncated", "Email") in ("0", "1")


def test_a_changed_policy_makes_devices_provision_again(eas, users, workdir, certs, dovecot):
    root = workdir / f"eas-policy-{free_port()}"
    https = free_port()

    def start(policy: str):
        write_config(root, config_toml(certs, dovecot, https=https, extra='[domains."example.test"]\nimap = "dovecot"\n'
                                       + policy), users_toml([PHONE]))
        return start_gateway(root, [https])
    here = {"port": https, "ca": eas["ca"], "root": root}
    proc = start("")
    try:
        with _client(here, users, PHONE, "POLICYDEV1") as c:
            key = c.provision()
            assert wbxml.decode(_post(here, PHONE, users, "FolderSync", _folder_sync(), policy_key=key,
                                      device="POLICYDEV1").content).text_of("Status") == "1"
    finally:
        stop_gateway(proc)
    proc = start("[activesync]\npolicy = { DevicePasswordEnabled = 1, MinDevicePasswordLength = 6 }\n")
    try:
        doc = wbxml.decode(_post(here, PHONE, users, "FolderSync", _folder_sync(), policy_key=key,
                                 device="POLICYDEV1").content)
        assert doc.text_of("Status") == "143"  # the policy changed: fetch it again
        with _client(here, users, PHONE, "POLICYDEV1") as c:
            new_key = c.provision()
        assert wbxml.decode(_post(here, PHONE, users, "FolderSync", _folder_sync(), policy_key=new_key,
                                  device="POLICYDEV1").content).text_of("Status") == "1"
    finally:
        stop_gateway(proc)


def test_push_a_held_ping_wakes_within_a_second_of_lmtp_delivery(eas, users, workdir, certs, dovecot):
    """With the Ping's own look every 30 s (the default), only the push hub's IDLE can wake it this fast."""
    import email.message
    import smtplib
    import threading
    root = workdir / f"eas-push-{free_port()}"
    https = free_port()
    write_config(root, config_toml(certs, dovecot, https=https, extra='[domains."example.test"]\nimap = "dovecot"\n'
                                   "[activesync]\nping_min_heartbeat = 1\n"), users_toml([TABLET]))
    proc = start_gateway(root, [https])
    here = {"port": https, "ca": eas["ca"], "root": root}
    delivered = {}

    def deliver():
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "x@example.test", TABLET, "pushed " + uuid.uuid4().hex[:6]
        msg.set_content("now")
        delivered["at"] = time.monotonic()
        smtplib.LMTP("127.0.0.1", dovecot.lmtp_port).send_message(msg)
    try:
        with _client(here, users, TABLET) as c:
            inbox, key, _ = _synced_inbox(c)
            timer = threading.Timer(1.5, deliver)
            timer.start()
            woken = c.ping([inbox.id], heartbeat=60)
            answered = time.monotonic()
            timer.join()
            assert woken.status == "2" and woken.changed_folder_ids == [inbox.id]
            assert answered - delivered["at"] < 1.0
    finally:
        stop_gateway(proc)


def test_two_nodes_a_ping_on_one_hears_a_change_made_through_the_other(eas, users, workdir, certs, dovecot):
    """Two gateways sharing PostgreSQL state and the Redis bus: a phone's Ping held on node A is woken by a
    move another phone made through node B (the folder is not INBOX, and A's own looks are a minute apart)."""
    import asyncio
    import threading

    import asyncpg

    from fixtures_state import PG_DSN
    schema = "casgate_eas_" + uuid.uuid4().hex[:12]
    nodes, procs = [], []
    marker = "twonodes" + uuid.uuid4().hex[:6]
    m = _imap(dovecot, certs, TABLET, users)
    _append(m, marker)
    try:
        for name in ("a", "b"):
            root = workdir / f"eas-node-{name}-{free_port()}"
            https = free_port()
            state = (f'[state]\nbackend = "postgresql"\ndsn = "{PG_DSN}"\nschema = "{schema}"\nbus = "redis"\n'
                     f'redis_url = "redis://127.0.0.1:6379/0"\n')
            extra = ('[domains."example.test"]\nimap = "dovecot"\n[activesync]\nping_min_heartbeat = 1\n'
                     "ping_check_interval = 60\npush_poll_interval = 60\n")
            config = config_toml(certs, dovecot, https=https, extra=extra).replace('[state]\npath = "state.db"\n', state)
            write_config(root, config, users_toml([TABLET]))
            procs.append(start_gateway(root, [https]))
            nodes.append({"port": https, "ca": eas["ca"], "root": root})
        with _client(nodes[0], users, TABLET, "NODEAPHONE") as a, _client(nodes[1], users, TABLET, "NODEBPHONE") as b:
            archive = next(f for f in a.list_folders() if f.name == "Archive")
            key = a.sync_folder(archive.id).sync_key
            a.sync_folder(archive.id, key, window_size=200)
            inbox_b, _, items = _synced_inbox(b)
            item = next(i for i in items if i.fields.get("Email.Subject") == marker)
            moved = {}

            def move_through_b():
                moved["at"] = time.monotonic()
                b.move_item(item.server_id, inbox_b.id, archive.id)
            timer = threading.Timer(1.5, move_through_b)
            timer.start()
            woken = a.ping([archive.id], heartbeat=60)
            answered = time.monotonic()
            timer.join()
            assert woken.status == "2" and woken.changed_folder_ids == [archive.id]
            assert answered - moved["at"] < 1.5
    finally:
        for proc in procs:
            stop_gateway(proc)
        m.logout()

        async def drop():
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        asyncio.run(drop())


def test_gal_search_and_resolve_recipients_with_free_busy(eas, users):
    import datetime as dt
    with _client(eas, users, TABLET) as c:
        found = c.search_gal("phone")
        assert [(g.email_address, g.display_name, g.first_name, g.last_name) for g in found] == [
            (PHONE, "Phone Example", "Phone", "Example")]
        assert c.search_gal("nobody-by-that-name") == []
        start = dt.datetime(2030, 3, 4, 8, tzinfo=dt.timezone.utc)
        body = wbxml.encode(Element("ResolveRecipients", "ResolveRecipients", [
            Element("ResolveRecipients", "To", text=PHONE), Element("ResolveRecipients", "To", text="Example"),
            Element("ResolveRecipients", "To", text="stranger@elsewhere.test"),
            Element("ResolveRecipients", "Options", [
                Element("ResolveRecipients", "CertificateRetrieval", text="2"),
                Element("ResolveRecipients", "Availability", [
                    Element("ResolveRecipients", "StartTime", text=start.strftime("%Y-%m-%dT%H:%M:%SZ")),
                    Element("ResolveRecipients", "EndTime",
                            text=(start + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))])])]))
        doc = wbxml.decode(_post(eas, TABLET, users, "ResolveRecipients", body, policy_key=c._transport.policy_key,
                                 device=c._transport.device_id).content)
        assert doc.text_of("Status") == "1"
        exact, ambiguous, unknown = doc.findall("Response")
        assert exact.text_of("Status") == "1" and exact.find("Recipient").text_of("EmailAddress") == PHONE
        availability = exact.find("Recipient").find("Availability")
        # Phone has no CalDAV back end in this gateway: free/busy is unavailable, said so, not made up.
        assert availability.text_of("Status") == "162" and availability.find("MergedFreeBusy") is None
        assert exact.find("Recipient").find("Certificates").text_of("Status") == "7"
        assert ambiguous.text_of("Status") == "2" and int(ambiguous.text_of("RecipientCount")) >= 2
        assert unknown.text_of("Status") == "4" and unknown.text_of("RecipientCount") == "0"


def test_a_hanging_sync_waits_for_new_mail(eas, users, dovecot, certs):
    import threading
    m = _imap(dovecot, certs, TABLET, users)
    with _client(eas, users, TABLET) as c:
        inbox, key, _ = _synced_inbox(c)

        def hanging(extra: list[Element]) -> requests.Response:
            body = wbxml.encode(Element("AirSync", "Sync", [Element("AirSync", "Collections", [
                Element("AirSync", "Collection", [Element("AirSync", "SyncKey", text=key),
                                                  Element("AirSync", "CollectionId", text=inbox.id)])]), *extra]))
            return _post(eas, TABLET, users, "Sync", body, policy_key=c._transport.policy_key,
                         device=c._transport.device_id)
        subject = "hanging " + uuid.uuid4().hex[:6]
        timer = threading.Timer(1.0, lambda: _append(m, subject))
        timer.start()
        t0 = time.monotonic()
        r = hanging([Element("AirSync", "HeartbeatInterval", text="30")])
        timer.join()
        assert time.monotonic() - t0 < 10
        collection = wbxml.decode(r.content).find("Collections").find("Collection")
        adds = collection.find("Commands").findall("Add")
        assert [a.find("ApplicationData").text_of("Subject", "Email") for a in adds] == [subject]
        # Out of bounds: Status 14 and the limit (Wait counts minutes: 3540 s is 59).
        doc = wbxml.decode(hanging([Element("AirSync", "Wait", text="100")]).content)
        assert doc.text_of("Status") == "14" and doc.text_of("Limit") == "59"
    m.logout()
