"""A message as a device names and receives it: ServerIds ("<folder id>:<uid>"), FileReferences
("<ServerId>:<MIME part>"), and the one way a stored message becomes an item's ApplicationData."""

from __future__ import annotations

from adapters.errors import BackendError, NotFound
from adapters.interfaces import MessageSummary

from ..services.mailsync import internal_date
from .email_item import BodyOptions, email_application_data
from .wbxml import Element


def server_id(folder_id: str, uid: int) -> str:
    return f"{folder_id}:{uid}"


def uid_of(item_id: str, folder_id: str) -> int | None:
    """The UID a ServerId names in ``folder_id``, or None when it names nothing there."""
    head, _, tail = item_id.rpartition(":")
    return int(tail) if head == folder_id and tail.isdigit() and len(tail) < 11 else None


async def fetch_one(store, folder: str, uid: int) -> tuple[MessageSummary, bytes] | None:
    """One whole message with its summary, or None when it is gone (or the store cannot say)."""
    try:
        fetched = await store.fetch_messages(folder, [uid])
    except (NotFound, BackendError):
        return None
    return fetched[0] if fetched else None


def application_data(summary: MessageSummary, raw: bytes, folder_id: str, version: str,
                     options: BodyOptions) -> Element:
    """The AirSync:ApplicationData of a stored message, its attachments named by FileReference.
    Raises ItemError for a message that cannot be converted."""
    item = server_id(folder_id, summary.uid)
    return email_application_data(raw, version=version, options=options, flags=summary.flags,
                                  internal_date=internal_date(summary),
                                  file_reference=lambda part: f"{item}:{part}")
