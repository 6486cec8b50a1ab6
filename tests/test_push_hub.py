"""The push hub and the IDLE watcher against the session's real Dovecot."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from adapters.imap import ImapEndpoint
from adapters.imap.idle import watch
from adapters.interfaces import Credentials, UserRecord
from gateway import tls
from gateway.config import Config, load
from gateway.services.backends import Backends
from gateway.services.mailsessions import MailSessions
from gateway.services.pushhub import PushHub

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


async def test_hub_wakes_waiters_for_inbox_and_polled_folders_and_stops_idle_watchers(tmp_path, dovecot, certs, users):
    (tmp_path / "users.toml").write_text(f'[[user]]\naddress = "{USER}"\n')
    (tmp_path / "casgate.toml").write_text(
        f'[tls]\nca_file = "{certs.ca_cert}"\n[directory]\nusers_file = "users.toml"\n'
        f'[backends.dovecot]\ntype = "imap"\nurl = "imaps://127.0.0.1:{dovecot.imaps_port}"\n'
        f'[domains."example.test"]\nimap = "dovecot"\n')
    config: Config = load(tmp_path / "casgate.toml")
    backends = Backends(config)
    mail = MailSessions(backends, 60)
    hub = PushHub(backends, mail, poll_interval=0.3)
    user = UserRecord(USER, USER, "Bob", "example.test", {"imap": "dovecot"})
    creds = Credentials(USER, users[USER])
    try:
        async with hub.waiting(user, "dovecot", creds, "127.0.0.1", {"INBOX", "Archive"}) as queue:
            async with hub.waiting(user, "dovecot", creds, "127.0.0.1", {"Archive"}) as other:
                assert hub.watching() == 1  # one watcher for both of the user's waiters
                await asyncio.sleep(0.6)
                await _append(dovecot, certs, users)
                assert await asyncio.wait_for(queue.get(), 2) == "INBOX"
                assert other.empty()  # not watching INBOX
                await _append(dovecot, certs, users, "Archive")
                assert await asyncio.wait_for(other.get(), 3) == "Archive"
        assert hub.watching() == 0  # the last waiter left: the watcher stopped
    finally:
        hub.close()
        await mail.close()
