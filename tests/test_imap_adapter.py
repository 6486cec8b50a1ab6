"""The IMAP adapter against a real Dovecot over TLS and STARTTLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import time
import uuid
from contextlib import AsyncExitStack

import pytest

from adapters.errors import AuthenticationFailed, BackendError, BackendUnavailable, Conflict, InvalidData, NotFound
from adapters.imap import ImapConnection, ImapEndpoint, ImapMailStore, check_login, connect, wire
from adapters.interfaces import Credentials, MailStore
from gateway import tls
from gateway.demo.procs import free_port


def _ep(dovecot, certs, mode="implicit", port=None):
    ctx = tls.client_context(certs.ca_cert)
    p = port or (dovecot.imaps_port if mode == "implicit" else dovecot.imap_port)
    return ImapEndpoint("127.0.0.1", p, mode, ctx, timeout=5)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_check_login_returns_post_login_capabilities(dovecot, certs, users, mode):
    caps = await check_login(_ep(dovecot, certs, mode), Credentials("alice@example.test", users["alice@example.test"]))
    assert "IMAP4REV1" in caps
    assert "CONDSTORE" in caps and "QRESYNC" in caps  # only advertised after login


async def test_check_login_wrong_password(dovecot, certs):
    with pytest.raises(AuthenticationFailed):
        await check_login(_ep(dovecot, certs), Credentials("alice@example.test", "wrong"),
                          client_ip="192.0.2.10")


async def test_check_login_unknown_user_same_error(dovecot, certs):
    with pytest.raises(AuthenticationFailed):
        await check_login(_ep(dovecot, certs), Credentials("nobody@example.test", "wrong"),
                          client_ip="192.0.2.11")


async def test_check_login_closed_port():
    ep = ImapEndpoint("127.0.0.1", free_port(), "implicit", None, timeout=2)
    with pytest.raises(BackendUnavailable):
        await check_login(ep, Credentials("a", "b"))


async def test_check_login_untrusted_certificate(dovecot, users):
    ep = ImapEndpoint("127.0.0.1", dovecot.imaps_port, "implicit", tls.client_context(None), timeout=5)
    with pytest.raises(BackendUnavailable):
        await check_login(ep, Credentials("alice@example.test", users["alice@example.test"]))


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_mail_store_round_trip(dovecot, certs, users, mode):
    store = ImapMailStore(_ep(dovecot, certs, mode), Credentials("bob@example.test", users["bob@example.test"]))
    assert isinstance(store, MailStore)
    subject = f"adapter test {uuid.uuid4()}"
    raw = (f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
           f"Message-ID: <{uuid.uuid4()}@example.test>\r\n\r\nHello Bob.\r\n").encode()
    async with AsyncExitStack() as stack:
        await store.start(stack)
        names = {f.name: f for f in await store.list_folders()}
        assert "INBOX" in names and names["Sent"].special_use == "\\Sent"
        before = await store.status("INBOX")
        uid = await store.append("INBOX", raw, flags=["\\Flagged"])
        after = await store.status("INBOX")
        assert after.messages == before.messages + 1
        assert after.highestmodseq is not None
        msgs = {m.uid: m for m in await store.list_messages("INBOX")}
        assert uid in msgs and msgs[uid].size == len(raw) and "\\Flagged" in msgs[uid].flags
        assert await store.fetch_message("INBOX", uid) == raw
        await store.set_flags("INBOX", [uid], ["\\Seen"])
        assert "\\Seen" in {m.uid: m for m in await store.list_messages("INBOX")}[uid].flags
        await store.expunge("INBOX", [uid])
        assert uid not in {m.uid for m in await store.list_messages("INBOX")}
        assert (await store.status("INBOX")).messages == before.messages


async def test_mail_store_wrong_password(dovecot, certs):
    store = ImapMailStore(_ep(dovecot, certs), Credentials("bob@example.test", "nope"), client_ip="192.0.2.12")
    async with AsyncExitStack() as stack:
        with pytest.raises(AuthenticationFailed):
            await store.start(stack)


async def test_failures_from_one_client_do_not_slow_another(dovecot, certs, users):
    """The back end's brute-force penalty follows the forwarded client address, not the gateway's."""
    import time
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            await check_login(_ep(dovecot, certs), Credentials("carol@example.test", "bad"), client_ip="192.0.2.50")
    t0 = time.monotonic()
    await check_login(_ep(dovecot, certs), Credentials("carol@example.test", users["carol@example.test"]),
                      client_ip="192.0.2.51")
    assert time.monotonic() - t0 < 1.5


# -- the MailStore on its own IMAP client (adapters/imap/wire.py) ------------------------------------------------

BOB = "bob@example.test"


def _store(dovecot, certs, users, mode="implicit", client_ip=None) -> ImapMailStore:
    return ImapMailStore(_ep(dovecot, certs, mode), Credentials(BOB, users[BOB]), client_ip)


@pytest.fixture
async def store(dovecot, certs, users, request):
    """Bob's mail store, started over the TLS mode the test names (``indirect`` parameter), implicit by default."""
    async with AsyncExitStack() as stack:
        store = _store(dovecot, certs, users, getattr(request, "param", "implicit"))
        await store.start(stack)
        yield store


def _big_message(size: int = 1_050_000) -> bytes:
    head = f"From: alice@example.test\r\nTo: {BOB}\r\nSubject: big {uuid.uuid4()}\r\n\r\n".encode()
    lines = b"".join(b"%076d\r\n" % i for i in range((size - len(head)) // 78 + 1))
    return head + lines


@pytest.fixture(scope="module")
async def bulk_folder(dovecot, certs, users):
    """A folder of 3,200 small messages, filled with MULTIAPPEND (RFC 3502) in batches of 400."""
    name = f"bulk-{uuid.uuid4().hex[:8]}"
    messages = [b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3200)]
    conn = await ImapConnection.open(_ep(dovecot, certs))
    try:
        await conn.login(BOB, users[BOB])
        await conn.command(b"CREATE", wire.mailbox(name))
        for i in range(0, len(messages), 400):
            await conn.command(b"APPEND", wire.mailbox(name), *(wire.Literal(m) for m in messages[i:i + 400]))
    finally:
        await conn.logout()
    return name, messages


@pytest.mark.parametrize("store", ["implicit", "starttls"], indirect=True)
async def test_list_messages_of_a_large_folder(store, bulk_folder):
    name, messages = bulk_folder
    listed = await store.list_messages(name)
    assert len(listed) == len(messages) == (await store.status(name)).messages
    assert [m.uid for m in listed] == sorted({m.uid for m in listed})
    assert [m.size for m in listed] == [len(m) for m in messages]  # MULTIAPPEND keeps their order
    assert all(m.internaldate for m in listed)
    assert await store.fetch_message(name, listed[1234].uid) == messages[1234]


@pytest.mark.parametrize("store", ["implicit", "starttls"], indirect=True)
async def test_stream_message_yields_the_fetched_bytes_in_bounded_chunks(store):
    raw = _big_message()
    uid = await store.append("INBOX", raw)
    chunks = [c async for c in store.stream_message("INBOX", uid, chunk_size=65536)]
    assert b"".join(chunks) == await store.fetch_message("INBOX", uid) == raw
    assert max(map(len, chunks)) <= 65536 and len(chunks) >= len(raw) // 65536
    small = [c async for c in store.stream_message("INBOX", uid, chunk_size=1000)]
    assert max(map(len, small)) <= 1000 and b"".join(small) == raw
    await store.expunge("INBOX", [uid])


async def test_abandoned_streams_leave_the_session_usable(store):
    raw = _big_message()
    uid = await store.append("INBOX", raw)
    conn = store._conn  # to tell a drained connection from a replaced one
    stream = store.stream_message("INBOX", uid)
    assert await stream.__anext__() == raw[:65536]
    await stream.aclose()
    assert (await store.status("INBOX")).messages >= 1
    async for _ in store.stream_message("INBOX", uid):
        break  # the generator is closed later, by the event loop; the next call waits for that
    assert await store.fetch_message("INBOX", uid) == raw
    assert store._conn is conn and not conn.broken
    await store.expunge("INBOX", [uid])


async def test_abandoned_large_stream_drops_the_connection_and_the_store_reconnects(store, monkeypatch):
    monkeypatch.setattr(wire, "DRAIN_LIMIT", 100_000)
    raw = _big_message()
    uid = await store.append("INBOX", raw)
    conn = store._conn
    stream = store.stream_message("INBOX", uid)
    await stream.__anext__()
    await stream.aclose()
    assert conn.broken
    assert await store.fetch_message("INBOX", uid) == raw
    assert store._conn is not conn
    await store.expunge("INBOX", [uid])


async def test_missing_messages_and_folders_are_not_found(store):
    missing = (await store.status("INBOX")).uidnext + 1000
    with pytest.raises(NotFound):
        await store.fetch_message("INBOX", missing)
    with pytest.raises(NotFound):
        async for _ in store.stream_message("INBOX", missing):
            pass
    with pytest.raises(NotFound):
        async for _ in store.stream_message(f"nothing-{uuid.uuid4()}", 1):
            pass
    with pytest.raises(NotFound):
        await store.status(f"nothing-{uuid.uuid4()}")
    with pytest.raises(NotFound):
        await store.append(f"nothing-{uuid.uuid4()}", b"Subject: x\r\n\r\nx\r\n")
    assert (await store.status("INBOX")).uidnext < missing  # and the session still answers


async def test_non_ascii_folder_names_travel_as_modified_utf7(store, dovecot, certs, users):
    name = f"Entwürfe – 日本語 {uuid.uuid4().hex[:6]}"
    await store.create_folder(name)
    with pytest.raises(Conflict):
        await store.create_folder(name)
    assert name in {f.name for f in await store.list_folders()}
    uid = await store.append(name, b"Subject: hi\r\n\r\nhi\r\n", flags=["\\Seen", "$Label"])
    assert [m.uid for m in await store.list_messages(name)] == [uid]
    # An independent client sees the RFC 3501 encoding on the wire.
    ctx = tls.client_context(certs.ca_cert)
    with imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=ctx) as m:
        m.login(BOB, users[BOB])
        _, lines = m.list('""', '"*"')
    assert any(wire.encode_mailbox(name) in line for line in lines)


async def test_append_keeps_flags_and_internal_date(store):
    when = dt.datetime(2023, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    uid = await store.append("Drafts", b"Subject: d\r\n\r\nd\r\n", flags=["\\Draft", "$Work"], when=when)
    got = {m.uid: m for m in await store.list_messages("Drafts")}[uid]
    assert {"\\Draft", "$Work"} <= set(got.flags)
    assert dt.datetime.strptime(got.internaldate, "%d-%b-%Y %H:%M:%S %z") == when
    with pytest.raises(InvalidData):
        await store.append("Drafts", b"x", flags=["bad flag)"])
    await store.expunge("Drafts", [uid])


async def test_select_agrees_with_status(store):
    name = f"sel-{uuid.uuid4().hex[:8]}"
    await store.create_folder(name)
    await store.append(name, b"Subject: 1\r\n\r\n1\r\n", flags=["\\Seen"])
    await store.append(name, b"Subject: 2\r\n\r\n2\r\n")
    await store.append(name, b"Subject: 3\r\n\r\n3\r\n")
    selected, status = await store.select(name), await store.status(name)
    assert selected == status and (selected.messages, selected.unseen) == (3, 2)
    assert selected.highestmodseq is not None and selected.uidnext > 3


async def test_the_store_reconnects_after_a_lost_connection(store):
    store._conn.close()  # as if the back end had gone away
    assert "INBOX" in {f.name for f in await store.list_folders()}


async def test_wire_login_failures_and_silent_servers(dovecot, certs, users):
    conn = await ImapConnection.open(_ep(dovecot, certs, "starttls"))
    try:
        with pytest.raises(AuthenticationFailed):
            await conn.login(BOB, "wrong", client_ip="192.0.2.13")
    finally:
        conn.close()

    async def mute(reader, writer):
        await reader.read()  # greets nobody
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await ImapConnection.open(ImapEndpoint("127.0.0.1", port, "none", None, timeout=0.5))
        assert time.monotonic() - t0 < 2
    finally:
        server.close()


async def test_master_user_login_with_an_authorization_identity(dovecot, certs, users):
    masters = dovecot.masters
    assert masters, "the session Dovecot is configured with a master user (conftest MASTER)"
    master, password = next(iter(masters.items()))
    conn = await ImapConnection.open(_ep(dovecot, certs))
    try:
        await conn.login(master, password, authzid=BOB, client_ip="192.0.2.14")
        assert "CONDSTORE" in conn.capabilities  # post-login capabilities: we are in
        assert (await conn.command(b"SELECT", wire.mailbox("INBOX"))).data("EXISTS")
    finally:
        await conn.logout()
    conn = await ImapConnection.open(_ep(dovecot, certs))
    try:
        with pytest.raises(AuthenticationFailed):
            await conn.login(master, "wrong", authzid=BOB, client_ip="192.0.2.15")
    finally:
        conn.close()


async def test_calling_the_store_from_inside_its_own_stream_fails_instead_of_hanging(dovecot, certs, users):
    ep = ImapEndpoint("127.0.0.1", dovecot.imaps_port, "implicit", tls.client_context(certs.ca_cert), timeout=0.5)
    async with AsyncExitStack() as stack:
        store = ImapMailStore(ep, Credentials(BOB, users[BOB]))
        await store.start(stack)
        raw = _big_message(200_000)
        uid = await store.append("INBOX", raw)
        got = []
        async for chunk in store.stream_message("INBOX", uid, chunk_size=50_000):
            got.append(chunk)
            if len(got) == 1:
                with pytest.raises(BackendError):
                    await store.status("INBOX")
                with pytest.raises(BackendError):
                    await store.list_messages("INBOX")
        assert b"".join(got) == raw  # the stream itself went on unharmed
        await store.expunge("INBOX", [uid])


# -- spare back-end connections (adapters/imap/connect.py SparePool) -------------------------------------------------

async def _until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _noop(session) -> bytes:
    session.writer.write(b"n1 NOOP\r\n")
    while not (line := await session.reader.readline()).startswith(b"n1 "):
        pass
    return line


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_a_login_uses_the_spare_the_previous_one_left(dovecot, certs, users, mode):
    pool = connect.SparePool(spares=1, max_age=30)
    ep = _ep(dovecot, certs, mode)
    creds = Credentials("alice@example.test", users["alice@example.test"])
    try:
        first = await connect.open_session(ep, creds, "192.0.2.20", spares=pool)
        assert (pool.hits, pool.misses) == (0, 1)
        await _until(lambda: pool.held(ep) == 1)
        second = await connect.open_session(ep, creds, "192.0.2.20", spares=pool)
        assert (pool.hits, pool.misses) == (1, 1)
        assert "CONDSTORE" in second.caps  # logged in: post-login capabilities
        for s in (first, second):
            assert (await _noop(s)).startswith(b"n1 OK")
            s.close()
        await _until(lambda: pool.held(ep) == 1)  # the second login asked for the next spare
    finally:
        pool.close()
    assert pool.held(ep) == 0


async def test_a_wrong_password_on_a_spare_is_still_refused(dovecot, certs, users):
    pool = connect.SparePool(spares=1, max_age=30)
    ep = _ep(dovecot, certs)
    try:
        pool.take(ep)
        await _until(lambda: pool.held(ep) == 1)
        with pytest.raises(AuthenticationFailed):
            await connect.open_session(ep, Credentials("alice@example.test", "wrong"), "192.0.2.21", spares=pool)
        assert pool.hits == 1
    finally:
        pool.close()


async def test_spares_expire_and_a_quiet_pool_holds_nothing(dovecot, certs, users):
    pool = connect.SparePool(spares=2, max_age=0.3)
    ep = _ep(dovecot, certs)
    try:
        assert pool.take(ep) is None
        await _until(lambda: pool.held(ep) == 2)
        await _until(lambda: pool.held(ep) == 0)
        await asyncio.sleep(0.5)
        assert pool.held(ep) == 0  # expiry does not refill
    finally:
        pool.close()


async def test_a_spare_that_died_is_replaced_by_a_fresh_connection(dovecot, certs, users, monkeypatch):
    pool = connect.SparePool(spares=1, max_age=30)
    ep = _ep(dovecot, certs)
    creds = Credentials("alice@example.test", users["alice@example.test"])
    try:
        pool.take(ep)
        await _until(lambda: pool.held(ep) == 1)
        conn, _ = pool._ready[ep][0]
        conn.writer.transport.abort()
        # Seen dead: skipped at once.
        session = await connect.open_session(ep, creds, spares=pool)
        assert pool.misses == 2 and pool.hits == 0
        session.close()
        await _until(lambda: pool.held(ep) == 1)
        # Died unseen (the loop has not yet noticed): the login falls back to a fresh connection.
        monkeypatch.setattr(connect, "_usable", lambda conn: True)
        conn, _ = pool._ready[ep][0]
        conn.writer.transport.abort()
        session = await connect.open_session(ep, creds, spares=pool)
        assert pool.hits == 1
        assert (await _noop(session)).startswith(b"n1 OK")
        session.close()
    finally:
        pool.close()


async def test_spares_to_a_back_end_that_is_down_are_not_an_error():
    pool = connect.SparePool(spares=1, max_age=30)
    ep = ImapEndpoint("127.0.0.1", free_port(), "none", timeout=2)
    try:
        with pytest.raises(BackendUnavailable):
            await connect.open_session(ep, Credentials("a", "b"), spares=pool)
        await asyncio.sleep(0.2)
        assert pool.held(ep) == 0 and pool._opening.get(ep) == 0
    finally:
        pool.close()
