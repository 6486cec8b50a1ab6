"""The reading pane: a message's headers, attachments and body, the body's sandboxed frame, and downloads."""

from __future__ import annotations

import email
import email.policy
from email.utils import getaddresses
from urllib.parse import quote

from aiohttp import web

from . import pages
from .reading import BODY_CSP, BODY_CSP_IMAGES, disposition, parts, read, safe_name


def _where(request: web.Request) -> tuple[str, int]:
    folder, uid = request.query.get("folder", ""), request.query.get("uid", "")
    if not folder or not uid.isdigit() or not 0 < int(uid) < 2**32:
        raise web.HTTPBadRequest(text="a folder and a message number are needed\n")
    return folder, int(uid)


async def message(request: web.Request) -> web.Response:
    folder, uid = _where(request)
    async with pages.mailbox(request) as (session, store):
        raw = await store.fetch_message(folder, uid)
        if request.query.get("keep") != "unread":
            await store.set_flags(folder, [uid], ["\\Seen"])  # opened: read, as in any mail client
        flags = {f.lower() for f in await store.fetch_flags(folder, uid)}
        targets = [f.name for f in await store.list_folders()
                   if f.name != folder and "\\Noselect" not in f.flags and "\\NonExistent" not in f.flags]
    r = read(raw)
    sender = _sender_address(r.sender)
    trusted = bool(sender) and await request.app[pages.CTX].state.kv_get(_IMAGES_NS, _trust_key(
        session.address, sender)) is not None
    return pages.render("message.html", address=session.address, csrf=session.csrf, folder=folder, uid=uid,
                        r=r, flagged="\\flagged" in flags, unread="\\seen" not in flags, sender=sender,
                        images=r.remote_images and (trusted or request.query.get("images") == "1"),
                        targets=sorted(targets, key=lambda n: (n.upper() != "INBOX", n.lower())))


_IMAGES_NS = "owa-images-from"


def _trust_key(user: str, sender: str) -> str:
    return f"{user.lower()}\x1f{sender.lower()}"


def _sender_address(header: str) -> str:
    address = getaddresses([header])[0][1] if header else ""
    return address if "@" in address and len(address) <= 320 else ""


async def trust_sender(request: web.Request) -> web.Response:
    """Always show remote images in mail from one sender (a POST with the session's token)."""
    fields = await pages.form(request)
    folder, uid, sender = fields.get("folder", ""), fields.get("uid", ""), fields.get("sender", "")
    if not folder or not uid.isdigit() or "@" not in sender or len(sender) > 320:
        raise web.HTTPBadRequest(text="a folder, a message number and a sender are needed\n")
    async with pages.mailbox(request) as (session, _):
        if not session.csrf_ok(fields.get("csrf")):
            raise web.HTTPForbidden(text="the request did not carry this session's token\n")
        await request.app[pages.CTX].state.kv_set(_IMAGES_NS, _trust_key(session.address, sender), b"1")
    return pages.see(f"/owa/message?folder={quote(folder, safe='')}&uid={uid}")


_FLAG_ACTIONS = {"read": ("\\Seen", True), "unread": ("\\Seen", False), "flag": ("\\Flagged", True),
                 "unflag": ("\\Flagged", False)}


async def act(request: web.Request) -> web.Response:
    """Mark read or unread, flag or unflag, move one message to another folder, or delete it (to Deleted Items;
    from there, for good)."""
    fields = await pages.form(request)
    folder, uid, action = fields.get("folder", ""), fields.get("uid", ""), fields.get("action", "")
    if not folder or not uid.isdigit() or not 0 < int(uid) < 2**32 or (
            action not in _FLAG_ACTIONS and action not in ("delete", "move")):
        raise web.HTTPBadRequest(text="a folder, a message number and a known action are needed\n")
    async with pages.mailbox(request) as (session, store):
        if not session.csrf_ok(fields.get("csrf")):
            raise web.HTTPForbidden(text="the request did not carry this session's token\n")
        back = f"/owa/?folder={quote(folder, safe='')}"
        if action in _FLAG_ACTIONS:
            flag, add = _FLAG_ACTIONS[action]
            await store.set_flags(folder, [int(uid)], [flag], add=add)
            keep = "&keep=unread" if action == "unread" else ""
            return pages.see(f"/owa/message?folder={quote(folder, safe='')}&uid={uid}{keep}")
        folders = await store.list_folders()
        if action == "move":
            target = fields.get("target", "")
            if target == folder or target not in {f.name for f in folders if "\\Noselect" not in f.flags}:
                raise web.HTTPBadRequest(text="move it where? that folder is not in this mailbox\n")
            await store.move(folder, [int(uid)], target)
            return pages.see(back)
        trash = next((f.name for f in folders if f.special_use == "\\Trash"), None)
        if trash is None or trash == folder:
            await store.expunge(folder, [int(uid)])
        else:
            await store.move(folder, [int(uid)], trash)
    return pages.see(back)


async def body(request: web.Request) -> web.Response:
    """The cleaned HTML body alone, for the reading pane's sandboxed frame, under a policy that allows no script
    and no request."""
    folder, uid = _where(request)
    async with pages.mailbox(request) as (_, store):
        raw = await store.fetch_message(folder, uid)
    html = read(raw).html or ""
    document = ('<!doctype html><html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
                f"</head><body>{html}</body></html>")
    response = web.Response(text=document, content_type="text/html", charset="utf-8")
    # Images only when the reading pane asked for them (the reader allowed this message or its sender).
    response.headers["Content-Security-Policy"] = BODY_CSP_IMAGES if request.query.get("images") == "1" else BODY_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


async def attachment(request: web.Request) -> web.Response:
    """One part of a message, always as a download (never shown inline), whatever it claims to be."""
    folder, uid = _where(request)
    index = request.query.get("part", "")
    if not index.isdigit():
        raise web.HTTPBadRequest(text="which part?\n")
    async with pages.mailbox(request) as (_, store):
        raw = await store.fetch_message(folder, uid)
    leaves = parts(email.message_from_bytes(raw, policy=email.policy.default))
    if int(index) >= len(leaves):
        raise web.HTTPNotFound(text="there is no such part\n")
    part = leaves[int(index)]
    payload = part.get_payload(decode=True) or b""
    name = safe_name(part.get_filename() or f"part-{index}")
    return web.Response(body=payload, headers={"Content-Type": "application/octet-stream",
                                               "Content-Disposition": disposition(name)})
