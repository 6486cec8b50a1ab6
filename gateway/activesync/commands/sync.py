"""Sync (MS-ASCMD 2.2.1.21) for the Email class: items of IMAP folders, both ways, in windows.

The state stored under each of a folder's sync keys says what the device has
(UID -> read/flagged bits) and which messages it still has to be sent. A
request is answered by diffing the folder against the state under the key it
carries, applying the device's own changes, and storing the result under the
next key *before* the answer leaves. Keys follow each other deterministically,
so a request repeated with the previous key (its answer was lost) is answered
again from the same state under the same new key: nothing is lost and nothing
is sent twice. The device's changes are idempotent at the IMAP store (set a
flag, move a message that may already have moved).
"""

from __future__ import annotations

import asyncio
import logging
import time

from adapters.errors import NotFound

from ...services.mailsync import (FLAGGED, READ, FolderState, categories, category_keyword, diff, flag_bits, look,
                                  marks, rebase, start)
from ..email_item import BodyOptions, ItemError, parse_options
from ..flagnotes import FlagNotes, plain_flag
from ..folders import DELETED, first_key, folder_types, next_key, valid_key
from ..items import application_data, fetch_one, server_id, uid_of
from ..pimfolders import PimFolder, parse_key
from ..wbxml import Element
from . import EasCall, EasError, pimcollection
from .syncanswer import collection_answer, collection_status

log = logging.getLogger("casgate.activesync")
NS = "AirSync"
KEEP_STATES = 3
DEFAULT_WINDOW = 100
# Sync status codes (MS-ASCMD 2.2.3.177.17).
OK, PROTOCOL_ERROR, INVALID_KEY, SERVER_ERROR, CONVERSION_ERROR, CONFLICT, NOT_FOUND = 1, 4, 3, 5, 6, 7, 8
FOLDER_HIERARCHY_CHANGED, BAD_REQUEST_EMPTY, INVALID_HEARTBEAT = 12, 13, 14
# FilterType -> days back (MS-ASCMD 2.2.3.70.1); 0 and 8 (incomplete tasks) mean no limit for mail.
FILTER_DAYS = {0: None, 1: 1, 2: 3, 3: 7, 4: 14, 5: 30}


def _int(element: Element | None, name: str, default: int, low: int, high: int) -> int:
    text = element.text_of(name) if element is not None else None
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise EasError(PROTOCOL_ERROR, f"{name} must be a number from {low} to {high}")
    return int(text)


async def run(call: EasCall) -> Element | None:
    body = call.body
    if body is None:
        # 14.0+: an empty Sync repeats the previous one; we keep no copy of it, so ask for the whole request.
        raise EasError(BAD_REQUEST_EMPTY, "empty Sync request")
    if body.ns != NS or body.name != "Sync":
        raise EasError(PROTOCOL_ERROR, "expected a Sync request")
    collections = body.find("Collections")
    if collections is None or not collections.findall("Collection"):
        raise EasError(BAD_REQUEST_EMPTY, "Sync without collections")
    default_window = _int(body, "WindowSize", DEFAULT_WINDOW, 1, 512)
    hold = _hold_seconds(call, body)
    if isinstance(hold, Element):
        return hold
    deadline = time.monotonic() + (hold or 0)
    while True:
        out = []
        changed_anything = False
        for collection in collections.findall("Collection"):
            element, changed = await _collection(call, collection, default_window)
            out.append(element)
            changed_anything |= changed
        remaining = deadline - time.monotonic()
        if changed_anything or not hold or remaining <= 0:
            break
        # A hanging Sync (Wait / HeartbeatInterval): nothing to say yet, so wait on the push hub like a Ping,
        # then look again.
        await _wait_for_change(call, collections, remaining)
    if not changed_anything and call.version_tuple >= (14, 0):
        return None  # 14.0+: an empty response says that no collection has changed
    return Element(NS, "Sync", [Element(NS, "Collections", out)])


def _hold_seconds(call: EasCall, body: Element) -> float | Element | None:
    """How long a Sync may wait for changes (Wait in minutes, or HeartbeatInterval in seconds), None for not
    at all; out of bounds, the Status 14 answer with the Limit (MS-ASCMD 2.2.3.90)."""
    cfg = call.ctx.config.activesync
    wait, heartbeat = body.text_of("Wait"), body.text_of("HeartbeatInterval")
    if wait is None and heartbeat is None:
        return None
    if wait is not None and heartbeat is not None:
        raise EasError(PROTOCOL_ERROR, "Wait and HeartbeatInterval together")
    seconds = int(wait) * 60 if wait is not None and wait.isdigit() else \
        int(heartbeat) if heartbeat is not None and heartbeat.isdigit() else -1
    if seconds < 0:
        raise EasError(PROTOCOL_ERROR, "Wait or HeartbeatInterval is not a number")
    low, high = cfg.ping_min_heartbeat, cfg.ping_max_heartbeat
    if not low <= seconds <= high:
        bound = low if seconds < low else high
        limit = str(bound // 60 if wait is not None else bound)
        return Element(NS, "Sync", [Element(NS, "Status", text=str(INVALID_HEARTBEAT)),
                                    Element(NS, "Limit", text=limit)])
    return float(seconds)


async def _wait_for_change(call: EasCall, collections: Element, seconds: float) -> None:
    names = set()
    for collection in collections.findall("Collection"):
        if (name := await call.services.folders.name_of(call.user.address, collection.text_of("CollectionId") or "")):
            names.add(name)
    backend = call.ctx.directory.route(call.user, "imap") or ""
    async with call.services.push.waiting(call.user, backend, call.creds, call.client_ip, names) as queue:
        try:
            await asyncio.wait_for(queue.get(), min(seconds, call.ctx.config.activesync.ping_check_interval))
        except asyncio.TimeoutError:
            pass


async def _collection(call: EasCall, collection: Element, default_window: int) -> tuple[Element, bool]:
    """(the response's Collection, whether it says anything beyond "unchanged")."""
    collection_id = collection.text_of("CollectionId") or ""
    key = collection.text_of("SyncKey")
    klass = collection.text_of("Class")
    if key is None or not collection_id:
        return collection_status(collection_id, PROTOCOL_ERROR, key, klass), True
    folder = await call.services.folders.name_of(call.user.address, collection_id)
    if folder is None:
        return collection_status(collection_id, FOLDER_HIERARCHY_CHANGED, key, klass), True
    window = min(_int(collection, "WindowSize", default_window, 1, 512), call.ctx.config.activesync.max_window_size)
    if (pim := parse_key(folder)) is not None:
        return await pimcollection.collection(call, collection, PimFolder(*pim, name=""), collection_id, window)
    if klass not in (None, "Email"):
        return collection_status(collection_id, PROTOCOL_ERROR, key, klass), True
    options = collection.find("Options")
    filter_type = _int(options, "FilterType", 0, 0, 8)
    try:
        body_options = parse_options(options, call.version)
    except ItemError as exc:
        raise EasError(PROTOCOL_ERROR, str(exc)) from None
    store = await call.mailbox()
    state_store = call.ctx.state
    user, device = call.user.address, call.device.device_id

    if key == "0":
        state = await start(store, folder, FILTER_DAYS.get(filter_type), filter_type)
        new_key = first_key()
        await state_store.put_sync_state(user, device, collection_id, new_key, state.dump(), keep=KEEP_STATES)
        return collection_status(collection_id, OK, new_key, klass), True

    blob = await state_store.get_sync_state(user, device, collection_id, key) if valid_key(key) else None
    if blob is None:
        return collection_status(collection_id, INVALID_KEY, "0", klass), True
    state = FolderState.load(blob)
    commands = collection.find("Commands")
    get_changes = collection.find("GetChanges")
    wants_changes = get_changes is None or (get_changes.text or "1") != "0"
    deletes_as_moves = (collection.text_of("DeletesAsMoves") or "1") != "0"

    status = await store.status(folder)
    if status.uidvalidity != state.uidvalidity:
        # Every UID the device holds is void: it must start this folder afresh.
        return collection_status(collection_id, INVALID_KEY, "0", klass), True
    if filter_type != state.filter_type:
        state.filter_type = filter_type
        state.marks = (None, 0, -1)  # force a fresh listing below, with the new window

    responses: list[Element] = []
    current, listed = await look(store, folder, state, status, FILTER_DAYS.get(state.filter_type),
                                 full=commands is not None)
    if commands is not None:
        responses = await _client_commands(call, store, folder, collection_id, commands, state, current or {},
                                           listed, deletes_as_moves, body_options)
        # Our own changes are in `current` and `state.known` already. The counters read now also cover
        # them (so a Ping does not wake for them), but they may cover a message that arrived meanwhile
        # too: the next Sync lists the folder rather than trust them.
        status = await store.status(folder)
        await call.services.push.changed(call.user.address, folder)  # the user's other devices, any node

    items: list[Element] = []
    more = False
    if wants_changes:
        if current is not None:
            rebase(state, current)
        items, more = await _server_changes(call, store, folder, collection_id, state, current, listed, window,
                                            body_options)
    state.marks = marks(status)
    state.relist = commands is not None
    if not items and not responses and not more and commands is None:
        if current is not None:  # listed, and nothing changed: remember the counters, keep the key
            await state_store.put_sync_state(user, device, collection_id, key, state.dump(), keep=KEEP_STATES)
        return collection_status(collection_id, OK, key, klass), False
    new_key = next_key(key)
    await state_store.put_sync_state(user, device, collection_id, new_key, state.dump(), keep=KEEP_STATES)
    return collection_answer(collection_id, OK, new_key, klass, more, items, responses), True  # a new key


async def note_move(call: EasCall, source_id: str, uid: int, dest_id: str, new_uid: int,
                    flags: tuple[str, ...]) -> None:
    """A device moved a message itself (MoveItems): its latest states of both folders say so, so the
    source owes it no Delete and the destination sends it no Add."""
    store, user, device = call.ctx.state, call.user.address, call.device.device_id
    for collection_id, change in ((source_id, lambda s: s.known.pop(uid, None)),
                                  (dest_id, lambda s: s.known.__setitem__(new_uid, flag_bits(flags)))):
        latest = await store.latest_sync_state(user, device, collection_id)
        if latest is None:
            continue
        state = FolderState.load(latest.blob)
        change(state)
        state.pending = [u for u in state.pending if u not in (uid, new_uid)]
        await store.put_sync_state(user, device, collection_id, latest.sync_key, state.dump(), keep=KEEP_STATES)


async def _server_changes(call: EasCall, store, folder: str, collection_id: str, state: FolderState,
                          current: dict[int, int] | None, listed: dict[int, tuple[str, ...]], window: int,
                          options: BodyOptions) -> tuple[list, bool]:
    notes = FlagNotes(call.ctx.state)
    commands: list[Element] = []
    if current is not None:
        gone, changed = diff(state, current)
        for uid in gone[:window]:
            commands.append(Element(NS, "Delete", [Element(NS, "ServerId", text=server_id(collection_id, uid))]))
            del state.known[uid]
        for uid in changed[:max(0, window - len(commands))]:
            data = await _change_data(call, notes, folder, state.uidvalidity, uid, listed.get(uid, ()))
            commands.append(Element(NS, "Change", [Element(NS, "ServerId", text=server_id(collection_id, uid)),
                                                   Element(NS, "ApplicationData", data)]))
            state.known[uid] = current[uid]
        leftover = len(gone) + len(changed) - len(commands)
    else:
        leftover = 0
    room = window - len(commands)
    if room > 0 and state.pending:
        batch = state.pending[:room]
        fetched = await store.fetch_messages(folder, batch)
        sent = set()
        for summary, raw in sorted(fetched, key=lambda item: -item[0].uid):
            try:
                data = application_data(summary, raw, collection_id, call.version, options)
            except ItemError as exc:
                log.warning("message not convertible", extra={"event": "eas-item", "user": call.user.address,
                                                               "uid": summary.uid, "error": str(exc)[:200]})
                sent.add(summary.uid)
                continue
            if current_bits := flag_bits(summary.flags) & FLAGGED:
                await _apply_note(call, notes, folder, state.uidvalidity, summary.uid, data, current_bits)
            commands.append(Element(NS, "Add", [Element(NS, "ServerId", text=server_id(collection_id, summary.uid)),
                                                data]))
            state.known[summary.uid] = flag_bits(summary.flags)
            sent.add(summary.uid)
        sent |= set(batch)  # ones that vanished meanwhile are owed no more
        state.pending = [uid for uid in state.pending if uid not in sent]
    return commands, bool(state.pending) or leftover > 0


async def _apply_note(call: EasCall, notes: FlagNotes, folder: str, uidvalidity: int, uid: int, data: Element,
                      flagged: int) -> None:
    """Put the kept flag details (due dates...) into a flagged item's Flag element."""
    note = await notes.get(call.user.address, folder, uidvalidity, uid)
    flag = data.find("Flag", "Email")
    if note and flag is not None and flagged:
        flag.children = note


async def _change_data(call: EasCall, notes: FlagNotes, folder: str, uidvalidity: int, uid: int,
                       flags: tuple[str, ...]) -> list[Element]:
    """What a server-side Change carries: read state, the flag, and (14.0+) the categories."""
    bits = flag_bits(flags)
    flag: list[Element] = []
    if bits & FLAGGED:
        flag = await notes.get(call.user.address, folder, uidvalidity, uid) or plain_flag()
    out = [Element("Email", "Read", text="1" if bits & READ else "0"), Element("Email", "Flag", flag)]
    if call.version_tuple >= (14, 0):
        out.append(Element("Email", "Categories", [Element("Email", "Category", text=c) for c in categories(flags)]))
    return out


async def _client_commands(call: EasCall, store, folder: str, collection_id: str, commands: Element,
                           state: FolderState, current: dict[int, int], listed: dict[int, tuple[str, ...]],
                           deletes_as_moves: bool, options: BodyOptions) -> list[Element]:
    notes = FlagNotes(call.ctx.state)
    responses: list[Element] = []
    wins = call.ctx.config.activesync.client_wins_conflicts
    trash = None
    for command in commands.children:
        server_id = command.text_of("ServerId") or ""
        uid = uid_of(server_id, collection_id)
        if command.name == "Change":
            if uid is None or uid not in current:
                responses.append(_response("Change", server_id, NOT_FOUND))
                continue
            had = state.known.get(uid, current[uid])
            if not wins and current[uid] != had:
                continue  # the server changed it too: the server's version goes to the device as a Change
            data = command.find("ApplicationData")
            had_flags = set(listed.get(uid, ()))
            wanted_flags = _wanted_flags(data, had_flags)
            await _store_flags(store, folder, uid, had_flags, wanted_flags)
            listed[uid] = tuple(sorted(wanted_flags))
            current[uid] = state.known[uid] = flag_bits(listed[uid])
            flag = data.find("Flag", "Email") if data is not None else None
            if flag is not None:
                await notes.put(call.user.address, folder, state.uidvalidity, uid, flag)
            if data is not None and data.find("Send", "Email2") is not None and call.version_tuple >= (16, 0):
                from .drafts import send_draft
                await send_draft(call, store, folder, uid)
                current.pop(uid, None)  # gone from Drafts: the next Sync tells the device
        elif command.name == "Delete":
            if uid is None:
                responses.append(_response("Delete", server_id, NOT_FOUND))
                continue
            if uid in current:
                if deletes_as_moves and trash is None:
                    trash = await _trash(call, store, folder)
                try:
                    if deletes_as_moves and trash:
                        await store.move(folder, [uid], trash)
                    else:
                        await store.expunge(folder, [uid])
                except NotFound:
                    pass
                current.pop(uid, None)
            state.known.pop(uid, None)
        elif command.name == "Fetch":
            responses.append(await _fetch(call, store, folder, collection_id, server_id, uid, options))
        elif command.name == "Add":
            from .drafts import add
            before = set(state.known)
            responses.append(await add(call, store, folder, collection_id, command, state.known))
            for uid in set(state.known) - before:
                current[uid] = state.known[uid]
        else:
            raise EasError(PROTOCOL_ERROR, f"unknown Sync command {command.name}")
    return responses


def _response(kind: str, server_id: str, status: int) -> Element:
    return Element(NS, kind, [Element(NS, "ServerId", text=server_id), Element(NS, "Status", text=str(status))])


def _wanted_flags(data: Element | None, flags: set[str]) -> set[str]:
    """The IMAP flags a device's Change asks for: Read, Flag (active or not) and, when sent, Categories."""
    out = set(flags)
    if data is None:
        return out

    def toggle(name: str, on: bool) -> None:
        for f in [f for f in out if f.upper() == name.upper()]:
            out.discard(f)
        if on:
            out.add(name)
    read = data.text_of("Read", "Email")
    if read in ("0", "1"):
        toggle("\\Seen", read == "1")
    flag = data.find("Flag", "Email")
    if flag is not None:
        toggle("\\Flagged", flag.text_of("Status", "Email") == "2")
    wanted = data.find("Categories", "Email")
    if wanted is not None:
        for f in [f for f in out if categories([f])]:
            out.discard(f)
        out |= {category_keyword(c.text or "") for c in wanted.findall("Category", "Email")[:300] if c.text}
    return out


async def _store_flags(store, folder: str, uid: int, had: set[str], wanted: set[str]) -> None:
    if added := sorted(wanted - had):
        await store.set_flags(folder, [uid], added, add=True)
    if removed := sorted(had - wanted):
        await store.set_flags(folder, [uid], removed, add=False)


async def _trash(call: EasCall, store, folder: str) -> str:
    """The Deleted Items folder, or "" when there is none or ``folder`` is it (then deletes expunge)."""
    folders = await store.list_folders()
    types = folder_types(folders)
    trash = next((name for name, kind in types.items() if kind == DELETED), "")
    return "" if trash == folder else trash


async def _fetch(call: EasCall, store, folder: str, collection_id: str, server_id: str, uid: int | None,
                 options: BodyOptions) -> Element:
    fetched = await fetch_one(store, folder, uid) if uid is not None else None
    if fetched is None:
        return _response("Fetch", server_id, NOT_FOUND)
    try:
        data = application_data(*fetched, collection_id, call.version, options)
    except ItemError:
        return _response("Fetch", server_id, CONVERSION_ERROR)
    return Element(NS, "Fetch", [Element(NS, "ServerId", text=server_id), Element(NS, "Status", text=str(OK)),
                                 data])


__all__ = ["run", "FolderState"]
