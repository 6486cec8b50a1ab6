"""Sync (MS-ASCMD 2.2.1.21) for the Contacts, Calendar, Tasks and Notes classes: one DAV collection,
both ways, in windows, with the same retry-safe keys as mail.

The state under each sync key (gateway/services/pimsync.py) maps the device's
item ids to hrefs and the ETags it was sent. A request is answered by applying
the device's own changes (writes carry If-Match, so a change made on the
server meanwhile is never overwritten unless the client is set to win), then
comparing the collection's ETags with the state, and storing the result under
the next key before the answer leaves. An Add is written under a UID made from
the device's ClientId, so an Add repeated after a lost answer replaces the
object it made the first time instead of making a second one.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from adapters.errors import Conflict, NotFound

from ...services.pimsync import CollectionState, client_uid, look
from ..email_item import BodyOptions, ItemError, parse_options
from ..folders import first_key, next_key, valid_key
from ..pimfolders import PimClass, PimFolder, folder_key
from ..wbxml import Element
from . import EasCall, EasError
from .syncanswer import collection_answer, collection_status

log = logging.getLogger("casgate.activesync")
NS = "AirSync"
KEEP_STATES = 3
_INVITED_NS = "eas-invited"
_INVITED_TTL = 3 * 86400.0
OK, PROTOCOL_ERROR, INVALID_KEY, CONVERSION_ERROR, NOT_FOUND = 1, 4, 3, 6, 8


def _response(kind: str, server_id: str, status: int, client_id: str | None = None) -> Element:
    children = [Element(NS, "ClientId", text=client_id)] if client_id is not None else []
    children += [Element(NS, "ServerId", text=server_id)] if server_id else []
    return Element(NS, kind, children + [Element(NS, "Status", text=str(status))])


def server_id(collection_id: str, item: str) -> str:
    return f"{collection_id}:{item}"


def item_of(sid: str, collection_id: str) -> str | None:
    head, _, item = sid.rpartition(":")
    return item if head == collection_id and item.isdigit() else None


async def store_for(call: EasCall, klass: PimClass):
    """The user's logged-in CalDAV or CardDAV store for ``klass``."""
    backend = call.ctx.directory.route(call.user, klass.role)
    if klass.role == "carddav":
        return await call.services.mail.contacts(call.user, backend, call.creds)
    return await call.services.mail.calendars(call.user, backend, call.creds)


def _text(obj) -> str:
    return obj.vcard if hasattr(obj, "vcard") else obj.ical


def _extra(call: EasCall, klass: PimClass) -> dict:
    return {"owner": call.user.address} if klass.name == "Calendar" else {}


def _ghosted(call: EasCall, klass: PimClass, state: CollectionState) -> dict:
    """What the converter needs to keep the properties a device that sent Supported leaves out of its
    Changes: the contacts converter takes the fields not listed, the calendar one (before 16.0, when
    every omitted property is kept anyway) the listed ones."""
    if not state.ghosted:
        return {}
    if klass.name == "Contacts":
        from ..contact_item import FIELDS
        return {"ghosted": [name for name in FIELDS if name not in set(state.ghosted)]}
    if klass.name == "Calendar" and call.version_tuple < (16, 0):
        return {"supported": list(state.ghosted)}
    return {}


#: Calendar FilterType -> days back (MS-ASCMD 2.2.3.70.1): 4 two weeks, 5 a month, 6 three, 7 six months.
CALENDAR_DAYS = {4: 14, 5: 30, 6: 90, 7: 180}
INCOMPLETE_TASKS = 8


async def current_etags(store, folder: PimFolder, filter_type: int = 0) -> dict[str, str]:
    """href -> ETag of the folder's objects now, within the device's filter."""
    if folder.klass.component is None:
        return await store.object_etags(folder.url)
    since = None
    if folder.klass.name == "Calendar" and filter_type in CALENDAR_DAYS:
        # Midnight, so the window moves once a day, not on every look.
        today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - dt.timedelta(days=CALENDAR_DAYS[filter_type])
    open_only = folder.klass.name == "Tasks" and filter_type == INCOMPLETE_TASKS
    return await store.object_etags(folder.url, folder.klass.component, since, open_only)


async def collection(call: EasCall, element: Element, folder: PimFolder, collection_id: str,
                     window: int) -> tuple[Element, bool]:
    """(the response's Collection for a DAV folder, whether it says anything beyond "unchanged")."""
    klass = element.text_of("Class")
    key = element.text_of("SyncKey")
    if key is None:
        return collection_status(collection_id, PROTOCOL_ERROR, key, klass), True
    if klass is not None and klass != folder.klass.name:
        return collection_status(collection_id, PROTOCOL_ERROR, key, klass), True
    try:
        options = parse_options(element.find("Options"), call.version)
    except ItemError as exc:
        raise EasError(PROTOCOL_ERROR, str(exc)) from None
    states, user, device = call.ctx.state, call.user.address, call.device.device_id
    if key == "0":
        new_key = first_key()
        # Supported (sent with the first key only) names the properties the device carries; the others it
        # leaves out of every Change and they must be kept ("ghosted", MS-ASCMD 2.2.3.168).
        supported = element.find("Supported")
        state = CollectionState(ghosted=[c.name for c in supported.children][:200] if supported is not None else [])
        await states.put_sync_state(user, device, collection_id, new_key, state.dump(), keep=KEEP_STATES)
        return collection_status(collection_id, OK, new_key, klass), True
    blob = await states.get_sync_state(user, device, collection_id, key) if valid_key(key) else None
    if blob is None:
        return collection_status(collection_id, INVALID_KEY, "0", klass), True
    state = CollectionState.load(blob)
    store = await store_for(call, folder.klass)
    options_element = element.find("Options")
    if options_element is not None and (wanted := options_element.text_of("FilterType")) is not None:
        if not wanted.isdigit() or int(wanted) > 8:
            raise EasError(PROTOCOL_ERROR, "FilterType must be a number from 0 to 8")
        state.filter_type = int(wanted)
    commands = element.find("Commands")
    get_changes = element.find("GetChanges")
    wants_changes = get_changes is None or (get_changes.text or "1") != "0"

    responses: list[Element] = []
    if commands is not None:
        responses = await _client_commands(call, store, folder, collection_id, commands, state, options)
    items: list[Element] = []
    more = False
    if wants_changes:
        items, more = await _server_changes(call, store, folder, collection_id, state, window, options)
    if not items and not responses and not more and commands is None:
        await states.put_sync_state(user, device, collection_id, key, state.dump(), keep=KEEP_STATES)
        return collection_status(collection_id, OK, key, klass), False
    new_key = next_key(key)
    await states.put_sync_state(user, device, collection_id, new_key, state.dump(), keep=KEEP_STATES)
    if commands is not None:
        await call.services.push.changed(user, folder.key)  # the user's other devices, any node
    return collection_answer(collection_id, OK, new_key, klass, more, items, responses), True


def held_back(folder: PimFolder, state: CollectionState, text: str) -> bool:
    """Whether the device's filter keeps an object from it that the server's query let through: a task
    another client completed with STATUS or PERCENT-COMPLETE alone, under "incomplete tasks only"."""
    if folder.klass.name != "Tasks" or state.filter_type != INCOMPLETE_TASKS:
        return False
    from ..task_item import incomplete
    try:
        return not incomplete(text)
    except ItemError:
        return False


async def _server_changes(call: EasCall, store, folder: PimFolder, collection_id: str, state: CollectionState,
                          window: int, options: BodyOptions) -> tuple[list[Element], bool]:
    found = look(state, await current_etags(store, folder, state.filter_type))
    out: list[Element] = []
    for item in found.gone[:window]:
        out.append(Element(NS, "Delete", [Element(NS, "ServerId", text=server_id(collection_id, item))]))
        del state.items[item]
    wanted = [i for i in found.changed + found.owed][:max(0, window - len(out))]
    if wanted:
        hrefs = [state.items[i][0] for i in wanted]
        fetched = {o.href: o for o in await store.fetch_objects(folder.url, hrefs)}
        converter = folder.klass.converter()
        for item in wanted:
            href, sent = state.items[item]
            obj = fetched.get(href)
            if obj is None:  # gone between the listing and the read: the next look sends its Delete
                continue
            try:
                data = converter.to_application_data(_text(obj), call.version, options, **_extra(call, folder.klass))
            except ItemError as exc:
                log.warning("object not convertible", extra={"event": "eas-item", "user": call.user.address,
                                                              "href": href, "error": str(exc)[:200]})
                if sent is None:
                    del state.items[item]  # never sent, and it cannot be: the device is owed nothing
                else:
                    state.items[item][1] = obj.etag or ""
                continue
            if sent is None and held_back(folder, state, _text(obj)):
                state.items[item][1] = "!" + (obj.etag or "")  # not for this device unless it changes
                continue
            kind = "Add" if sent is None else "Change"
            out.append(Element(NS, kind, [Element(NS, "ServerId", text=server_id(collection_id, item)), data]))
            state.items[item][1] = obj.etag or ""
    return out, found.count > min(len(found.gone), window) + len(wanted)


async def _client_commands(call: EasCall, store, folder: PimFolder, collection_id: str, commands: Element,
                           state: CollectionState, options: BodyOptions) -> list[Element]:
    converter = folder.klass.converter()
    extra = _extra(call, folder.klass)
    wins = call.ctx.config.activesync.client_wins_conflicts
    responses: list[Element] = []
    for command in commands.children:
        sid = command.text_of("ServerId") or ""
        item = item_of(sid, collection_id)
        # 16.x: a Change or Delete of one occurrence of a recurring calendar item.
        instance = command.text_of("InstanceId", "AirSyncBase") if folder.klass.name == "Calendar" else None
        if command.name == "Delete" and instance is not None:
            responses.extend(await _delete_instance(call, store, folder, sid, item, state, instance))
            continue
        if command.name == "Add":
            responses.append(await _add(call, store, folder, collection_id, command, state, converter, extra))
        elif command.name == "Change":
            if item is None or item not in state.items:
                responses.append(_response("Change", sid, NOT_FOUND))
                continue
            href, sent = state.items[item]
            [obj] = await store.fetch_objects(folder.url, [href]) or [None]
            if obj is None:
                responses.append(_response("Change", sid, NOT_FOUND))
                continue
            if not wins and sent is not None and obj.etag != sent:
                continue  # changed on the server too: the server's version goes to the device as a Change
            data = command.find("ApplicationData") or Element(NS, "ApplicationData")
            try:
                more = _ghosted(call, folder.klass, state)
                if instance is not None:
                    more["instance_id"] = instance
                text = converter.from_application_data(data, call.version, _text(obj), **extra, **more)
                text = await _schedule(call, folder, _text(obj), text) or text
                state.items[item][1] = await store.replace_object(href, text, obj.etag) or ""
            except ItemError as exc:
                log.info("device item refused", extra={"event": "eas-item", "user": call.user.address,
                                                       "error": str(exc)[:200]})
                responses.append(_response("Change", sid, CONVERSION_ERROR))
            except Conflict:
                continue  # changed between our read and write: the next look sends the server's version
            except NotFound:
                responses.append(_response("Change", sid, NOT_FOUND))
        elif command.name == "Delete":
            if item is None or item not in state.items:
                continue  # gone already: nothing to undo
            href, _ = state.items.pop(item)
            if folder.klass.name == "Calendar" and call.version_tuple >= (16, 0):
                for obj in await store.fetch_objects(folder.url, [href]):
                    await _schedule(call, folder, _text(obj), None)
            await store.delete_object(href)
        elif command.name == "Fetch":
            responses.append(await _fetch(call, store, folder, collection_id, sid, item, state, options,
                                          converter))
        else:
            raise EasError(PROTOCOL_ERROR, f"unknown Sync command {command.name}")
    return responses


def _with_uid(text: str, uid: str) -> str:
    """An iCalendar object with every component's UID set to ``uid``."""
    import icalendar
    cal = icalendar.Calendar.from_ical(text)
    for component in cal.subcomponents:
        if component.name in ("VEVENT", "VTODO", "VJOURNAL"):
            component.pop("UID", None)
            component.add("UID", uid)
    return cal.to_ical().decode("utf-8")


async def _schedule(call: EasCall, folder: PimFolder, old: str | None, new: str | None,
                    once: str | None = None) -> str | None:
    """Send the iMIP mails a 16.x phone's change to a meeting it organizes calls for; the text to store
    instead of ``new`` (its SEQUENCE, its ORGANIZER), or None. ``once`` names a change (an Add's ClientId)
    whose mails must go out only once, even when the device repeats the request."""
    if folder.klass.name != "Calendar" or call.version_tuple < (16, 0):
        return None
    from ..scheduling import plan
    me = {call.user.address.lower(), *(a.lower() for a in call.user.aliases)}
    try:
        text, mails = plan(old, new, me, call.user.display_name)
    except ItemError:
        return None
    if once is not None and mails:
        claim = f"{call.user.address}\x1f{call.device.device_id}\x1f{once}"
        if await call.ctx.state.kv_get(_INVITED_NS, claim) is not None:
            return text
        await call.ctx.state.kv_set(_INVITED_NS, claim, b"1", ttl=_INVITED_TTL)
    from ..compose import Outgoing
    from .composemail import submit
    for mail in mails:
        try:
            await submit(call, "Sync", Outgoing(call.user.address, mail.recipients, mail.message, mail.message),
                         save=False, claim=None)
        except EasError as exc:
            log.warning("meeting mail not sent", extra={"event": "eas-meeting", "user": call.user.address,
                                                         "error": exc.message[:200]})
    return text


async def _delete_instance(call: EasCall, store, folder: PimFolder, sid: str, item: str | None,
                           state: CollectionState, instance: str) -> list[Element]:
    """A 16.x Delete of one occurrence: the series gets an EXDATE (and its attendees a new version)."""
    from ..calendar_item import delete_instance
    href = state.href_of(item) if item is not None else None
    found = await store.fetch_objects(folder.url, [href]) if href else []
    if not found:
        return [_response("Delete", sid, NOT_FOUND)]
    try:
        text = delete_instance(found[0].ical, instance)
        text = await _schedule(call, folder, found[0].ical, text) or text
        state.items[item][1] = await store.replace_object(href, text, found[0].etag) or ""
    except ItemError:
        return [_response("Delete", sid, CONVERSION_ERROR)]
    except (Conflict, NotFound):
        return []  # changed or gone meanwhile: the next look tells the device
    return []


async def _add(call: EasCall, store, folder: PimFolder, collection_id: str, command: Element,
               state: CollectionState, converter, extra: dict) -> Element:
    client_id = command.text_of("ClientId") or ""
    data = command.find("ApplicationData")
    if not client_id or data is None:
        return _response("Add", "", PROTOCOL_ERROR, client_id)
    try:
        text = converter.from_application_data(data, call.version, None, **extra)
    except ItemError as exc:
        log.info("device item refused", extra={"event": "eas-item", "user": call.user.address,
                                               "error": str(exc)[:200]})
        return _response("Add", "", CONVERSION_ERROR, client_id)
    own_uid = data.find("UID", "Calendar") is not None or data.find("ClientUid", "Calendar") is not None
    uid = None if own_uid else client_uid(call.user.address, call.device.device_id, collection_id, client_id)
    if uid is not None and folder.klass.role == "caldav":
        text, uid = _with_uid(text, uid), None  # the invitations below must carry the UID that is stored
    text = await _schedule(call, folder, None, text, once=f"{collection_id}\x1f{client_id}") or text
    if folder.klass.role == "carddav":
        obj = await store.put_contact(folder.url, text, uid)
    else:
        obj = await store.put_event(folder.url, text, uid)
    item = state.id_of(obj.href) or state.new_id(obj.href)
    state.items[item][1] = obj.etag or ""
    answer = _response("Add", server_id(collection_id, item), OK, client_id)
    if folder.klass.name == "Calendar" and call.version_tuple >= (16, 0):
        # 16.x: the device learns the UID the server gave its new item (MS-ASCAL 2.2.2.46).
        if (uid_line := re.search(r"^UID:(.+?)\r?$", text, re.MULTILINE)) is not None:
            answer.children.append(Element(NS, "ApplicationData", [Element("Calendar", "UID",
                                                                            text=uid_line.group(1))]))
    return answer


async def _fetch(call: EasCall, store, folder: PimFolder, collection_id: str, sid: str, item: str | None,
                 state: CollectionState, options: BodyOptions, converter) -> Element:
    href = state.href_of(item) if item is not None else None
    objects = await store.fetch_objects(folder.url, [href]) if href else []
    if not objects:
        return _response("Fetch", sid, NOT_FOUND)
    try:
        data = converter.to_application_data(_text(objects[0]), call.version, options, **_extra(call, folder.klass))
    except ItemError:
        return _response("Fetch", sid, CONVERSION_ERROR)
    return Element(NS, "Fetch", [Element(NS, "ServerId", text=sid), Element(NS, "Status", text=str(OK)), data])


async def pending_count(call: EasCall, klass: PimClass, url: str, blob: bytes) -> int:
    """How many changes a Sync from the state ``blob`` would bring now (GetItemEstimate, Ping)."""
    state = CollectionState.load(blob)
    store = await store_for(call, klass)
    return look(state, await current_etags(store, PimFolder(klass, url, ""), state.filter_type)).count


async def fetch_item(call: EasCall, klass: PimClass, url: str, collection_id: str, sid: str,
                     options: BodyOptions) -> Element | None:
    """The ApplicationData of one item the device was sent (ItemOperations Fetch), None when there is none;
    ItemError when it cannot be converted."""
    item = item_of(sid, collection_id)
    latest = await call.ctx.state.latest_sync_state(call.user.address, call.device.device_id, collection_id)
    href = CollectionState.load(latest.blob).href_of(item) if latest is not None and item is not None else None
    if href is None:
        return None
    store = await store_for(call, klass)
    found = await store.fetch_objects(url, [href])
    if not found:
        return None
    return klass.converter().to_application_data(_text(found[0]), call.version, options, **_extra(call, klass))


async def move_item(call: EasCall, source: tuple[PimClass, str], source_id: str, sid: str,
                    dest: tuple[PimClass, str], dest_id: str) -> str | None:
    """Move one contact, event, task or note to another collection of the same class (MoveItems): written
    there, then deleted here; both of the device's states learn it, so neither side is sent back. The new
    ServerId, or None when the item is not the device's or the classes differ."""
    if source[0] is not dest[0]:
        return None
    states, user, device = call.ctx.state, call.user.address, call.device.device_id
    latest = await states.latest_sync_state(user, device, source_id)
    item = item_of(sid, source_id)
    state = CollectionState.load(latest.blob) if latest is not None else None
    href = state.href_of(item) if state is not None and item is not None else None
    if href is None:
        return None
    store = await store_for(call, source[0])
    found = await store.fetch_objects(source[1], [href])
    if not found:
        return None
    text = _text(found[0])
    name = href.rstrip("/").rsplit("/", 1)[-1]
    target = dest[1].rstrip("/") + "/" + name
    try:
        etag = await store.replace_object(target, text, None)
    except Conflict:  # moved there already (a retry whose answer was lost): that copy is ours
        etag = next((o.etag or "" for o in await store.fetch_objects(dest[1], [target])), "")
    await store.delete_object(href)
    del state.items[item]
    await states.put_sync_state(user, device, source_id, latest.sync_key, state.dump(), keep=KEEP_STATES)
    new_sid = ""
    if (dest_latest := await states.latest_sync_state(user, device, dest_id)) is not None:
        dest_state = CollectionState.load(dest_latest.blob)
        new_item = dest_state.id_of(target) or dest_state.new_id(target)
        dest_state.items[new_item][1] = etag
        await states.put_sync_state(user, device, dest_id, dest_latest.sync_key, dest_state.dump(),
                                    keep=KEEP_STATES)
        new_sid = server_id(dest_id, new_item)
    for key in (source, dest):
        await call.services.push.changed(user, folder_key(key[0].name, key[1]))
    return new_sid or server_id(dest_id, "0")
