"""SendMail, SmartReply and SmartForward (MS-ASCMD 2.2.1.17, 2.2.1.20, 2.2.1.19).

From 14.0 on the request is ComposeMail WBXML carrying the MIME; before, the
body is the MIME itself with SaveInSent, CollectionId and ItemId in the query.
The message goes out through the user's SMTP submission back end, logged in
as the user; a copy goes to Sent Items when the device asks (with its Bcc
kept), and the original of a reply or forward gets \\Answered or $Forwarded.
A ClientId already sent from this device is not sent again (Status 118), so a
device that retries after a lost answer never sends a message twice.
"""

from __future__ import annotations

import logging

from adapters.errors import AuthenticationFailed, BackendError, BackendUnavailable, QuotaExceeded

from ..compose import ComposeError, Outgoing, compose
from ..folders import SENT, folder_types
from ..items import fetch_one, uid_of
from ..wbxml import Element
from . import EasCall, EasError

log = logging.getLogger("casgate.activesync")
NS = "ComposeMail"
# MS-ASCMD 2.2.2 common status codes used here.
INVALID_WBXML, INVALID_MIME, SERVER_ERROR, RETRY_LATER, QUOTA, RECIPIENT_UNRESOLVED = 102, 107, 110, 111, 113, 116
PREVIOUSLY_SENT, SUBMISSION_FAILED, ITEM_NOT_FOUND = 118, 120, 150
_SENT_NS = "eas-sent"
_SENT_TTL = 3 * 86400.0


async def send_mail(call: EasCall) -> Element | None:
    return await _run(call, "SendMail", "send")


async def smart_reply(call: EasCall) -> Element | None:
    return await _run(call, "SmartReply", "reply")


async def smart_forward(call: EasCall) -> Element | None:
    return await _run(call, "SmartForward", "forward")


async def _run(call: EasCall, command: str, mode: str) -> Element | None:
    modern = call.version_tuple >= (14, 0)
    if modern:
        body = call.body
        if body is None or body.ns != NS or body.name != command:
            raise EasError(INVALID_WBXML, f"expected a {command} request")
        mime_element = body.find("Mime")
        mime = (mime_element.opaque if mime_element is not None and mime_element.opaque is not None
                else (mime_element.text or "").encode("utf-8") if mime_element is not None else b"")
        client_id = body.text_of("ClientId") or ""
        save = body.find("SaveInSentItems") is not None
        replace = body.find("ReplaceMime") is not None
        source = body.find("Source")
        folder_id = source.text_of("FolderId") if source is not None else None
        item_id = source.text_of("ItemId") if source is not None else None
        if source is not None and (long_id := source.text_of("LongId")):
            folder_id, item_id = long_id.rpartition(":")[0], long_id
    else:
        mime, client_id, replace = call.raw, "", False
        save = call.request.save_in_sent
        folder_id, item_id = call.request.collection_id, call.request.item_id
    if not mime:
        raise _status(call, command, INVALID_MIME, "no MIME in the request")
    if len(client_id) > 64:
        raise _status(call, command, INVALID_WBXML, "ClientId too long")
    state = call.ctx.state
    sent_key = f"{call.user.address}\x1f{call.device.device_id}\x1f{client_id}"
    if client_id and await state.kv_get(_SENT_NS, sent_key) is not None:
        raise _status(call, command, PREVIOUSLY_SENT, "this ClientId was sent already")

    store = await call.mailbox()
    original = None
    original_folder = original_uid = None
    if mode != "send" and not replace:
        original_folder = await call.services.folders.name_of(call.user.address, folder_id or "")
        original_uid = uid_of(item_id or "", folder_id or "")
        fetched = await fetch_one(store, original_folder, original_uid) \
            if original_folder is not None and original_uid is not None else None
        if fetched is None:
            raise _status(call, command, ITEM_NOT_FOUND, "the original message is gone")
        original = fetched[1]
    try:
        outgoing = compose(mime, user_address=call.user.address, display_name=call.user.display_name, mode=mode,
                           original=original, replace_mime=replace or mode == "send",
                           domain_for_ids=call.user.domain)
    except ComposeError as exc:
        raise _status(call, command, int(exc.status), str(exc)) from None

    await submit(call, command, outgoing, save, sent_key if client_id else None)
    if original_folder is not None and original_uid is not None:
        try:
            await store.set_flags(original_folder, [original_uid], ["\\Answered" if mode == "reply" else "$Forwarded"])
        except BackendError as exc:
            log.warning("sent, but the original's flag failed", extra={
                "event": "eas-sent", "user": call.user.address, "error": str(exc)[:200]})
    return None


async def submit(call: EasCall, command: str, outgoing: Outgoing, save: bool, claim: str | None) -> None:
    """Send through the user's SMTP back end, then (if asked) keep the copy in Sent Items.

    ``claim`` is a state key taken before sending and given back if sending fails, so a retry of a
    request whose answer was lost finds it taken; errors become EasError with the right status.
    """
    state = call.ctx.state
    smtp = call.ctx.directory.route(call.user, "smtp")
    if not smtp:
        raise _status(call, command, SUBMISSION_FAILED, "no SMTP submission back end for this user")
    if claim:  # claimed before sending: a retry racing this request finds it taken
        await state.kv_set(_SENT_NS, claim, b"sending", ttl=_SENT_TTL)
    try:
        await call.ctx.backends.submission(smtp, call.creds).send(outgoing.sender, outgoing.recipients,
                                                                   outgoing.message)
    except BaseException as exc:
        if claim:
            await state.kv_delete(_SENT_NS, claim)  # not sent: a retry may try again
        if isinstance(exc, QuotaExceeded):
            raise _status(call, command, QUOTA, str(exc)) from None
        if isinstance(exc, (BackendUnavailable, AuthenticationFailed)):
            raise _status(call, command, RETRY_LATER, str(exc)) from None
        if isinstance(exc, BackendError):
            refused = getattr(exc, "refused", None)
            raise _status(call, command, RECIPIENT_UNRESOLVED if refused else SUBMISSION_FAILED, str(exc)) from None
        raise
    log.info("mail sent", extra={"event": "eas-sent", "user": call.user.address, "command": command,
                                 "recipients": len(outgoing.recipients), "bytes": len(outgoing.message)})
    if not save:
        return
    # Sent: from here on nothing may fail the request (a retry would send it again).
    try:
        store = await call.mailbox()
        folders = await store.list_folders()
        sent = next((name for name, kind in folder_types(folders).items() if kind == SENT), None)
        if sent is not None:
            await store.append(sent, outgoing.sent_copy, ["\\Seen"])
    except BackendError as exc:
        log.warning("sent, but the copy in Sent Items failed", extra={
            "event": "eas-sent", "user": call.user.address, "error": str(exc)[:200]})


def _status(call: EasCall, command: str, status: int, why: str) -> EasError:
    """From 14.0 a Status in the command's element; before, an HTTP 500 (there is no response body then)."""
    log.info("compose refused", extra={"event": "eas-compose", "command": command, "status": status,
                                       "reason": why[:200], "user": call.user.address})
    if call.version_tuple >= (14, 0):
        return EasError(status, why)
    return EasError(status, why, http_status=500)
