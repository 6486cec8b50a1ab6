"""Ping (MS-ASCMD 2.2.1.13): hold the request until a watched folder changes or the heartbeat ends.

A folder has changed for this device when the IMAP counters differ from the
ones its latest sync state recorded, or when that state still owes it items.
A held Ping waits on the push hub (one watcher per user: IDLE on INBOX,
STATUS of the other folders), and also looks by itself every
``[activesync] ping_check_interval`` seconds. A new Ping from the same
device ends the one it replaces.

Thousands of Pings are held at once, so a held one keeps little: ``run``
answers at once or returns a ``Hold``, which the HTTP shell parks outside
aiohttp (gateway/http/park.py) with its connection; the Hold keeps the call,
its push-hub inbox and one timer, no parsed request and no task while it
waits. Its periodic looks fall on a per-user beat, so a user's phones look
together and share one STATUS per folder; a look a push notice or the Ping's
arrival asks for is always fresh.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Protocol

from ..wbxml import Element
from . import EasCall
from ..pimfolders import parse_key
from .foldersync import known_folders
from .pimcollection import pending_count
from ...services.mailsync import FolderState
from ...services.pushhub import Inbox
from ...state import Device
from ...timewheel import wheel

NS = "Ping"
# Ping status (MS-ASCMD 2.2.3.177.11).
EXPIRED, CHANGED, MISSING, SYNTAX, BAD_HEARTBEAT, TOO_MANY, HIERARCHY, SERVER_ERROR = 1, 2, 3, 4, 5, 6, 7, 8
_SAVED = "eas-ping"
_SHARE = 2.0  # seconds a periodic look's STATUS serves the user's other phones looking on the same beat
_held: dict[tuple[str, str], Hold] = {}
_looks: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}


def _answer(status: int, *children: Element) -> Element:
    return Element(NS, "Ping", [Element(NS, "Status", text=str(status)), *children])


async def run(call: EasCall) -> Element | Hold:
    """The answer now, or a Hold that the HTTP shell starts and that answers later."""
    cfg = call.ctx.config.activesync
    asked = await _asked(call)
    if isinstance(asked, Element):
        return asked
    heartbeat, folders = asked
    if heartbeat is None or not folders:
        return _answer(MISSING)
    if not cfg.ping_min_heartbeat <= heartbeat <= cfg.ping_max_heartbeat:
        bound = cfg.ping_min_heartbeat if heartbeat < cfg.ping_min_heartbeat else cfg.ping_max_heartbeat
        return _answer(BAD_HEARTBEAT, Element(NS, "HeartbeatInterval", text=str(bound)))
    if len(folders) > cfg.ping_max_folders:
        return _answer(TOO_MANY, Element(NS, "MaxFolders", text=str(cfg.ping_max_folders)))
    deadline = time.monotonic() + heartbeat
    await call.ctx.state.kv_set(_SAVED, _saved_key(call),
                                json.dumps({"heartbeat": heartbeat, "folders": folders}).encode())
    call.body, call.raw = None, b""  # nothing of the request is needed while the Ping is held

    known = await known_folders(call)
    if known is None or any(f not in known for f in folders):
        return _answer(HIERARCHY)
    del known
    me = (call.user.address, call.device.device_id)
    if (previous := _held.get(me)) is not None:
        previous.finish(_answer(EXPIRED))  # the device has moved on: its older Ping ends now
    names = {name for f in folders if (name := await call.services.folders.name_of(call.user.address, f))}
    backend = call.ctx.directory.route(call.user, "imap") or ""
    push = call.services.push
    # Waiting starts before the first look, so that a change between the two is not missed.
    inbox = await push.join(call.user, backend, call.creds, call.client_ip, names)
    try:
        answer = _verdict(await _changed(call, folders))
    except BaseException:
        push.leave(call.user.address, inbox)
        raise
    if answer is not None:
        push.leave(call.user.address, inbox)
        return answer
    return Hold(call, inbox, folders, deadline)


def _saved_key(call: EasCall) -> str:
    return f"{call.user.address}\x1f{call.device.device_id}"


async def _asked(call: EasCall) -> tuple[int | None, list[str] | None] | Element:
    """(heartbeat, folder ids) from the request, or from the device's previous Ping where it leaves them
    out; or the answer to a malformed request."""
    raw = await call.ctx.state.kv_get(_SAVED, _saved_key(call))
    saved = json.loads(raw) if raw else None
    heartbeat = saved["heartbeat"] if saved else None
    folders = saved["folders"] if saved else None
    body = call.body
    if body is not None:
        if body.ns != NS or body.name != "Ping":
            return _answer(SYNTAX)
        if (text := body.text_of("HeartbeatInterval")) is not None:
            if not text.isdigit():
                return _answer(SYNTAX)
            heartbeat = int(text)
        if (listed := body.find("Folders")) is not None:
            folders = [f.text_of("Id") or "" for f in listed.findall("Folder")]
    return heartbeat, folders


def _verdict(changed: list[str] | None) -> Element | None:
    if changed is None:
        return _answer(HIERARCHY)
    if changed:
        return _answer(CHANGED, Element(NS, "Folders", [Element(NS, "Folder", text=f) for f in changed]))
    return None


class Link(Protocol):
    """Where a Hold's answer goes: a parked connection, or a coroutine still holding the request."""

    def deliver(self, result: Element | Exception) -> None: ...

    def close(self) -> None: ...


class Hold:
    """A Ping waiting for its answer. It is not a coroutine: thousands are held, so it keeps what its looks
    need (no parsed request, no device record), its push-hub inbox and a place on the time wheel, and runs
    a look (a short task) only when the push hub names a watched folder or its time comes. That time is
    the user's beat (every ``ping_check_interval`` seconds at a phase of the user's own, so the user's
    phones look together and share one STATUS while users stay spread out; no beat while the user's
    watcher has NOTIFY on) or the end of the heartbeat, which answers Status 1 after a last look."""

    __slots__ = ("services", "user", "creds", "device_id", "version", "client_ip", "inbox", "folders", "deadline",
                 "link", "due", "periodic", "look", "again", "done", "result")

    def __init__(self, call: EasCall, inbox: Inbox, folders: list[str], deadline: float) -> None:
        self.services, self.user, self.creds = call.services, call.user, call.creds
        self.device_id, self.version, self.client_ip = call.device.device_id, call.version, call.client_ip
        self.inbox, self.folders, self.deadline = inbox, folders, deadline
        self.link: Link | None = None
        self.due: int | None = None  # the time wheel's
        self.periodic = self.again = self.done = False
        self.look: asyncio.Task | None = None
        self.result: Element | Exception | None = None
        _held[(self.user.address, self.device_id)] = self

    def start(self, link: Link) -> None:
        """Begin waiting; the answer goes to ``link``."""
        if self.done:  # answered before it started (a newer Ping of the device came first)
            link.deliver(self.result if self.result is not None else _answer(EXPIRED))
            return
        self.link = link
        self.inbox.on_put = self._heard
        if self.inbox.drain():
            self._look_now()
        else:
            self._arm()

    def finish(self, result: Element | Exception) -> None:
        """Answer now (an Element, or an exception the shell renders as its HTTP error)."""
        if self.done:
            return
        self._release()
        link, self.link = self.link, None
        if link is None:
            self.result = result
        else:
            link.deliver(result)

    def lost(self) -> None:
        """The client has gone: stop waiting, answer nobody."""
        if not self.done:
            self._release()
            self.link = None

    def _release(self) -> None:
        self.done = True
        wheel().cancel(self)
        if self.look is not None and self.look is not asyncio.current_task():
            self.look.cancel()
        self.look = None
        self.services.push.leave(self.user.address, self.inbox)
        me = (self.user.address, self.device_id)
        if _held.get(me) is self:
            del _held[me]

    def _call(self) -> EasCall:
        """What a look needs of the request, made afresh for each look."""
        return EasCall(self.services, None, self.user, self.creds, Device(self.user.address, self.device_id),
                       self.version, None, b"", self.client_ip)

    def _heard(self, item: object) -> None:
        self._look_now()

    def _arm(self) -> None:
        now = time.monotonic()
        if now >= self.deadline:
            self.finish(_answer(EXPIRED))
            return
        if self.services.push.notifying(self.user.address):
            # NOTIFY reports the watched folders' changes as they happen and the push hub polls for the rest:
            # looks of its own would only cost the back end STATUS commands (and keep a session open).
            self.periodic = False
            wheel().at(self, self.deadline)
            return
        every = self.services.ctx.config.activesync.ping_check_interval
        phase = zlib.crc32(self.user.address.encode()) % 1000 / 1000 * every
        beat = now + every - (now - phase) % every
        self.periodic = beat < self.deadline
        wheel().at(self, min(beat, self.deadline))

    def wake(self) -> None:
        """The time wheel's call: the user's beat or the heartbeat's end has come."""
        self._look_now(self.periodic)

    def _look_now(self, periodic: bool = False) -> None:
        """Look now; a look asked for while one runs is made again, fresh, when that one ends."""
        if self.done:
            return
        if self.look is not None:
            self.again = True
            return
        wheel().cancel(self)
        self.look = asyncio.ensure_future(self._look(periodic))

    async def _look(self, periodic: bool) -> None:
        try:
            while True:
                self.again = False
                answer = _verdict(await _changed(self._call(), self.folders, shared=periodic))
                if answer is not None or not self.again:
                    break
                periodic = False
        except Exception as exc:  # noqa: BLE001 - the shell answers it as it answers any command's failure
            self.look = None
            self.finish(exc)
            return
        self.look = None
        if answer is not None:
            self.finish(answer)
        elif not self.done:
            self._arm()


def held_count() -> int:
    return len(_held)


def release_all() -> None:
    """The gateway is stopping: drop every held Ping's connection unanswered (the phone pings again)."""
    for hold in list(_held.values()):
        link = hold.link
        hold.lost()
        if link is not None:
            link.close()


async def _changed(call: EasCall, folders: list[str], shared: bool = False) -> list[str] | None:
    """The watched folders that have something for this device; None when one is gone from the server.
    ``shared``: a STATUS another of the user's phones asked for at most _SHARE seconds ago will do."""
    store = await call.mailbox()
    out = []
    for folder_id in folders:
        name = await call.services.folders.name_of(call.user.address, folder_id)
        if name is None:
            return None
        latest = await call.ctx.state.latest_sync_state(call.user.address, call.device.device_id, folder_id)
        if latest is None:
            continue  # never synced: nothing to compare with (the device syncs it when it wants it)
        if (pim := parse_key(name)) is not None:
            if await pending_count(call, *pim, latest.blob):
                out.append(folder_id)
            continue
        held = FolderState.load(latest.blob)
        status = await (_shared_status(call.user.address, store, name) if shared else store.status(name))
        call.services.push.saw(call.user.address, name, (status.uidvalidity, status.highestmodseq,
                                                         status.uidnext, status.messages))
        marks = (status.highestmodseq, status.uidnext, status.messages)
        if held.pending or marks != tuple(held.marks) or status.uidvalidity != held.uidvalidity:
            out.append(folder_id)
    return out


def _shared_status(user: str, store, name: str) -> asyncio.Future:
    """The folder's STATUS, shared by the looks of the user's phones within _SHARE seconds of each other."""
    key = (user, name)
    now = time.monotonic()
    hit = _looks.get(key)
    if hit is not None and now - hit[0] < _SHARE and not (hit[1].done() and (hit[1].cancelled()
                                                                              or hit[1].exception() is not None)):
        return asyncio.shield(hit[1])
    look = asyncio.ensure_future(store.status(name))
    _looks[key] = (now, look)

    def forget(_: asyncio.Future) -> None:
        asyncio.get_running_loop().call_later(_SHARE, _forget, key, look)
    look.add_done_callback(forget)
    return asyncio.shield(look)


def _forget(key: tuple[str, str], look: asyncio.Future) -> None:
    if _looks.get(key, (0.0, None))[1] is look:
        del _looks[key]
