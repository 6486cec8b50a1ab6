"""ActiveSync commands: one module each, registered here with what the HTTP shell needs to know of them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from adapters.interfaces import Credentials, UserRecord

from ...context import GatewayContext
from ...state import Device
from ..devices import DeviceRegistry
from ..folders import FolderMap
from ...services.gal import Gal
from ...services.mailsessions import MailSessions
from ...services.pushhub import PushHub
from ..request import EasRequest
from ..wbxml import Element


class EasError(Exception):
    """Ends a command with a Status in its own response element, or with a bare HTTP status."""

    def __init__(self, status: int, message: str = "", http_status: int | None = None) -> None:
        super().__init__(message or f"status {status}")
        self.status = status
        self.message = message or f"status {status}"
        self.http_status = http_status


@dataclass
class EasServices:
    """What every command shares on one node."""

    ctx: GatewayContext
    devices: DeviceRegistry
    mail: MailSessions
    folders: FolderMap
    push: PushHub
    policy_digest: str = ""
    gal: Gal | None = None  # None: the directory's users only

    @classmethod
    def build(cls, ctx: GatewayContext) -> EasServices:
        cfg = ctx.config.activesync
        from ..policy import digest
        mail = MailSessions(ctx.backends, cfg.mail_idle_close)
        push = PushHub(ctx.backends, mail, ctx.bus, cfg.push_poll_interval, cfg.push_idle, cfg.push_notify)
        from .ping import held_count
        ctx.metrics.eas_pings_held.set_function(held_count)
        return cls(ctx, DeviceRegistry(ctx.state, cfg.device_rules, cfg.default_access), mail, FolderMap(ctx.state),
                   push, digest(cfg.policy), gal=Gal.from_config(ctx.config, ctx.directory))

    async def close(self) -> None:
        from .ping import release_all
        release_all()
        self.push.close()
        await self.mail.close()
        if self.gal is not None:
            await self.gal.close()


@dataclass
class EasCall:
    """One authenticated request from one device."""

    services: EasServices
    request: EasRequest
    user: UserRecord
    creds: Credentials
    device: Device
    version: str
    body: Element | None
    raw: bytes
    client_ip: str

    @property
    def version_tuple(self) -> tuple[int, int]:
        return version_tuple(self.version)

    @property
    def ctx(self) -> GatewayContext:
        return self.services.ctx

    def mailbox(self):
        """The user's mail store, logged in (kept open between requests)."""
        backend = self.ctx.directory.route(self.user, "imap")
        return self.services.mail.store(self.user, backend, self.creds, self.client_ip)


def version_tuple(version: str) -> tuple[int, int]:
    """"14.1" as (14, 1), for comparing protocol versions."""
    major, _, minor = version.partition(".")
    return int(major), int(minor or 0)


def instant(text: str | None, status: int) -> dt.datetime | None:
    """An EAS date-time (``2030-01-02T03:04:05.000Z``) as an aware datetime (naive means UTC); None when
    absent; EasError with ``status`` when malformed."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EasError(status, "bad date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Command:
    run: Callable[[EasCall], Awaitable[Element | None]]
    needs_policy: bool = True   # refused until the device has provisioned (when provisioning is required)
    wbxml_body: bool | None = True  # None: WBXML from 14.0 on, raw MIME before (SendMail...), as call.raw


#: Root element (code page, name) of each command's response, where a Status can be put.
_ROOTS = {
    "Sync": ("AirSync", "Sync"), "FolderSync": ("FolderHierarchy", "FolderSync"),
    "FolderCreate": ("FolderHierarchy", "FolderCreate"), "FolderUpdate": ("FolderHierarchy", "FolderUpdate"),
    "FolderDelete": ("FolderHierarchy", "FolderDelete"), "Provision": ("Provision", "Provision"),
    "GetItemEstimate": ("GetItemEstimate", "GetItemEstimate"), "ItemOperations": ("ItemOperations",
                                                                                  "ItemOperations"),
    "MoveItems": ("Move", "MoveItems"), "Ping": ("Ping", "Ping"), "Search": ("Search", "Search"),
    "Settings": ("Settings", "Settings"), "SendMail": ("ComposeMail", "SendMail"),
    "SmartReply": ("ComposeMail", "SmartReply"), "SmartForward": ("ComposeMail", "SmartForward"),
    "MeetingResponse": ("MeetingResponse", "MeetingResponse"), "ValidateCert": ("ValidateCert", "ValidateCert"),
    "ResolveRecipients": ("ResolveRecipients", "ResolveRecipients"), "Find": ("Find", "Find"),
}


def root_of(command: str) -> tuple[str, str]:
    return _ROOTS.get(command, ("AirSync", "Sync"))


def _registry() -> dict[str, Command]:
    from . import (composemail, find, foldercommands, foldersync, gal, getitemestimate, itemoperations,
                   meetingresponse, moveitems, ping, provision, search, settings, sync, validatecert)
    return {
        "Provision": Command(provision.run, needs_policy=False),
        "FolderSync": Command(foldersync.run),
        "Sync": Command(sync.run),
        "GetItemEstimate": Command(getitemestimate.run),
        "MoveItems": Command(moveitems.run),
        "ItemOperations": Command(itemoperations.run),
        "FolderCreate": Command(foldercommands.create),
        "FolderUpdate": Command(foldercommands.update),
        "FolderDelete": Command(foldercommands.delete),
        "Settings": Command(settings.run),
        "ValidateCert": Command(validatecert.run),
        "Search": Command(search.run),
        "Ping": Command(ping.run),
        "Find": Command(find.run),
        "MeetingResponse": Command(meetingresponse.run),
        "ResolveRecipients": Command(gal.resolve_recipients),
        "SendMail": Command(composemail.send_mail, wbxml_body=None),
        "SmartReply": Command(composemail.smart_reply, wbxml_body=None),
        "SmartForward": Command(composemail.smart_forward, wbxml_body=None),
    }


COMMANDS: dict[str, Command] = _registry()
