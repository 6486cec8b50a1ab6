"""Contracts between the gateway's services and the back-end adapters, as typing.Protocol classes.

Every method is async and raises only the errors of ``adapters.errors``.
Adapters are built per user session from a ``Credentials`` and a back-end
endpoint; a ``Directory`` answers who a user is and where their data lives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user's login as the back end knows it; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Folder:
    """A mail folder: its full name on the back end and what it is for."""

    name: str
    delimiter: str
    special_use: str | None = None  # RFC 6154 attribute, e.g. "\\Sent"
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """Counters of one folder (RFC 3501 STATUS plus RFC 7162 HIGHESTMODSEQ)."""

    messages: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int | None = None


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """One message as a folder listing sees it."""

    uid: int
    size: int
    flags: tuple[str, ...]
    internaldate: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as a message list shows it (RFC 3501 ENVELOPE, decoded), with its place in the folder."""

    seq: int
    uid: int
    flags: tuple[str, ...]
    internaldate: str | None
    size: int
    subject: str
    sender_name: str
    sender_address: str
    date: str | None  # the Date header as sent


@dataclass(frozen=True, slots=True)
class CalendarInfo:
    """One calendar collection."""

    url: str
    name: str
    ctag: str | None = None
    components: tuple[str, ...] = ()  # calendars: the object types it takes (VEVENT, VTODO...); () any


@dataclass(frozen=True, slots=True)
class CalendarObject:
    """One calendar resource (an iCalendar object with its href and ETag)."""

    href: str
    etag: str | None
    ical: str


@dataclass(frozen=True, slots=True)
class ContactObject:
    """One contact resource (a vCard with its href and ETag)."""

    href: str
    etag: str | None
    vcard: str


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the directory knows of a user."""

    address: str
    login: str
    display_name: str
    domain: str
    backends: dict[str, str]  # role ("imap", "caldav", "carddav", "smtp", "ews") -> back-end name
    aliases: tuple[str, ...] = ()


@runtime_checkable
class MailStore(Protocol):
    """A user's mailbox: folders and messages (IMAP semantics)."""

    async def start(self, stack: AsyncExitStack) -> None: ...
    async def list_folders(self) -> list[Folder]: ...
    async def status(self, folder: str) -> FolderStatus: ...
    async def list_messages(self, folder: str) -> list[MessageSummary]: ...
    async def fetch_message(self, folder: str, uid: int) -> bytes: ...
    def stream_message(self, folder: str, uid: int, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """The raw message in chunks of at most chunk_size, never held whole; NotFound if it is gone."""
        ...
    async def append(self, folder: str, message: bytes, flags: Sequence[str] = (),
                     when: dt.datetime | None = None) -> int | None: ...
    async def set_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str],
                        add: bool = True) -> None: ...
    async def expunge(self, folder: str, uids: Sequence[int]) -> None: ...
    async def create_folder(self, name: str) -> None: ...
    @property
    def capabilities(self) -> frozenset[str]: ...


@runtime_checkable
class CalendarStore(Protocol):
    """A user's calendars (CalDAV semantics)."""

    async def start(self, stack: AsyncExitStack) -> None: ...
    async def list_calendars(self) -> list[CalendarInfo]: ...
    async def create_calendar(self, name: str) -> CalendarInfo: ...
    async def put_event(self, calendar_url: str, ical: str, uid: str | None = None) -> CalendarObject: ...
    async def events_between(self, calendar_url: str, start: dt.datetime, end: dt.datetime,
                             expand: bool = False) -> list[CalendarObject]: ...
    async def delete(self, href: str) -> None: ...
    async def object_etags(self, calendar_url: str, component: str | None = None, since: dt.datetime | None = None,
                           open_only: bool = False) -> dict[str, str]: ...
    async def fetch_objects(self, calendar_url: str, hrefs: list[str]) -> list[CalendarObject]: ...
    async def replace_object(self, href: str, ical: str, etag: str | None) -> str: ...
    async def delete_object(self, href: str, etag: str | None = None) -> None: ...


@runtime_checkable
class ContactStore(Protocol):
    """A user's address books (CardDAV semantics)."""

    async def start(self, stack: AsyncExitStack) -> None: ...
    async def list_address_books(self) -> list[CalendarInfo]: ...
    async def put_contact(self, book_url: str, vcard: str, uid: str | None = None) -> ContactObject: ...
    async def contacts(self, book_url: str) -> list[ContactObject]: ...
    async def delete(self, href: str) -> None: ...
    async def object_etags(self, book_url: str) -> dict[str, str]: ...
    async def fetch_objects(self, book_url: str, hrefs: list[str]) -> list[ContactObject]: ...
    async def replace_object(self, href: str, vcard: str, etag: str | None) -> str: ...
    async def delete_object(self, href: str, etag: str | None = None) -> None: ...


@runtime_checkable
class Submission(Protocol):
    """Sending mail on a user's behalf."""

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None: ...


@runtime_checkable
class Directory(Protocol):
    """Who users are and which back ends hold their data."""

    async def lookup(self, address_or_login: str) -> UserRecord | None: ...
    def users(self) -> AsyncIterator[UserRecord]: ...


__all__ = [
    "Credentials", "Folder", "FolderStatus", "MessageSummary", "CalendarInfo", "CalendarObject",
    "ContactObject", "UserRecord", "MailStore", "CalendarStore", "ContactStore", "Submission",
    "Directory",
]
