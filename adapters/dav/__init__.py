"""CalDAV and CardDAV adapters: CalendarStore and ContactStore over any DAV server, via the caldav library."""

from .caldav_store import CalDavCalendarStore
from .carddav_store import CardDavContactStore

__all__ = ["CalDavCalendarStore", "CardDavContactStore"]
