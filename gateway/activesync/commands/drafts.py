"""16.x drafts (MS-ASEMAIL 3.1.5.3): Sync Add of an Email item in Drafts, and Email2:Send of a draft.

A draft arrives either as a whole MIME message (AirSyncBase:Body Type 4) or
as fields (To, Cc, Bcc, Subject, Importance, a text or HTML body), becomes an
IMAP message with \\Draft in the Drafts folder, and gets a ServerId. A retried
Add (its answer was lost) finds its ClientId and is answered with the same
ServerId instead of making a second draft. With Email2:Send the draft is sent
and leaves Drafts; the next Sync tells the device it is gone.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

from ...services.mailsync import flag_bits
from ..compose import ComposeError, compose
from ..folders import DRAFTS, folder_types
from ..wbxml import Element
from . import EasCall, EasError
from .composemail import submit

NS = "AirSync"
OK, CONVERSION_ERROR, SERVER_ERROR = 1, 6, 5
_ADDS = "eas-add"
_ADD_TTL = 7 * 86400.0


def _body_bytes(element: Element | None) -> bytes:
    if element is None:
        return b""
    return element.opaque if element.opaque is not None else (element.text or "").encode("utf-8")


def draft_mime(call: EasCall, data: Element) -> bytes:
    """The RFC 5322 message a draft's ApplicationData describes."""
    body = data.find("Body", "AirSyncBase")
    if body is not None and body.text_of("Type") == "4":
        mime = _body_bytes(body.find("Data"))
        if not mime.strip():
            raise ValueError("empty MIME draft")
        return mime
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = call.user.address
    for ns, name, header in (("Email", "To", "To"), ("Email", "Cc", "Cc"), ("Email2", "Bcc", "Bcc"),
                             ("Email", "Subject", "Subject")):
        value = data.text_of(name, ns)
        if value:
            if "\r" in value or "\n" in value:
                raise ValueError(f"line break in {name}")
            msg[header] = value
    importance = data.text_of("Importance", "Email")
    if importance in ("0", "2"):
        msg["Importance"] = "low" if importance == "0" else "high"
    text = _body_bytes(body.find("Data")).decode("utf-8", "replace") if body is not None else ""
    if body is not None and body.text_of("Type") == "2":
        msg.set_content(text, subtype="html")
    else:
        msg.set_content(text)
    return msg.as_bytes()


def _flags(data: Element) -> list[str]:
    flags = ["\\Draft"]
    if data.text_of("Read", "Email") == "1":
        flags.append("\\Seen")
    flag = data.find("Flag", "Email")
    if flag is not None and flag.text_of("Status", "Email") == "2":
        flags.append("\\Flagged")
    return flags


def _response(client_id: str, status: int, server_id: str | None = None) -> Element:
    children = [Element(NS, "ClientId", text=client_id)]
    if server_id:
        children.append(Element(NS, "ServerId", text=server_id))
    children.append(Element(NS, "Status", text=str(status)))
    return Element(NS, "Add", children)


async def add(call: EasCall, store, folder: str, collection_id: str, command: Element,
              known: dict[int, int]) -> Element:
    """Answer one Sync Add in a mail folder: a draft in Drafts from 16.0 on, Status 6 anywhere else."""
    client_id = (command.text_of("ClientId") or "")[:64]
    data = command.find("ApplicationData")
    folders = await store.list_folders()
    is_drafts = folder_types(folders).get(folder) == DRAFTS
    if call.version_tuple < (16, 0) or not is_drafts or data is None or not client_id:
        return _response(client_id, CONVERSION_ERROR)  # only 16.x drafts may be created on the server
    state = call.ctx.state
    key = f"{call.user.address}\x1f{call.device.device_id}\x1f{collection_id}\x1f{client_id}"
    if (done := await state.kv_get(_ADDS, key)) is not None:
        return _response(client_id, OK, done.decode())
    try:
        mime = draft_mime(call, data)
    except ValueError:
        return _response(client_id, CONVERSION_ERROR)
    flags = _flags(data)
    uid = await store.append(folder, mime, flags)
    if uid is None:
        return _response(client_id, SERVER_ERROR)
    server_id = f"{collection_id}:{uid}"
    await state.kv_set(_ADDS, key, server_id.encode(), ttl=_ADD_TTL)
    known[uid] = flag_bits(flags)
    if data.find("Send", "Email2") is not None:
        await send_draft(call, store, folder, uid, mime)
    return _response(client_id, OK, server_id)


async def send_draft(call: EasCall, store, folder: str, uid: int, mime: bytes | None = None) -> None:
    """Send a draft (Email2:Send) and take it out of Drafts; its copy goes to Sent Items."""
    if mime is None:
        fetched = await store.fetch_messages(folder, [uid])
        if not fetched:
            raise EasError(8, "the draft is gone")
        mime = fetched[0][1]
    try:
        outgoing = compose(mime, user_address=call.user.address, display_name=call.user.display_name, mode="send",
                           replace_mime=True, domain_for_ids=call.user.domain)
    except ComposeError as exc:
        raise EasError(CONVERSION_ERROR, str(exc)) from None
    await submit(call, "Sync", outgoing, True, None)
    await store.expunge(folder, [uid])
