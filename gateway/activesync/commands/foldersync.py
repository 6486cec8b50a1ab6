"""FolderSync (MS-ASCMD 2.2.1.5): the folder hierarchy, and what changed in it since the device's sync key.

The state under each hierarchy key is the list the device was sent
(ServerId -> parent, name, type). Keys follow each other deterministically,
so a request repeated with an older key (its answer was lost) is answered
again under the same new key: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import logging

from adapters.errors import BackendError

from ..folders import first_key, folder_types, next_key, parent_of, valid_key
from ..pimfolders import CLASSES, PimFolder, folders_of, parse_key
from .pimcollection import store_for
from ..wbxml import Element
from . import EasCall, EasError

log = logging.getLogger("casgate.activesync")
NS = "FolderHierarchy"
HIERARCHY = "hierarchy"  # collection id of the hierarchy's sync state
KEEP_STATES = 4
# FolderSync status codes (MS-ASCMD 2.2.3.177.4).
OK, SERVER_ERROR, INVALID_KEY, BAD_REQUEST = 1, 6, 9, 10


async def current(call: EasCall, before: dict[str, list] | None = None) -> dict[str, list]:
    """ServerId -> [parent ServerId ("0" at the top), display name, type] for the user's folders now:
    the mail folders, then the calendars, address books, task lists and notes of the DAV back ends. A DAV
    back end that does not answer keeps the folders the device was last sent (``before``), so a passing
    outage never makes a phone drop its calendar."""
    store = await call.mailbox()
    folders = await store.list_folders()
    pim, kept = await _pim_folders(call)
    names = [f.name for f in folders] + [p.key for p in pim]
    old_ids = {}
    if kept:  # the folders of a silent back end keep their ids
        old_ids = {n: i for n, i in (await call.services.folders.all(call.user.address)).items()
                   if (p := parse_key(n)) is not None and p[0].role in kept}
    ids = await call.services.folders.assign(call.user.address, names + list(old_ids))
    types = folder_types(folders)
    mail_names = {f.name for f in folders}
    out: dict[str, list] = {}
    for f in folders:
        parent = parent_of(f, mail_names)
        display = f.name.rsplit(f.delimiter, 1)[-1] if parent else f.name
        if types[f.name] == 2:
            display = "Inbox"
        out[ids[f.name]] = [ids[parent] if parent else "0", display, types[f.name]]
    for p in pim:
        out[ids[p.key]] = ["0", p.klass.name if p.default else p.name, p.type]
    for sid in old_ids.values():
        if before and sid in before:
            out[sid] = before[sid]
    return out


async def _pim_folders(call: EasCall) -> tuple[list[PimFolder], list[str]]:
    """(the DAV folders now, the classes ("caldav", "carddav") whose back end did not answer)."""
    found: list[PimFolder] = []
    failed: list[str] = []
    for role in ("caldav", "carddav"):
        if not call.ctx.directory.route(call.user, role):
            continue
        classes = [c for c in CLASSES.values() if c.role == role and call.version_tuple >= c.since]
        try:
            store = await store_for(call, classes[0])
            collections = await (store.list_address_books() if role == "carddav" else store.list_calendars())
        except BackendError as exc:
            log.info("DAV folders unavailable", extra={"event": "eas-folders", "user": call.user.address,
                                                        "role": role, "error": str(exc)[:200]})
            failed.append(role)
            continue
        for klass in classes:
            found += folders_of(klass, collections)
    return found, failed


def _entry(kind: str, server_id: str, info: list) -> Element:
    children = [Element(NS, "ServerId", text=server_id)]
    if kind != "Delete":
        children += [Element(NS, "ParentId", text=info[0]), Element(NS, "DisplayName", text=info[1]),
                     Element(NS, "Type", text=str(info[2]))]
    return Element(NS, kind, children)


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "FolderSync":
        raise EasError(BAD_REQUEST, "expected a FolderSync request")
    key = body.text_of("SyncKey")
    if key is None:
        raise EasError(BAD_REQUEST, "FolderSync without SyncKey")
    state = call.ctx.state
    user, device = call.user.address, call.device.device_id
    if key == "0":
        before: dict[str, list] = {}
        new_key = first_key()
        # A hierarchy resync starts the partnership afresh: the item states built on the old hierarchy go.
        await state.delete_sync_state(user, device)
    else:
        blob = await state.get_sync_state(user, device, HIERARCHY, key) if valid_key(key) else None
        if blob is None:
            raise EasError(INVALID_KEY, "unknown hierarchy sync key")
        before = json.loads(blob)
        new_key = next_key(key)
    now = await current(call, before)
    adds = [_entry("Add", sid, info) for sid, info in now.items() if sid not in before]
    updates = [_entry("Update", sid, info) for sid, info in now.items() if sid in before and before[sid] != info]
    deletes = [_entry("Delete", sid, info) for sid, info in before.items() if sid not in now]
    changes = deletes + adds + updates
    if changes or key == "0":
        await state.put_sync_state(user, device, HIERARCHY, new_key, json.dumps(now).encode(), keep=KEEP_STATES)
    else:
        new_key = key  # nothing changed: the device keeps its key and no state is written
    return Element(NS, "FolderSync", [
        Element(NS, "Status", text=str(OK)),
        Element(NS, "SyncKey", text=new_key),
        Element(NS, "Changes", [Element(NS, "Count", text=str(len(changes))), *changes]),
    ])


async def known_folders(call: EasCall) -> dict[str, list] | None:
    """The hierarchy this device was last sent, or None before its first FolderSync."""
    latest = await call.ctx.state.latest_sync_state(call.user.address, call.device.device_id, HIERARCHY)
    return json.loads(latest.blob) if latest is not None else None
