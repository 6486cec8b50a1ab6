"""FolderCreate, FolderUpdate and FolderDelete (MS-ASCMD 2.2.1.3, 2.2.1.6, 2.2.1.4): mail folders made,
renamed or moved, and removed from the device (calendar, contact, task and note folders: pimfoldercommands).

Each carries the device's hierarchy sync key and answers with the next one.
The state under the new key is the old state with just this change, so any
other change made on the server meanwhile still reaches the device at its
next FolderSync.
"""

from __future__ import annotations

import json
import logging

from adapters.errors import BackendError, Conflict, NotFound, PermissionDenied

from ..folders import GENERIC, USER_MAIL, next_key, valid_key
from ..wbxml import Element
from ..pimfolders import BY_TYPE, is_pim
from . import EasCall, EasError, pimfoldercommands
from .foldersync import HIERARCHY, KEEP_STATES, NS

log = logging.getLogger("casgate.activesync")
# Status codes shared by the three commands (MS-ASCMD 2.2.3.177.2-4).
OK, EXISTS, SPECIAL, NOT_FOUND, PARENT_NOT_FOUND, SERVER_ERROR, BAD_KEY, MALFORMED = 1, 2, 3, 4, 5, 6, 9, 10
_MAIL_TYPES = (GENERIC, USER_MAIL)


async def _begin(call: EasCall, command: str) -> tuple[Element, str, dict[str, list]]:
    body = call.body
    if body is None or body.ns != NS or body.name != command:
        raise EasError(MALFORMED, f"expected a {command} request")
    key = body.text_of("SyncKey") or ""
    blob = await call.ctx.state.get_sync_state(call.user.address, call.device.device_id, HIERARCHY, key) \
        if valid_key(key) else None
    if blob is None:
        raise EasError(BAD_KEY, "unknown hierarchy sync key")
    return body, key, json.loads(blob)


async def _commit(call: EasCall, key: str, known: dict[str, list]) -> str:
    new_key = next_key(key)
    await call.ctx.state.put_sync_state(call.user.address, call.device.device_id, HIERARCHY, new_key,
                                        json.dumps(known).encode(), keep=KEEP_STATES)
    return new_key


def _delimiter(folders) -> str:
    """The IMAP server's hierarchy delimiter, as its folder list shows it."""
    return next((f.delimiter for f in folders if f.delimiter), "/")


def _status(command: str, status: int) -> Element:
    return Element(NS, command, [Element(NS, "Status", text=str(status))])


async def _imap_name(call: EasCall, parent_id: str, display: str, delimiter: str) -> str | None:
    if parent_id == "0":
        return display
    parent = await call.services.folders.name_of(call.user.address, parent_id)
    return None if parent is None else parent + delimiter + display


def _bad_name(display: str) -> bool:
    return not display or len(display) > 256 or any(c in display for c in "\r\n\0/*%") or display != display.strip()


async def create(call: EasCall) -> Element:
    body, key, known = await _begin(call, "FolderCreate")
    display, parent_id = body.text_of("DisplayName") or "", body.text_of("ParentId") or "0"
    kind = body.text_of("Type") or ""
    if _bad_name(display) or not kind.isdigit():
        return _status("FolderCreate", MALFORMED)
    if int(kind) in BY_TYPE:  # a calendar, contact, task or note folder: a collection on the DAV server
        refused, server_id, entry = await pimfoldercommands.create(call, int(kind), display, parent_id)
        if refused is not None:
            return refused
        known[server_id] = entry
        return _created(server_id, await _commit(call, key, known))
    if int(kind) not in _MAIL_TYPES:
        return _status("FolderCreate", SERVER_ERROR)
    store = await call.mailbox()
    delimiter = _delimiter(await store.list_folders())
    name = await _imap_name(call, parent_id, display, delimiter)
    if name is None:
        return _status("FolderCreate", PARENT_NOT_FOUND)
    try:
        await store.create_folder(name)
    except Conflict:
        return _status("FolderCreate", EXISTS)
    except (PermissionDenied, BackendError) as exc:
        if "exist" in str(exc).lower():
            return _status("FolderCreate", EXISTS)
        raise
    folders = await store.list_folders()
    ids = await call.services.folders.assign(call.user.address, [f.name for f in folders], mail_only=True)
    server_id = ids[name]
    known[server_id] = [parent_id, display, USER_MAIL]
    return _created(server_id, await _commit(call, key, known))


def _created(server_id: str, new_key: str) -> Element:
    return Element(NS, "FolderCreate", [Element(NS, "Status", text=str(OK)), Element(NS, "SyncKey", text=new_key),
                                        Element(NS, "ServerId", text=server_id)])


async def update(call: EasCall) -> Element:
    body, key, known = await _begin(call, "FolderUpdate")
    server_id, parent_id = body.text_of("ServerId") or "", body.text_of("ParentId") or "0"
    display = body.text_of("DisplayName") or ""
    if _bad_name(display):
        return _status("FolderUpdate", MALFORMED)
    entry = known.get(server_id)
    folders = call.services.folders
    old = await folders.name_of(call.user.address, server_id)
    if entry is None or old is None:
        return _status("FolderUpdate", NOT_FOUND)
    if is_pim(old):
        status = await pimfoldercommands.update(call, old, display, parent_id)
        if status != OK:
            return _status("FolderUpdate", status)
        known[server_id] = [parent_id, display, entry[2]]
        return _updated("FolderUpdate", await _commit(call, key, known))
    if entry[2] not in _MAIL_TYPES:
        return _status("FolderUpdate", SPECIAL)
    store = await call.mailbox()
    delimiter = _delimiter(await store.list_folders())
    new = await _imap_name(call, parent_id, display, delimiter)
    if new is None:
        return _status("FolderUpdate", PARENT_NOT_FOUND)
    if new != old:
        try:
            await store.rename_folder(old, new)
        except NotFound:
            return _status("FolderUpdate", NOT_FOUND)
        except Conflict:
            return _status("FolderUpdate", EXISTS)
        await folders.rename(call.user.address, old, new, delimiter)
    known[server_id] = [parent_id, display, entry[2]]
    return _updated("FolderUpdate", await _commit(call, key, known))


def _updated(command: str, new_key: str) -> Element:
    return Element(NS, command, [Element(NS, "Status", text=str(OK)), Element(NS, "SyncKey", text=new_key)])


async def delete(call: EasCall) -> Element:
    body, key, known = await _begin(call, "FolderDelete")
    server_id = body.text_of("ServerId") or ""
    entry = known.get(server_id)
    name = await call.services.folders.name_of(call.user.address, server_id)
    if entry is None or name is None:
        return _status("FolderDelete", NOT_FOUND)
    if is_pim(name):
        status = await pimfoldercommands.delete(call, name)
        if status != OK:
            return _status("FolderDelete", status)
        known.pop(server_id, None)
        await call.ctx.state.delete_sync_state(call.user.address, call.device.device_id, server_id)
        return _updated("FolderDelete", await _commit(call, key, known))
    if entry[2] not in _MAIL_TYPES:
        return _status("FolderDelete", SPECIAL)
    store = await call.mailbox()
    folders = await store.list_folders()
    delimiter = _delimiter(folders)
    # A folder goes with its subfolders, deepest first (IMAP refuses to delete a folder that has children).
    doomed = sorted((f.name for f in folders if f.name.startswith(name + delimiter)), key=len, reverse=True)
    ids = await call.services.folders.assign(call.user.address, [f.name for f in folders], mail_only=True)
    for victim in [*doomed, name]:
        try:
            await store.delete_folder(victim)
        except NotFound:
            pass  # already gone: the device's wish is met
        victim_id = ids.get(victim)
        if victim_id is not None:
            known.pop(victim_id, None)
            await call.ctx.state.delete_sync_state(call.user.address, call.device.device_id, victim_id)
    return _updated("FolderDelete", await _commit(call, key, known))
