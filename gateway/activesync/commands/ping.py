"""Ping (MS-ASCMD 2.2.1.13): hold the request until a watched folder changes or the heartbeat ends.

A folder has changed for this device when the IMAP counters differ from the
ones its latest sync state recorded, or when that state still owes it items.
A held Ping waits on the push hub (one watcher per user: IDLE on INBOX,
STATUS of the other folders), and also looks by itself every
``[activesync] ping_check_interval`` seconds. A new Ping from the same
device ends the one it replaces.

Thousands of Pings are held at once, so a held one keeps little: no parsed
request, no task of its own while it waits. Its periodic looks fall on a
per-user beat, so a user's phones look together and share one STATUS per
folder; a look a push notice or the Ping's arrival asks for is always fresh.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib

from ..wbxml import Element
from . import EasCall
from ..pimfolders import parse_key
from .foldersync import known_folders
from .pimcollection import pending_count
from ...services.mailsync import FolderState
from ...services.pushhub import Inbox

NS = "Ping"
# Ping status (MS-ASCMD 2.2.3.177.11).
EXPIRED, CHANGED, MISSING, SYNTAX, BAD_HEARTBEAT, TOO_MANY, HIERARCHY, SERVER_ERROR = 1, 2, 3, 4, 5, 6, 7, 8
_SAVED = "eas-ping"
_SHARE = 2.0  # seconds a periodic look's STATUS serves the user's other phones looking on the same beat
_held: dict[tuple[str, str], Inbox] = {}
_looks: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}


def _answer(status: int, *children: Element) -> Element:
    return Element(NS, "Ping", [Element(NS, "Status", text=str(status)), *children])


async def run(call: EasCall) -> Element:
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
    await call.ctx.state.kv_set(_SAVED, _saved_key(call),
                                json.dumps({"heartbeat": heartbeat, "folders": folders}).encode())
    call.body, call.raw = None, b""  # nothing of the request is needed while the Ping is held

    known = await known_folders(call)
    if known is None or any(f not in known for f in folders):
        return _answer(HIERARCHY)
    del known
    me = (call.user.address, call.device.device_id)
    if (previous := _held.get(me)) is not None:
        previous.put_nowait(None)  # the device has moved on: its older Ping ends now
    names = {name for f in folders if (name := await call.services.folders.name_of(call.user.address, f))}
    backend = call.ctx.directory.route(call.user, "imap") or ""
    async with call.services.push.waiting(call.user, backend, call.creds, call.client_ip, names) as queue:
        _held[me] = queue
        try:
            return await _hold(call, queue, folders, heartbeat, cfg.ping_check_interval)
        finally:
            if _held.get(me) is queue:
                del _held[me]


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


async def _hold(call: EasCall, queue: Inbox, folders: list[str], heartbeat: int, every: float) -> Element:
    deadline = time.monotonic() + heartbeat
    # The user's beat: every `every` seconds at a phase of its own, so that the user's phones look together
    # while users stay spread out.
    phase = zlib.crc32(call.user.address.encode()) % 1000 / 1000 * every
    periodic = False
    while True:
        changed = await _changed(call, folders, shared=periodic)
        if changed is None:
            return _answer(HIERARCHY)
        if changed:
            return _answer(CHANGED, Element(NS, "Folders", [Element(NS, "Folder", text=f) for f in changed]))
        now = time.monotonic()
        if now >= deadline:
            return _answer(EXPIRED)
        beat = now + every - (now - phase) % every
        periodic = beat < deadline
        try:
            # The push hub names a folder the moment its watcher sees it change; the periodic look is the
            # safety net for changes a watcher cannot see (another folder's flags, say). asyncio.timeout
            # rather than wait_for: no task per held Ping.
            async with asyncio.timeout(min(beat, deadline) - now):
                if await queue.get() is None:
                    return _answer(EXPIRED)
            periodic = False
        except TimeoutError:
            continue


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
