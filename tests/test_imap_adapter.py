"""The IMAP adapter against a real Dovecot over TLS and STARTTLS."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest

from adapters.errors import AuthenticationFailed, BackendUnavailable
from adapters.imap import ImapEndpoint, ImapMailStore, check_login
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
