"""The push hub, the IDLE watcher and Dovecot's push notifications, against real Dovecots (LMTP, IMAP)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.message
import imaplib
import json
import smtplib
import socket
import subprocess
import threading
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from pyactivesync import Client

from adapters.imap import ImapEndpoint
from adapters.imap.idle import watch
from adapters.interfaces import Credentials, UserRecord
from gateway import tls
from gateway.config import Config, ConfigError, load
from gateway.demo.dovecot import Dovecot
from gateway.demo.procs import free_port
from gateway.http.dovecot_push import PATH as PUSH_PATH
from gateway.http.dovecot_push import register
from gateway.services.backends import Backends
from gateway.services.mailsessions import MailSessions
from gateway.services.dovecot_push import LUA_SCRIPT, DovecotPush, Notification, NotificationError, Senders, parse
from gateway.services.pushhub import PushHub, channel
from gateway.state.bus import LocalBus
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER = "bob@example.test"


def _endpoint(dovecot, certs) -> ImapEndpoint:
    return ImapEndpoint("127.0.0.1", dovecot.imaps_port, "implicit", tls.client_context(certs.ca_cert), timeout=5)


async def _append(dovecot, certs, users, folder: str = "INBOX") -> None:
    from adapters.imap import ImapMailStore
    store = ImapMailStore(_endpoint(dovecot, certs), Credentials(USER, users[USER]))
    async with AsyncExitStack() as stack:
        await store.start(stack)
        await store.append(folder, b"Subject: push\r\n\r\nhello\r\n")


async def test_idle_watch_reports_a_new_message(dovecot, certs, users):
    seen = asyncio.Event()
    task = asyncio.ensure_future(watch(_endpoint(dovecot, certs), Credentials(USER, users[USER]), "INBOX", seen.set))
    try:
        await asyncio.sleep(0.5)  # logged in and idling
        assert not seen.is_set()
        await _append(dovecot, certs, users)
        await asyncio.wait_for(seen.wait(), 2)
    finally:
        task.cancel()


async def test_idle_watch_ends_on_refused_credentials(dovecot, certs):
    await asyncio.wait_for(watch(_endpoint(dovecot, certs), Credentials(USER, "wrong"), "INBOX", lambda: None), 10)


async def test_notify_watch_names_each_changed_folder_new_mail_and_flags(dovecot, certs, users):
    """NOTIFY (RFC 5465) on one connection: a message in a folder with a non-ASCII name (which Dovecot names in
    raw UTF-8), a flag set in INBOX."""
    from adapters.imap import ImapMailStore
    from adapters.imap.idle import watch_all
    odd = "Prüfung " + uuid.uuid4().hex[:6]
    seen: list[str] = []
    ready: list[bool] = []
    changed = asyncio.Event()

    def on_change(folder: str) -> None:
        seen.append(folder)
        changed.set()
    store = ImapMailStore(_endpoint(dovecot, certs), Credentials(USER, users[USER]))
    async with AsyncExitStack() as stack:
        await store.start(stack)
        await store.create_folder(odd)
        task = asyncio.ensure_future(watch_all(_endpoint(dovecot, certs), Credentials(USER, users[USER]), on_change,
                                               ready.append))
        try:
            for _ in range(50):
                if ready:
                    break
                await asyncio.sleep(0.1)
            assert ready == [True] and not seen
            await store.append(odd, b"Subject: notify\r\n\r\nhello\r\n")
            await asyncio.wait_for(changed.wait(), 3)
            assert set(seen) == {odd}
            seen.clear()
            changed.clear()
            m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=tls.client_context(certs.ca_cert))
            m.login(USER, users[USER])
            m.select("INBOX")
            m.store("1", "+FLAGS", "\\Flagged")  # INBOX is selected: its flag changes are reported too
            m.store("1", "-FLAGS", "\\Flagged")
            m.logout()
            await asyncio.wait_for(changed.wait(), 3)
            assert set(seen) == {"INBOX"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.delete_folder(odd)
    assert ready[-1] is False  # the watch's end is reported too


async def test_notify_watch_ends_on_refused_credentials(dovecot, certs):
    from adapters.imap.idle import watch_all
    assert await asyncio.wait_for(watch_all(_endpoint(dovecot, certs), Credentials(USER, "wrong"), print, print), 10)


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "idle-and-poll"])
async def test_hub_wakes_waiters_for_inbox_and_polled_folders_and_stops_idle_watchers(tmp_path, dovecot, certs, users,
                                                                                     notify):
    (tmp_path / "users.toml").write_text(f'[[user]]\naddress = "{USER}"\n')
    (tmp_path / "casgate.toml").write_text(
        f'[tls]\nca_file = "{certs.ca_cert}"\n[directory]\nusers_file = "users.toml"\n'
        f'[backends.dovecot]\ntype = "imap"\nurl = "imaps://127.0.0.1:{dovecot.imaps_port}"\n'
        f'[domains."example.test"]\nimap = "dovecot"\n')
    config: Config = load(tmp_path / "casgate.toml")
    backends = Backends(config)
    mail = MailSessions(backends, 60)
    # With NOTIFY a minute between polls shows that NOTIFY told the hub of the new message in Archive.
    hub = PushHub(backends, mail, poll_interval=60 if notify else 0.3, notify=notify)
    user = UserRecord(USER, USER, "Bob", "example.test", {"imap": "dovecot"})
    creds = Credentials(USER, users[USER])
    try:
        async with hub.waiting(user, "dovecot", creds, "127.0.0.1", {"INBOX", "Archive"}) as queue:
            async with hub.waiting(user, "dovecot", creds, "127.0.0.1", {"Archive"}) as other:
                assert hub.watching() == 1  # one watcher for both of the user's waiters
                await asyncio.sleep(1.5)  # logged in, watching; Dovecot's own news of a new mailbox is out
                assert hub._watchers[USER].notifying is notify
                while not queue.empty():
                    await queue.get()  # Dovecot reports the folders it made for this new mailbox (NOTIFY)
                while not other.empty():
                    await other.get()
                await _append(dovecot, certs, users)
                assert await asyncio.wait_for(queue.get(), 2) == "INBOX"
                assert other.empty()  # not watching INBOX
                await _append(dovecot, certs, users, "Archive")
                assert await asyncio.wait_for(other.get(), 3) == "Archive"
                assert hub.notifying(USER) is notify
                if notify:
                    # The NOTIFY connection is lost: its waiters are woken to look for themselves, and it is
                    # made again.
                    kicked = subprocess.run(["doveadm", "-c", str(dovecot.root / "dovecot.conf"), "kick", USER],
                                            capture_output=True, text=True, timeout=30)
                    assert kicked.returncode == 0, kicked.stderr
                    assert await asyncio.wait_for(other.get(), 3) == ""
                    assert not hub.notifying(USER)
                    for _ in range(100):
                        if hub.notifying(USER):
                            break
                        await asyncio.sleep(0.1)
                    assert hub.notifying(USER)
        assert hub.watching() == 0  # the last waiter left: the watcher stopped
    finally:
        hub.close()
        await mail.close()


# ---- Dovecot's push notifications (gateway/services/dovecot_push.py, gateway/http/dovecot_push.py)

PUSHER = "pusher@example.test"
PUSH_USERS = {PUSHER: "pusher-secret-9"}
PUSH_SECRET = "dovecot-to-casgate-1"
ODD_FOLDER = 'Käse "quoted" \\ back'  # exercises the Lua script's JSON quoting


@pytest.fixture(scope="module")
def push_port():
    return free_port()


@pytest.fixture(scope="module")
def push_dovecot(workdir, certs, push_port):
    """A Dovecot of its own whose Lua push hook POSTs to https://127.0.0.1:<push_port>/casgate/dovecot-push."""
    dc = Dovecot(workdir / f"dovecot-push-{push_port}", certs.cert, certs.key, users=dict(PUSH_USERS),
                 push_url=f"https://127.0.0.1:{push_port}{PUSH_PATH}", push_secret=PUSH_SECRET,
                 push_ca=certs.ca_cert).start()
    m = imaplib.IMAP4("127.0.0.1", dc.imap_port)
    m.login(PUSHER, PUSH_USERS[PUSHER])
    m.create(imap_quote(ODD_FOLDER))
    m.logout()
    yield dc
    dc.stop()


def imap_quote(name: str) -> str:
    from adapters.imap.wire import mailbox
    return mailbox(name).decode()


def test_parse_reads_the_ox_drivers_example_and_the_lua_scripts_body():
    ox = (b'{"user": "4@464646669", "imap-uidvalidity": 123412341, "imap-uid": 2345, "folder": "INBOX", '
          b'"event": "MessageNew", "from": "=?utf-8?q?=C3=84?= <alice@barfoo.org>", "subject": "Test", '
          b'"snippet": "Hey guys\\nThis is only a test...", "unseen": 2}')
    assert parse(ox) == Notification("4@464646669", "INBOX", "MessageNew")
    lua = '{"user":"bob@example.test","folder":"K\u00e4se \\u0022x\\u0022","event":"FlagsSet"}'.encode()
    assert parse(lua) == Notification("bob@example.test", 'Käse "x"', "FlagsSet")
    assert parse(b'{"user": "bob"}') == Notification("bob", "INBOX", "MessageNew")  # OX defaults


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"user"', b"{}", b'{"user": ""}', b'{"user": 7}', b'{"user": "a", "folder": null}',
    b'{"user": "a\\nb"}', b"\xff\xfe", b'{"user": "' + b"x" * 2000 + b'"}',
    b'{"user": "a", "pad": "' + b"x" * 70000 + b'"}'])
def test_parse_refuses_what_is_not_a_notification(body):
    with pytest.raises(NotificationError):
        parse(body)


@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["user", "folder", "event", "x"]),
                                 st.one_of(st.none(), st.integers(), st.text(max_size=30), st.lists(st.text())),
                                 max_size=4).map(lambda d: json.dumps(d).encode())))
@settings(max_examples=300, deadline=None)
def test_parse_raises_nothing_but_notification_error(body):
    try:
        note = parse(body)
    except NotificationError:
        return
    assert note.user and note.folder and note.event and note.user.isprintable()


def test_senders_by_network_and_secret():
    loop = Senders(["127.0.0.1", "::1"])
    assert loop.enabled and loop.allows("127.0.0.1", "") and loop.allows("::1", "")
    assert loop.allows("::ffff:127.0.0.1", "")  # an IPv4 peer on a dual-stack socket
    assert not loop.allows("127.0.0.2", "") and not loop.allows("10.1.2.3", "") and not loop.allows(None, "")
    assert not loop.allows("garbage", "")
    assert not Senders([]).enabled
    lan = Senders(["10.0.0.0/8"], "s3cret")
    basic = "Basic " + base64.b64encode(b"dovecot:s3cret").decode()
    assert lan.allows("10.9.8.7", "Bearer s3cret") and lan.allows("10.9.8.7", basic)
    assert not lan.allows("10.9.8.7", "") and not lan.allows("10.9.8.7", "Bearer s3cre")
    assert not lan.allows("10.9.8.7", "Basic !!!") and not lan.allows("10.9.8.7", "Digest s3cret")
    assert not lan.allows("192.168.1.1", "Bearer s3cret")


def test_config_keys_for_notifications(tmp_path):
    (tmp_path / "secret").write_text("from-file\n")
    (tmp_path / "casgate.toml").write_text('[activesync]\ndovecot_push_from = ["127.0.0.1", "10.0.0.0/8"]\n'
                                           'dovecot_push_secret_file = "secret"\n')
    cfg = load(tmp_path / "casgate.toml")
    assert cfg.activesync.dovecot_push_from == ["127.0.0.1", "10.0.0.0/8"]
    assert cfg.activesync.dovecot_push_secret_value(cfg) == "from-file"
    assert load_defaults().activesync.dovecot_push_from == []  # off unless configured
    (tmp_path / "casgate.toml").write_text('[activesync]\ndovecot_push_from = ["everyone"]\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "casgate.toml")
    assert caught.value.key == "activesync.dovecot_push_from"


def load_defaults() -> Config:
    return Config()


@contextlib.asynccontextmanager
async def _receiver_site(certs, port: int, receiver: DovecotPush):
    """The notification route alone, served over TLS like the gateway's HTTPS listener."""
    app = web.Application()
    register(app, receiver)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context(certs.cert, certs.key))
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}{PUSH_PATH}"
    finally:
        await runner.cleanup()


async def test_the_route_refuses_strangers_relays_and_bad_bodies(certs):
    bus = LocalBus()
    heard: list[str] = []
    await bus.subscribe(channel(PUSHER), heard.append)
    receiver = DovecotPush(bus, Senders(["127.0.0.1"], PUSH_SECRET))
    ssl_ctx = tls.client_context(certs.ca_cert)
    good = {"Authorization": f"Bearer {PUSH_SECRET}"}
    note = {"user": PUSHER.upper(), "folder": "Archive", "event": "MessageAppend"}
    async with _receiver_site(certs, free_port(), receiver) as url, aiohttp.ClientSession() as http:
        async def post(headers, **kw):
            async with http.post(url, headers=headers, ssl=ssl_ctx, **kw) as r:
                return r.status
        assert await post({}, json=note) == 403  # no secret
        assert await post({"Authorization": "Bearer wrong"}, json=note) == 403
        assert await post({**good, "X-Forwarded-For": "127.0.0.1"}, json=note) == 403  # relayed by a proxy
        assert heard == [] and receiver.counts["refused"] == 3
        assert await post(good, data=b"{not json") == 400
        assert await post(good, json={"user": PUSHER, "event": "MailboxCreate"}) == 204  # nothing to wake
        assert heard == []
        assert await post(good, json=note) == 204
        assert heard == ["Archive"]  # the login's channel, in any letter case
        assert receiver.counts == {"refused": 3, "bad": 1, "ignored": 1, "accepted": 1}
    app = web.Application()
    register(app, DovecotPush(bus, Senders([])))
    assert not any(r.resource and r.resource.canonical == PUSH_PATH for r in app.router.routes())


async def test_dovecot_notifications_alone_wake_waiters_at_once(tmp_path, certs, push_dovecot, push_port):
    """IDLE off and polls a minute apart: only the notifications of LMTP deliveries and IMAP APPENDs can wake
    these waiters within seconds."""
    (tmp_path / "users.toml").write_text(f'[[user]]\naddress = "{PUSHER}"\n')
    (tmp_path / "casgate.toml").write_text(
        f'[tls]\nca_file = "{certs.ca_cert}"\n[directory]\nusers_file = "users.toml"\n'
        f'[backends.dovecot]\ntype = "imap"\nurl = "imaps://127.0.0.1:{push_dovecot.imaps_port}"\n'
        f'[domains."example.test"]\nimap = "dovecot"\n')
    config = load(tmp_path / "casgate.toml")
    backends = Backends(config)
    mail = MailSessions(backends, 60)
    bus = LocalBus()
    hub = PushHub(backends, mail, bus, poll_interval=60, idle=False)
    receiver = DovecotPush(bus, Senders(["127.0.0.1"], PUSH_SECRET))
    user = UserRecord(PUSHER, PUSHER, "Pusher", "example.test", {"imap": "dovecot"})
    creds = Credentials(PUSHER, PUSH_USERS[PUSHER])
    try:
        async with _receiver_site(certs, push_port, receiver), \
                hub.waiting(user, "dovecot", creds, "127.0.0.1", {"INBOX", ODD_FOLDER}) as queue:
            await asyncio.sleep(0.3)
            assert queue.empty()
            await asyncio.to_thread(_lmtp, push_dovecot, PUSHER)
            assert await asyncio.wait_for(queue.get(), 5) == "INBOX"
            assert receiver.counts["accepted"] == 1
            await asyncio.to_thread(_imap_append, push_dovecot, ODD_FOLDER)
            assert await asyncio.wait_for(queue.get(), 5) == ODD_FOLDER
            assert receiver.counts["accepted"] == 2 and receiver.counts["refused"] == 0
    finally:
        hub.close()
        await mail.close()


def _lmtp(dc, to: str) -> None:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@example.test", to, "pushed " + uuid.uuid4().hex[:6]
    msg.set_content("now")
    with smtplib.LMTP("127.0.0.1", dc.lmtp_port) as lmtp:
        lmtp.send_message(msg)


def _imap_append(dc, folder: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", dc.imap_port)
    m.login(PUSHER, PUSH_USERS[PUSHER])
    typ, _ = m.append(imap_quote(folder), None, None, b"Subject: appended\r\n\r\nhello\r\n")
    m.logout()
    assert typ == "OK"


def test_a_held_ping_answers_from_a_dovecot_notification(workdir, certs, push_dovecot, push_port):
    """The whole path through a gateway process: Ping on Archive (not IDLE's INBOX; the gateway's own looks and
    polls a minute apart), an IMAP APPEND to Archive, and the Ping answers within seconds through the route."""
    root = workdir / f"push-ping-{push_port}"
    write_config(root, config_toml(certs, push_dovecot, https=push_port, extra=(
        '[domains."example.test"]\nimap = "dovecot"\n[activesync]\nping_min_heartbeat = 1\n'
        'ping_check_interval = 60\npush_poll_interval = 60\ndovecot_push_from = ["127.0.0.1"]\n'
        'dovecot_push_secret_file = "push.secret"\n')), users_toml([PUSHER]))
    (root / "push.secret").write_text(PUSH_SECRET + "\n")
    proc = start_gateway(root, [push_port])
    try:
        c = Client(f"127.0.0.1:{push_port}", PUSHER, PUSH_USERS[PUSHER], device_id="PUSHPHONE1", verify_ssl=True)
        c._transport.session.verify = str(certs.ca_cert)
        c._transport.session.trust_env = False
        with c:
            archive = next(f for f in c.list_folders() if f.name == "Archive")
            key = c.sync_folder(archive.id).sync_key
            c.sync_folder(archive.id, key, window_size=100)
            appended = {}

            def append():
                appended["at"] = time.monotonic()
                _imap_append(push_dovecot, "Archive")
            timer = threading.Timer(1.5, append)
            timer.start()
            woken = c.ping([archive.id], heartbeat=50)
            answered = time.monotonic()
            timer.join()
            assert woken.status == "2" and woken.changed_folder_ids == [archive.id]
            assert answered - appended["at"] < 10  # the gateway's own look would take 60 s
        log = (root / "gateway.log").read_text()
        assert f'"path": "{PUSH_PATH}", "status": 204' in log
    finally:
        stop_gateway(proc)


def test_the_demo_dovecot_loads_the_hook_only_when_asked(dovecot, push_dovecot):
    plain, pushing = ((dc.root / "dovecot.conf").read_text() for dc in (dovecot, push_dovecot))
    assert "push_notification" not in plain and "casgate_push_url" not in plain
    assert pushing.count("push_notification_lua") == 3  # lmtp, imap, pop3
    assert f"casgate_push_secret = {PUSH_SECRET}" in pushing
    script = pushing.partition("push_notification_driver = lua:file=")[2].split()[0]
    assert Path(script).read_text() == LUA_SCRIPT


def test_deliveries_go_on_when_the_gateway_is_down_or_hung(push_dovecot, push_port):
    """The hook waits for the gateway's answer inside the delivery, but never for long and never fails it."""
    def count() -> int:
        m = imaplib.IMAP4("127.0.0.1", push_dovecot.imap_port)
        m.login(PUSHER, PUSH_USERS[PUSHER])
        _, data = m.status("INBOX", "(MESSAGES)")
        m.logout()
        return int(data[0].split()[-1].rstrip(b")"))
    before = count()
    _lmtp(push_dovecot, PUSHER)  # nothing listens on the push port
    with socket.create_server(("127.0.0.1", push_port)):  # accepts, never answers
        started = time.monotonic()
        _lmtp(push_dovecot, PUSHER)
        assert time.monotonic() - started < 10  # bounded by the script's 2 s (Dovecot's default would be 60 s)
    assert count() == before + 2
    log = push_dovecot.log.read_text()
    assert "casgate push: 9003 connect(" in log and "casgate push: 9003 SSL handshaking" in log


# ---- the NOTIFY line reader (adapters/imap/idle.py), fed the server's lines directly

def _feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"),
               min_size=1, max_size=40), st.sampled_from(["quoted", "literal", "utf8-literal"]))
def test_notify_status_lines_name_their_folder_in_every_form(name, form):
    from adapters.imap.idle import _reported
    from adapters.imap.wire import encode_mailbox
    raw = name.encode() if form == "utf8-literal" and not name.isascii() else encode_mailbox(name)
    if form == "quoted":
        head = b'* STATUS "' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'" (MESSAGES 1)\r\n'
        rest = b""
    else:
        head = b"* STATUS {%d}\r\n" % len(raw)
        rest = raw + b" (MESSAGES 1 UIDNEXT 2)\r\n"
    seen: list[str] = []

    async def go():
        reader = _feed(rest)
        await _reported(reader, head, seen.append)
        assert reader.at_eof() or not await reader.read()  # the literal and its line were consumed
    asyncio.run(go())
    assert seen == ["INBOX" if name.isascii() and name.upper() == "INBOX" else name]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_notify_line_reader_takes_any_bytes_without_surprises(line, rest):
    from adapters.imap.idle import _reported
    seen: list[str] = []

    async def go():
        try:
            await _reported(_feed(rest), line, seen.append)
        except (ValueError, ConnectionResetError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
    asyncio.run(go())
    assert all(isinstance(folder, str) for folder in seen) and len(seen) <= 2
