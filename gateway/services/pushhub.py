"""The push hub: who is waiting for which folder (mail, calendar, contacts...), and one watcher per user
that tells them.

A user's watcher starts with the first waiting request and stops when the last
one leaves. It holds one IMAP connection that reports changes as the server
sees them: with NOTIFY (RFC 5465) where the back end offers it, every change in
INBOX and every new or removed message in any other folder; else IDLE on INBOX.
It looks at the user's other watched folders' counters (STATUS) every
``poll_interval`` seconds (for what NOTIFY does not report there: flag
changes), and at the same pace at the ctags of the calendars and address
books watched (one PROPFIND per DAV back end). What a watcher or
a front end sees goes out on the bus (Redis with several nodes), so a waiter
on any node hears a change seen on any other. A waiter gets the
names of the folders that may have changed; it decides itself whether they
changed for it (a phone compares with its sync state). Waiting is a coroutine
on a queue: nothing per waiter but the queue.

Dovecot reports a change to an IDLE client half a second late (its mailbox
watcher batches changes for 500 ms); when it is set up to POST its push
notifications to the gateway (``services/dovecot_push.py``), those arrive on
the bus within milliseconds, on the channel of the user's address or of their
back-end login, and IDLE is only the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from adapters.errors import BackendError
from adapters.imap.idle import watch, watch_all
from adapters.interfaces import Credentials, UserRecord

from ..state.bus import Bus, LocalBus
from .backends import Backends
from .mailsessions import MailSessions
from .pimsync import role_of, split_key

log = logging.getLogger("casgate.push")


class Inbox:
    """What one waiter is told, in order: a queue with nothing in it until it is used (an asyncio.Queue
    costs about 2 KB, and thousands of these are held at once). A waiter that is not a coroutine (a parked
    Ping) sets ``on_put`` instead and is called with each item."""

    __slots__ = ("folders", "_items", "_wake", "on_put")

    def __init__(self, folders: tuple[str, ...]) -> None:
        self.folders = folders
        self._items: list | None = None
        self._wake: asyncio.Future | None = None
        self.on_put: Callable[[object], None] | None = None

    def put_nowait(self, item: object) -> None:
        if self.on_put is not None:
            self.on_put(item)
            return
        if self._items is None:
            self._items = []
        self._items.append(item)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def get(self) -> object:
        while not self._items:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def drain(self) -> list:
        """What was put before anyone took it."""
        items, self._items = self._items or [], None
        return items


class _Watcher:
    def __init__(self, hub: PushHub, user: UserRecord, backend: str, creds: Credentials, client_ip: str) -> None:
        self.hub, self.user, self.backend, self.creds, self.client_ip = hub, user, backend, creds, client_ip
        self.waiters: set[Inbox] = set()
        self.last: dict[str, tuple] = {}
        self.unsubscribe: list = []
        self.notifying = False  # NOTIFY reports new and removed messages in every folder at once
        self.tasks = [asyncio.ensure_future(self._poll())]
        if hub.idle:
            self.tasks.append(asyncio.ensure_future(self._idle()))

    def notify(self, folder: str) -> None:
        for waiter in self.waiters:
            if folder in waiter.folders:
                waiter.put_nowait(folder)

    def seen(self, folder: str) -> None:
        """A change this node saw: tell every node (this one through the bus as well)."""
        task = asyncio.ensure_future(self.hub.bus.publish(channel(self.user.address), folder))
        self.hub.publishing.add(task)
        task.add_done_callback(self.hub.publishing.discard)

    async def _idle(self) -> None:
        """NOTIFY for every folder where the back end offers it, else IDLE on INBOX."""
        endpoint = self.hub.backends.imap_endpoint(self.backend)
        if self.hub.notify and await watch_all(endpoint, self.creds, self._reported, self._notify_ready,
                                               self.client_ip):
            return
        await watch(endpoint, self.creds, "INBOX", lambda: self.seen("INBOX"), self.client_ip)

    def _reported(self, folder: str) -> None:
        if any(folder in w.folders for w in self.waiters):
            self.seen(folder)

    def _notify_ready(self, ready: bool) -> None:
        was, self.notifying = self.notifying, ready
        if was and not ready:
            # The waiters that relied on NOTIFY go back to looking for themselves (a held Ping re-arms its
            # own periodic looks after this one).
            for waiter in list(self.waiters):
                waiter.put_nowait("")
        if ready:
            # Whatever changed before the server took the NOTIFY (or while a lost connection was made
            # again) is found by one look at the counters the waiters' own looks left.
            folders = {f for w in self.waiters for f in w.folders if split_key(f) is None}
            task = asyncio.ensure_future(self._look_mail(folders))
            self.hub.publishing.add(task)
            task.add_done_callback(self.hub.publishing.discard)

    async def _poll(self) -> None:
        # Calendars and address books are looked at once, for the ctags later looks compare with; a mail
        # folder's first counters come from the waiter's own first look (PushHub.saw), or else from the
        # first poll.
        first = True
        while True:
            if not first:
                await asyncio.sleep(self.hub.poll_interval)
            folders = {f for w in self.waiters for f in w.folders if f.upper() != "INBOX" or not self.hub.idle}
            dav = {f for f in folders if split_key(f) is not None}
            if not first:
                await self._look_mail(folders - dav)
            if dav:
                await self._look_dav(dav)
            first = False

    async def _look_mail(self, folders: set[str]) -> None:
        if not folders:
            return
        try:
            store = await self.hub.mail.store(self.user, self.backend, self.creds, self.client_ip)
            for folder in folders:
                status = await store.status(folder)
                now = (status.uidvalidity, status.highestmodseq, status.uidnext, status.messages)
                if self.last.get(folder, now) != now:
                    self.seen(folder)
                self.last[folder] = now
        except BackendError as exc:
            log.info("push poll failed", extra={"event": "push", "user": self.user.address,
                                                "error": str(exc)[:200]})

    async def _look_dav(self, keys: set[str]) -> None:
        """Calendars and address books: one PROPFIND per back end gives every collection's ctag (or
        sync-token); a collection whose tag moved wakes the waiters of every class shown from it."""
        by_role: dict[str, set[str]] = {}
        for key in keys:
            klass, _ = split_key(key) or ("", "")
            by_role.setdefault(role_of(klass), set()).add(key)
        for role, wanted in by_role.items():
            backend = self.user.backends.get(role)
            if not backend:
                continue
            try:
                if role == "carddav":
                    store = await self.hub.mail.contacts(self.user, backend, self.creds)
                    collections = await store.list_address_books()
                else:
                    store = await self.hub.mail.calendars(self.user, backend, self.creds)
                    collections = await store.list_calendars()
            except BackendError as exc:
                log.info("push poll failed", extra={"event": "push", "user": self.user.address, "role": role,
                                                    "error": str(exc)[:200]})
                continue
            tags = {c.url: c.ctag for c in collections}
            for key in wanted:
                url = (split_key(key) or ("", ""))[1]
                now = ("dav", tags.get(url, "gone"))
                if self.last.get(key, now) != now:
                    self.seen(key)
                self.last[key] = now

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for unsubscribe in self.unsubscribe:
            task = asyncio.ensure_future(unsubscribe())
            self.hub.publishing.add(task)
            task.add_done_callback(self.hub.publishing.discard)


def channel(user: str) -> str:
    return "casgate:mail:" + user.lower()


def channels(user: UserRecord) -> list[str]:
    """Where news of the user's mail arrives: their address, and their login when the back end knows them by
    another name (Dovecot's notifications name the login)."""
    return sorted({channel(user.address), channel(user.login or user.address)})


class PushHub:
    def __init__(self, backends: Backends, mail: MailSessions, bus: Bus | None = None,
                 poll_interval: float = 30.0, idle: bool = True, notify: bool = True) -> None:
        """``idle`` False spares each waiting user's IDLE connection, for back ends whose push notifications
        reach the bus (Dovecot's); the INBOX is then polled like the other folders. ``notify``: that connection
        asks for NOTIFY events where the back end offers it (every change in INBOX, new and removed messages
        elsewhere; the other folders are still polled, for their flags), and IDLEs on INBOX where it does not."""
        self.backends = backends
        self.mail = mail
        self.bus: Bus = bus if bus is not None else LocalBus()
        self.poll_interval = poll_interval
        self.idle = idle
        self.notify = notify
        self._watchers: dict[str, _Watcher] = {}
        self.publishing: set[asyncio.Task] = set()

    async def changed(self, user: str, folder: str) -> None:
        """A front end changed a folder itself (a phone's Sync, a move): wake that user's waiters on all nodes."""
        await self.bus.publish(channel(user), folder)

    @contextlib.asynccontextmanager
    async def waiting(self, user: UserRecord, backend: str, creds: Credentials, client_ip: str,
                      folders: set[str]) -> AsyncIterator[Inbox]:
        """A queue that receives the name of each of ``folders`` the user's watcher sees change."""
        waiter = await self.join(user, backend, creds, client_ip, folders)
        try:
            yield waiter
        finally:
            self.leave(user.address, waiter)

    async def join(self, user: UserRecord, backend: str, creds: Credentials, client_ip: str,
                   folders: set[str]) -> Inbox:
        """Start waiting for ``folders`` (the user's watcher starts with its first waiter); ``leave`` ends it."""
        watcher = self._watchers.get(user.address)
        if watcher is None or watcher.creds != creds:
            old = watcher
            watcher = self._watchers[user.address] = _Watcher(self, user, backend, creds, client_ip)
            if old is not None:
                old.stop()
                watcher.waiters |= old.waiters  # they go on hearing through the new credentials' watcher
            for name in channels(user):
                watcher.unsubscribe.append(await self.bus.subscribe(name, watcher.notify))
        waiter = Inbox(tuple(sorted(folders)))  # a tuple: 150 bytes less than a frozenset, and as quick for a few
        watcher.waiters.add(waiter)
        return waiter

    def leave(self, address: str, waiter: Inbox) -> None:
        """``waiter`` waits no more; the watcher stops with its last waiter."""
        waiter.on_put = None
        watcher = self._watchers.get(address)
        if watcher is None or waiter not in watcher.waiters:
            return
        watcher.waiters.discard(waiter)
        if not watcher.waiters:
            del self._watchers[address]
            watcher.stop()

    def saw(self, address: str, folder: str, marks: tuple) -> None:
        """A waiter's own look found ``folder`` at ``marks`` (uidvalidity, highestmodseq, uidnext, messages):
        where the watcher's comparisons start if it has not looked yet, so that a change landing between that
        look and the watcher's first is not taken for the starting point."""
        watcher = self._watchers.get(address)
        if watcher is not None:
            watcher.last.setdefault(folder, marks)

    def notifying(self, address: str) -> bool:
        """Whether the user's watcher has NOTIFY on: every change in INBOX and every new or removed message
        elsewhere reaches the waiters at once, and the poll covers the rest."""
        watcher = self._watchers.get(address)
        return watcher is not None and watcher.notifying

    def watching(self) -> int:
        return len(self._watchers)

    def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.stop()
        self._watchers.clear()
