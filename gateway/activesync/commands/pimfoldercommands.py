"""FolderCreate, FolderUpdate and FolderDelete for calendar, contact, task and note folders: DAV collections
made (MKCALENDAR taking only the class's object type, or an address book), renamed (PROPPATCH) and removed.

The default folder of a class cannot be renamed or removed, as on Exchange; nor can a collection that
also shows as a folder of another class (one calendar taking events and tasks), since removing it
would take the other folder's items too.
"""

from __future__ import annotations

from adapters.errors import BackendError, NotFound

from ..pimfolders import BY_TYPE, PimFolder, folder_key, folders_of, parse_key
from ..wbxml import Element
from . import EasCall
from .foldersync import NS
from .pimcollection import store_for

OK, EXISTS, SPECIAL, NOT_FOUND, PARENT_NOT_FOUND, SERVER_ERROR = 1, 2, 3, 4, 5, 6


def _status(command: str, status: int) -> Element:
    return Element(NS, command, [Element(NS, "Status", text=str(status))])


async def create(call: EasCall, kind: int, display: str, parent_id: str) -> tuple[Element | None, str, list]:
    """(an error answer, or None with the new ServerId and its hierarchy entry)."""
    klass = BY_TYPE[kind]
    if kind == klass.default_type or parent_id != "0" or not call.ctx.directory.route(call.user, klass.role):
        return _status("FolderCreate", SPECIAL if kind == klass.default_type else SERVER_ERROR), "", []
    store = await store_for(call, klass)
    existing = await (store.list_address_books() if klass.role == "carddav" else store.list_calendars())
    if any(f.name == display for f in folders_of(klass, existing)):
        return _status("FolderCreate", EXISTS), "", []
    if klass.role == "carddav":
        info = await store.create_address_book(display)
    else:
        info = await store.create_calendar(display, (klass.component,))
    key = folder_key(klass.name, info.url)
    ids = await call.services.folders.assign(call.user.address, [key], mail_only=True)
    return None, ids[key], ["0", display, klass.user_type]


async def _folder(call: EasCall, name: str) -> tuple[PimFolder | None, bool]:
    """(the DAV folder a FolderMap key names, whether it may be changed: a user folder of its own)."""
    klass, url = parse_key(name) or (None, "")
    if klass is None:
        return None, False
    store = await store_for(call, klass)
    if klass.role == "carddav":
        found = folders_of(klass, await store.list_address_books())
        shared = False
    else:
        calendars = await store.list_calendars()
        found = folders_of(klass, calendars)
        mine = next((c for c in calendars if c.url == url), None)
        shared = mine is None or not mine.components or len(set(mine.components) & {"VEVENT", "VTODO",
                                                                                    "VJOURNAL"}) > 1
    folder = next((f for f in found if f.url == url), None)
    return folder, folder is not None and not folder.default and not shared


async def update(call: EasCall, name: str, display: str, parent_id: str) -> int:
    folder, changeable = await _folder(call, name)
    if folder is None:
        return NOT_FOUND
    if not changeable or parent_id != "0":
        return SPECIAL
    try:
        await (await store_for(call, folder.klass)).rename_collection(folder.url, display)
    except NotFound:
        return NOT_FOUND
    except BackendError:
        return SERVER_ERROR
    return OK


async def delete(call: EasCall, name: str) -> int:
    folder, changeable = await _folder(call, name)
    if folder is None:
        return NOT_FOUND
    if not changeable:
        return SPECIAL
    try:
        await (await store_for(call, folder.klass)).delete(folder.url)
    except NotFound:
        pass  # gone already: the device's wish is met
    await call.services.folders.assign(call.user.address, [n for n in (await call.services.folders.all(
        call.user.address)) if n != name])
    return OK
