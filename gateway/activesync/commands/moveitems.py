"""MoveItems (MS-ASCMD 2.2.1.12): move messages between mail folders; the device learns each new ServerId.

The device has already moved the item in its own view, so the sync states of
both folders are told: the source no longer owes a Delete for it, and the
destination does not send it back as an Add.
"""

from __future__ import annotations

from adapters.errors import BackendError, NotFound

from ..wbxml import Element
from . import EasCall, EasError
from ..items import server_id, uid_of
from ..pimfolders import is_pim, parse_key
from .pimcollection import move_item
from .sync import note_move

NS = "Move"
# MoveItems status (MS-ASCMD 2.2.3.177.10).
BAD_SOURCE, BAD_DESTINATION, OK, SAME_FOLDER, FAILED = 1, 2, 3, 4, 5


def _response(source: str, status: int, new_id: str | None = None) -> Element:
    children = [Element(NS, "SrcMsgId", text=source), Element(NS, "Status", text=str(status))]
    if new_id:
        children.append(Element(NS, "DstMsgId", text=new_id))
    return Element(NS, "Response", children)


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "MoveItems" or not body.findall("Move"):
        raise EasError(FAILED, "expected a MoveItems request", http_status=400)
    folders = call.services.folders
    out = []
    store = None
    for move in body.findall("Move")[:1000]:
        source_item = move.text_of("SrcMsgId") or ""
        source_id, dest_id = move.text_of("SrcFldId") or "", move.text_of("DstFldId") or ""
        source = await folders.name_of(call.user.address, source_id)
        if source is not None and (pim := parse_key(source)) is not None:
            out.append(await _move_pim(call, pim, source_id, source_item, dest_id))
            continue
        uid = uid_of(source_item, source_id)
        if source is None or uid is None:
            out.append(_response(source_item, BAD_SOURCE))
            continue
        dest = await folders.name_of(call.user.address, dest_id)
        if dest is None or is_pim(dest):
            out.append(_response(source_item, BAD_DESTINATION))
            continue
        if dest == source:
            out.append(_response(source_item, SAME_FOLDER))
            continue
        store = store or await call.mailbox()
        try:
            flags = await store.fetch_flags(source, uid)
            moved = await store.move(source, [uid], dest)
        except NotFound:
            out.append(_response(source_item, BAD_SOURCE))
            continue
        except BackendError:
            out.append(_response(source_item, FAILED))
            continue
        new_uid = moved.get(uid)
        if new_uid is None:
            out.append(_response(source_item, FAILED))
            continue
        await note_move(call, source_id, uid, dest_id, new_uid, flags)
        for changed in (source, dest):
            await call.services.push.changed(call.user.address, changed)
        out.append(_response(source_item, OK, server_id(dest_id, new_uid)))
    return Element(NS, "MoveItems", out)


async def _move_pim(call: EasCall, source: tuple, source_id: str, item: str, dest_id: str) -> Element:
    """A contact, event, task or note moved to another folder of its class."""
    dest = await call.services.folders.name_of(call.user.address, dest_id)
    target = parse_key(dest) if dest is not None else None
    if target is None or target[0] is not source[0]:
        return _response(item, BAD_DESTINATION)
    if target[1] == source[1]:
        return _response(item, SAME_FOLDER)
    try:
        moved = await move_item(call, source, source_id, item, target, dest_id)
    except BackendError:
        return _response(item, FAILED)
    return _response(item, OK, moved) if moved is not None else _response(item, BAD_SOURCE)
