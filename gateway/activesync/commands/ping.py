"""Ping (MS-ASCMD 2.2.1.13): hold the request until a watched folder changes or the heartbeat ends.

A folder has changed for this device when the IMAP counters differ from the
ones its latest sync state recorded, or when that state still owes it items.
A held Ping waits on the push hub (one watcher per user: IDLE on INBOX,
STATUS of the other folders), and also looks by itself every
``[activesync] ping_check_interval`` seconds. A new Ping from the same
device ends the one it replaces.
"""

from __future__ import annotations

import asyncio
import json
import time

from ..wbxml import Element
from . import EasCall
from ..pimfolders import parse_key
from .foldersync import known_folders
from .pimcollection import pending_count
from ...services.mailsync import FolderState

NS = "Ping"
# Ping status (MS-ASCMD 2.2.3.177.11).
EXPIRED, CHANGED, MISSING, SYNTAX, BAD_HEARTBEAT, TOO_MANY, HIERARCHY, SERVER_ERROR = 1, 2, 3, 4, 5, 6, 7, 8
_SAVED = "eas-ping"
_held: dict[tuple[str, str], asyncio.Queue] = {}


def _answer(status: int, *children: Element) -> Element:
    return Element(NS, "Ping", [Element(NS, "Status", text=str(status)), *children])


async def run(call: EasCall) -> Element:
    cfg = call.ctx.config.activesync
    state = call.ctx.state
    saved_key = f"{call.user.address}\x1f{call.device.device_id}"
    body = call.body
    saved = json.loads(raw) if (raw := await state.kv_get(_SAVED, saved_key)) else None
    heartbeat = saved["heartbeat"] if saved else None
    folders = saved["folders"] if saved else None
    if body is not None:
        if body.ns != NS or body.name != "Ping":
            return _answer(SYNTAX)
        if (text := body.text_of("HeartbeatInterval")) is not None:
            if not text.isdigit():
                return _answer(SYNTAX)
            heartbeat = int(text)
        if (listed := body.find("Folders")) is not None:
            folders = [f.text_of("Id") or "" for f in listed.findall("Folder")]
    if heartbeat is None or not folders:
        return _answer(MISSING)
    if not cfg.ping_min_heartbeat <= heartbeat <= cfg.ping_max_heartbeat:
        bound = cfg.ping_min_heartbeat if heartbeat < cfg.ping_min_heartbeat else cfg.ping_max_heartbeat
        return _answer(BAD_HEARTBEAT, Element(NS, "HeartbeatInterval", text=str(bound)))
    if len(folders) > cfg.ping_max_folders:
        return _answer(TOO_MANY, Element(NS, "MaxFolders", text=str(cfg.ping_max_folders)))
    await state.kv_set(_SAVED, saved_key, json.dumps({"heartbeat": heartbeat, "folders": folders}).encode())

    known = await known_folders(call)
    if known is None or any(f not in known for f in folders):
        return _answer(HIERARCHY)
    me = (call.user.address, call.device.device_id)
    if (previous := _held.get(me)) is not None:
        previous.put_nowait(None)  # the device has moved on: its older Ping ends now
    names = {name for f in folders if (name := await call.services.folders.name_of(call.user.address, f))}
    backend = call.ctx.directory.route(call.user, "imap") or ""
    async with call.services.push.waiting(call.user, backend, call.creds, call.client_ip, names) as queue:
        _held[me] = queue
        try:
            deadline = time.monotonic() + heartbeat
            while True:
                changed = await _changed(call, folders, known)
                if changed is None:
                    return _answer(HIERARCHY)
                if changed:
                    return _answer(CHANGED, Element(NS, "Folders", [Element(NS, "Folder", text=f) for f in changed]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _answer(EXPIRED)
                try:
                    # The push hub names a folder the moment its watcher sees it change; the periodic look
                    # is the safety net for changes a watcher cannot see (another folder's flags, say).
                    if await asyncio.wait_for(queue.get(), min(remaining, cfg.ping_check_interval)) is None:
                        return _answer(EXPIRED)
                except asyncio.TimeoutError:
                    continue
        finally:
            if _held.get(me) is queue:
                del _held[me]


async def _changed(call: EasCall, folders: list[str], known: dict[str, list]) -> list[str] | None:
    """The watched folders that have something for this device; None when one is gone from the server."""
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
        status = await store.status(name)
        marks = (status.highestmodseq, status.uidnext, status.messages)
        if held.pending or marks != tuple(held.marks) or status.uidvalidity != held.uidvalidity:
            out.append(folder_id)
    return out

