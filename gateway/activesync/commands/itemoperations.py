"""ItemOperations (MS-ASCMD 2.2.1.10): Fetch a message (by ServerId or LongId) or an attachment (by
FileReference), EmptyFolderContents, and Move of a whole conversation.

Attachments go out base64-encoded in ``Data``, or, when the device sent
``MS-ASAcceptMultiPart: T``, as raw binary parts of an
application/vnd.ms-sync.multipart response (MS-ASCMD 2.2.1.10.1.1), which
spares the phone a third more bytes and the decoding.
"""

from __future__ import annotations

import base64
import logging
import struct

from aiohttp import web

from adapters.errors import BackendError, NotFound

from ..email_item import ItemError, attachment_content, parse_options
from ..items import application_data, fetch_one, uid_of
from ..pimfolders import parse_key
from ..wbxml import Element, encode
from . import EasCall, EasError
from .pimcollection import fetch_item

log = logging.getLogger("casgate.activesync")
NS = "ItemOperations"
# ItemOperations status (MS-ASCMD 2.2.3.177.7).
OK, PROTOCOL_ERROR, SERVER_ERROR, NOT_FOUND, UNKNOWN_STORE, CONVERSION_ERROR, BAD_ATTACHMENT = 1, 2, 3, 6, 9, 14, 15
MULTIPART = "application/vnd.ms-sync.multipart"


class _Parts:
    """Binary parts of a multipart response; part 0 is the WBXML document itself."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.blobs: list[bytes] = []

    def add(self, data: bytes) -> int:
        self.blobs.append(data)
        return len(self.blobs)


async def run(call: EasCall) -> Element | web.Response:
    body = call.body
    if body is None or body.ns != NS or body.name != "ItemOperations":
        raise EasError(PROTOCOL_ERROR, "expected an ItemOperations request")
    parts = _Parts(call.request.accept_multipart)
    out = []
    for operation in body.children[:100]:
        if operation.ns == NS and operation.name == "Fetch":
            out.append(await _fetch(call, operation, parts))
        elif operation.ns == NS and operation.name == "EmptyFolderContents":
            out.append(await _empty(call, operation))
        elif operation.ns == NS and operation.name == "Move":
            out.append(await _move_conversation(call, operation))
        else:
            raise EasError(PROTOCOL_ERROR, f"unknown ItemOperations operation {operation.name}")
    document = Element(NS, "ItemOperations", [Element(NS, "Status", text=str(OK)), Element(NS, "Response", out)])
    if not parts.enabled or not parts.blobs:
        return document
    return _multipart(encode(document), parts.blobs)


def _multipart(document: bytes, blobs: list[bytes]) -> web.Response:
    """PartsCount, then (offset, length) of each part, then the parts: 32-bit little-endian integers."""
    chunks = [document, *blobs]
    header = 4 + 8 * len(chunks)
    table, offset = [], header
    for chunk in chunks:
        table.append(struct.pack("<ii", offset, len(chunk)))
        offset += len(chunk)
    payload = struct.pack("<i", len(chunks)) + b"".join(table) + b"".join(chunks)
    return web.Response(body=payload, headers={"Content-Type": MULTIPART, "Cache-Control": "private"})


def _status(kind: str, status: int, *ids: Element) -> Element:
    return Element(NS, kind, [Element(NS, "Status", text=str(status)), *ids])


async def _fetch(call: EasCall, fetch: Element, parts: _Parts) -> Element:
    store_name = fetch.text_of("Store", default="Mailbox")
    if store_name.lower() != "mailbox":
        return _status("Fetch", UNKNOWN_STORE)  # document libraries (UNC/SharePoint) are not offered
    reference = fetch.text_of("FileReference", "AirSyncBase")
    if reference is not None:
        return await _attachment(call, reference, parts)
    long_id = fetch.text_of("LongId", "Search")
    collection_id = fetch.text_of("CollectionId", "AirSync")
    item = fetch.text_of("ServerId", "AirSync")
    if long_id is not None:  # a LongId from Search is a ServerId: "<folder>:<uid>"
        collection_id, item = long_id.rpartition(":")[0], long_id
        ids = [Element("Search", "LongId", text=long_id)]
    else:
        ids = [Element("AirSync", "CollectionId", text=collection_id or ""),
               Element("AirSync", "ServerId", text=item or "")]
    if not collection_id or not item:
        return _status("Fetch", PROTOCOL_ERROR, *ids)
    folder = await call.services.folders.name_of(call.user.address, collection_id)
    try:
        options = parse_options(fetch.find("Options"), call.version)
    except ItemError as exc:
        raise EasError(PROTOCOL_ERROR, str(exc)) from None
    if folder is not None and (pim := parse_key(folder)) is not None:
        try:
            found = await fetch_item(call, *pim, collection_id, item, options)
        except ItemError:
            return _status("Fetch", CONVERSION_ERROR, *ids)
        if found is None:
            return _status("Fetch", NOT_FOUND, *ids)
        return Element(NS, "Fetch", [Element(NS, "Status", text=str(OK)), *ids,
                                     Element("AirSync", "Class", text=pim[0].name),
                                     Element(NS, "Properties", found.children)])
    uid = uid_of(item, collection_id)
    if folder is None or uid is None:
        return _status("Fetch", NOT_FOUND, *ids)
    fetched = await fetch_one(await call.mailbox(), folder, uid)
    if fetched is None:
        return _status("Fetch", NOT_FOUND, *ids)
    try:
        data = application_data(*fetched, collection_id, call.version, options)
    except ItemError:
        return _status("Fetch", CONVERSION_ERROR, *ids)
    return Element(NS, "Fetch", [Element(NS, "Status", text=str(OK)), *ids, Element("AirSync", "Class", text="Email"),
                                 Element(NS, "Properties", data.children)])


async def _attachment(call: EasCall, reference: str, parts: _Parts) -> Element:
    ids = [Element("AirSyncBase", "FileReference", text=reference)]
    head, _, part = reference.rpartition(":")
    collection_id, _, uid_text = head.rpartition(":")
    folder = await call.services.folders.name_of(call.user.address, collection_id) if collection_id else None
    if folder is None or not uid_text.isdigit() or not part or len(uid_text) > 10:
        return _status("Fetch", BAD_ATTACHMENT, *ids)
    fetched = await fetch_one(await call.mailbox(), folder, int(uid_text))
    if fetched is None:
        return _status("Fetch", BAD_ATTACHMENT, *ids)
    try:
        content_type, _, data = attachment_content(fetched[1], part)
    except ItemError:
        return _status("Fetch", BAD_ATTACHMENT, *ids)
    if parts.enabled:
        payload = Element(NS, "Part", text=str(parts.add(data)))
    else:
        payload = Element(NS, "Data", text=base64.b64encode(data).decode("ascii"))
    return Element(NS, "Fetch", [Element(NS, "Status", text=str(OK)), *ids, Element(NS, "Properties", [
        Element("AirSyncBase", "ContentType", text=content_type or "application/octet-stream"), payload])])


async def _empty(call: EasCall, operation: Element) -> Element:
    collection_id = operation.text_of("CollectionId", "AirSync") or ""
    ids = [Element("AirSync", "CollectionId", text=collection_id)]
    folder = await call.services.folders.name_of(call.user.address, collection_id)
    if folder is None:
        return _status("EmptyFolderContents", NOT_FOUND, *ids)
    store = await call.mailbox()
    try:
        uids = [m.uid for m in await store.list_messages(folder)]
        await store.expunge(folder, uids)
    except BackendError as exc:
        log.warning("empty folder failed", extra={"event": "eas-empty", "user": call.user.address,
                                                   "error": str(exc)[:200]})
        return _status("EmptyFolderContents", SERVER_ERROR, *ids)
    # Subfolders (Options/DeleteSubFolders) are left alone: removing folders is FolderDelete's job.
    return _status("EmptyFolderContents", OK, *ids)


async def _move_conversation(call: EasCall, operation: Element) -> Element:
    """Move every message of a conversation into one folder (MS-ASCMD 2.2.3.114.1).

    The conversation is found by computing each message's ConversationId from its threading headers,
    in every folder but the destination (and, unless MoveAlways, Deleted Items and Sent Items, as
    Exchange leaves them alone); the device's sync states learn of each move.
    """
    from ..email_item import conversation_id
    from ..folders import DELETED, SENT, folder_types
    from .sync import note_move
    node = operation.find("ConversationId")
    wanted = node.opaque if node is not None and node.opaque is not None else \
        base64.b64decode(node.text or "") if node is not None and node.text else b""
    dest_id = operation.text_of("DstFldId") or ""
    ids = [Element(NS, "ConversationId", opaque=wanted)]
    folders_map = call.services.folders
    dest = await folders_map.name_of(call.user.address, dest_id)
    if len(wanted) != 16 or dest is None:
        return _status("Move", PROTOCOL_ERROR if len(wanted) != 16 else NOT_FOUND, *ids)
    options = operation.find("Options")
    always = options is not None and options.find("MoveAlways") is not None
    store = await call.mailbox()
    listed = await store.list_folders()
    kinds = folder_types(listed)
    server_ids = await folders_map.assign(call.user.address, [f.name for f in listed])
    moved = 0
    for folder in listed:
        if folder.name == dest or (not always and kinds.get(folder.name) in (DELETED, SENT)):
            continue
        try:
            headers = await store.thread_headers(folder.name)
            members = [uid for uid, block in headers if conversation_id(block) == wanted]
            if not members:
                continue
            flags = {uid: await store.fetch_flags(folder.name, uid) for uid in members}
            new_uids = await store.move(folder.name, members, dest)
        except (BackendError, ItemError, NotFound):
            return _status("Move", SERVER_ERROR, *ids)
        for old, new in new_uids.items():
            await note_move(call, server_ids[folder.name], old, dest_id, new, flags.get(old, ()))
        moved += len(members)
    return _status("Move", OK if moved else NOT_FOUND, *ids)
