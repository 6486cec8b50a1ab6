"""MeetingResponse (MS-ASCMD 2.2.1.11): accept, tentatively accept or decline an invitation in the mailbox.

The invitation is the iCalendar part of the request mail. The answer is put in
the user's default calendar (the attendee's PARTSTAT set; a declined meeting
leaves the calendar), the iMIP REPLY goes to the organizer through the user's
SMTP back end (always before 16.0; from 16.0 when the device asks with
SendResponse, since then the device may send its own), and the request mail
moves to Deleted Items, as Exchange does. The device's latest calendar sync
state learns the stored object, so it is not sent back as a new item; its id is
the CalendarId of the answer.
"""

from __future__ import annotations

import logging

from adapters.errors import BackendError, Conflict, NotFound

from ...services.pimsync import CollectionState
from ..compose import Outgoing
from ..email_item import ItemError, _Message
from ..items import fetch_one, uid_of
from ..meeting import DECLINED, reply_message, respond
from ..pimfolders import CLASSES, folders_of, is_pim
from ..wbxml import Element
from . import EasCall, EasError
from .composemail import submit
from .pimcollection import KEEP_STATES, server_id, store_for
from .sync import _trash

log = logging.getLogger("casgate.activesync")
NS = "MeetingResponse"
# MeetingResponse status (MS-ASCMD 2.2.3.177.8).
OK, INVALID_REQUEST, MAILBOX_ERROR, SERVER_ERROR = 1, 2, 3, 4


def _result(request_id: str, status: int, calendar_id: str | None = None) -> Element:
    children = [Element(NS, "RequestId", text=request_id), Element(NS, "Status", text=str(status))]
    if calendar_id:
        children.append(Element(NS, "CalendarId", text=calendar_id))
    return Element(NS, "Result", children)


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "MeetingResponse" or not body.findall("Request"):
        raise EasError(INVALID_REQUEST, "expected a MeetingResponse request", http_status=400)
    return Element(NS, "MeetingResponse", [await _one(call, request) for request in body.findall("Request")[:100]])


async def _one(call: EasCall, request: Element) -> Element:
    request_id = request.text_of("RequestId") or request.text_of("LongId", "Search") or ""
    response = request.text_of("UserResponse") or ""
    collection_id = request.text_of("CollectionId") or ""
    if response not in ("1", "2", "3") or not request_id:
        return _result(request_id, INVALID_REQUEST)
    folder = await call.services.folders.name_of(call.user.address, collection_id)
    uid = uid_of(request_id, collection_id)
    if folder is None or is_pim(folder) or uid is None:
        # Answering from the calendar itself (an item there, not a mail) is not offered.
        return _result(request_id, INVALID_REQUEST)
    mailbox = await call.mailbox()
    fetched = await fetch_one(mailbox, folder, uid)
    if fetched is None:
        return _result(request_id, INVALID_REQUEST)
    raw = fetched[1]
    invitation = _Message(raw).calendar()
    if invitation is None or invitation[0] != "REQUEST":
        return _result(request_id, INVALID_REQUEST)
    me = {call.user.address.lower(), *(a.lower() for a in call.user.aliases)}
    try:
        keep, reply, organizer = respond(invitation[1], me, int(response))
    except ItemError as exc:
        log.info("meeting request not understood", extra={"event": "eas-meeting", "user": call.user.address,
                                                           "error": str(exc)[:200]})
        return _result(request_id, INVALID_REQUEST)
    try:
        calendar_id = await _store(call, keep, invitation[1], int(response))
    except (BackendError, IndexError) as exc:
        log.warning("meeting response not stored", extra={"event": "eas-meeting", "user": call.user.address,
                                                           "error": str(exc)[:200]})
        return _result(request_id, SERVER_ERROR)
    send = request.find("SendResponse") is not None if call.version_tuple >= (16, 0) else True
    if send and organizer and organizer.lower() not in me:
        subject = _Message(raw).headers.get("subject", "")
        message = reply_message(reply, call.user.address, call.user.display_name, organizer, subject.strip(),
                                int(response), call.user.domain)
        await submit(call, "MeetingResponse", Outgoing(call.user.address, (organizer,), message, message),
                     save=False, claim=None)
    await _to_trash(call, mailbox, folder, uid)
    return _result(request_id, OK, calendar_id if int(response) != DECLINED else None)


async def _store(call: EasCall, keep: str, invitation: str, response: int) -> str | None:
    """Put the answered meeting in the default calendar (or take it out, declined); the device's CalendarId."""
    from ..meeting import parse
    uid = parse(invitation).uid
    klass = CLASSES["Calendar"]
    store = await store_for(call, klass)
    folder = folders_of(klass, await store.list_calendars())[0]
    existing = await store.find_uid(folder.url, uid)
    if response == DECLINED:
        if existing is not None:
            await store.delete_object(existing.href)
        return None
    if existing is not None:
        try:
            etag = await store.replace_object(existing.href, keep, existing.etag)
        except (Conflict, NotFound):
            stored = await store.put_event(folder.url, keep)
            href, etag = stored.href, stored.etag or ""
        else:
            href = existing.href
    else:
        stored = await store.put_event(folder.url, keep)
        href, etag = stored.href, stored.etag or ""
    return await _tell_device(call, folder.key, href, etag)


async def _tell_device(call: EasCall, key: str, href: str, etag: str) -> str | None:
    """Record the object in this device's latest state of that calendar folder; its ServerId there."""
    collection_id = await call.services.folders.id_of(call.user.address, key)
    if collection_id is None:
        return None
    states, user, device = call.ctx.state, call.user.address, call.device.device_id
    latest = await states.latest_sync_state(user, device, collection_id)
    if latest is None:
        return None
    state = CollectionState.load(latest.blob)
    item = state.id_of(href) or state.new_id(href)
    state.items[item][1] = etag
    await states.put_sync_state(user, device, collection_id, latest.sync_key, state.dump(), keep=KEEP_STATES)
    return server_id(collection_id, item)


async def _to_trash(call: EasCall, mailbox, folder: str, uid: int) -> None:
    try:
        if trash := await _trash(call, mailbox, folder):
            await mailbox.move(folder, [uid], trash)
    except BackendError as exc:
        log.info("meeting request not moved to Deleted Items", extra={
            "event": "eas-meeting", "user": call.user.address, "error": str(exc)[:200]})
