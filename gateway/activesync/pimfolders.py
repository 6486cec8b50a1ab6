"""Calendars, address books, task lists and notes as a device sees them: DAV collections as EAS folders.

Each class lives in DAV collections: contacts in the user's CardDAV address books, calendar items,
tasks and notes in CalDAV calendars taking VEVENT, VTODO or VJOURNAL objects. One collection that
takes all three (Radicale's default) shows as three folders, each syncing only its own object type.
The first collection of each class is the class's default folder (Calendar, Contacts, Tasks, Notes),
the others are user folders of that class. Their ServerIds come from the same FolderMap as the mail
folders', under keys no IMAP mailbox name can have (they start with NUL).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from adapters.interfaces import CalendarInfo

from ..services.pimsync import SEP, folder_key, split_key

__all__ = ["PimClass", "PimFolder", "CLASSES", "BY_TYPE", "folder_key", "parse_key", "is_pim", "folders_of", "SEP"]
DEFAULT_IDS = ("calendar", "contacts")  # the last path segment of the collections the DAV stores make first


@dataclass(frozen=True)
class PimClass:
    """One EAS class kept in DAV: where its objects live and how they are converted."""

    name: str              # AirSync:Class
    role: str              # the user's back end serving it: "caldav" or "carddav"
    component: str | None  # the iCalendar object type, None for vCards
    default_type: int      # FolderHierarchy Type of the class's default folder (MS-ASCMD 2.2.3.186.3)
    user_type: int         # and of its other folders
    module: str            # the converter in gateway.activesync
    since: tuple[int, int] = (2, 5)

    def converter(self) -> ModuleType:
        return importlib.import_module(f"gateway.activesync.{self.module}")


CLASSES: dict[str, PimClass] = {c.name: c for c in (
    PimClass("Calendar", "caldav", "VEVENT", 8, 13, "calendar_item"),
    PimClass("Contacts", "carddav", None, 9, 14, "contact_item"),
    PimClass("Tasks", "caldav", "VTODO", 7, 15, "task_item"),
    PimClass("Notes", "caldav", "VJOURNAL", 10, 17, "note_item", since=(14, 0)),
)}
#: Folder types of each class, for a device's FolderCreate.
BY_TYPE = {t: c for c in CLASSES.values() for t in (c.default_type, c.user_type)}


@dataclass(frozen=True)
class PimFolder:
    """One DAV collection shown as a folder of one class."""

    klass: PimClass
    url: str
    name: str
    default: bool = False

    @property
    def key(self) -> str:
        return folder_key(self.klass.name, self.url)

    @property
    def type(self) -> int:
        return self.klass.default_type if self.default else self.klass.user_type


def parse_key(name: str) -> tuple[PimClass, str] | None:
    """(class, collection URL) of a FolderMap name made by folder_key, None for a mail folder's name."""
    found = split_key(name)
    return (CLASSES[found[0]], found[1]) if found is not None and found[0] in CLASSES else None


def is_pim(name: str) -> bool:
    return name.startswith(SEP)


def folders_of(klass: PimClass, collections: list[CalendarInfo]) -> list[PimFolder]:
    """The folders of ``klass`` among a user's collections (calendars, or address books), the first the
    default one."""
    chosen = [c for c in collections if klass.component is None or not c.components
              or klass.component in c.components]
    # Servers list collections in no fixed order: the default is the one the store makes by default
    # ("calendar", "contacts"), else the first by URL, so it stays the same from one FolderSync to the next.
    chosen.sort(key=lambda c: (c.url.rstrip("/").rsplit("/", 1)[-1] not in DEFAULT_IDS, c.url))
    return [PimFolder(klass, c.url, c.name or klass.name, i == 0) for i, c in enumerate(chosen)]
