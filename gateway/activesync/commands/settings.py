"""Settings (MS-ASCMD 2.2.1.18): out-of-office get/set (a Sieve vacation rule through ManageSieve, where the
back end has one), DeviceInformation, UserInformation, and the DevicePassword recovery password."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from adapters.errors import AuthenticationFailed, BackendUnavailable, InvalidData, PermissionDenied, QuotaExceeded

from ..devices import with_information
from ..wbxml import Element
from . import EasCall, EasError, instant

log = logging.getLogger("casgate.activesync")
NS = "Settings"
# Settings status (MS-ASCMD 2.2.3.177.16).
OK, PROTOCOL_ERROR, ACCESS_DENIED, UNAVAILABLE, INVALID, CONFLICT, DENIED_BY_POLICY = 1, 2, 3, 4, 5, 6, 7
_AUDIENCES = ("AppliesToInternal", "AppliesToExternalKnown", "AppliesToExternalUnknown")


def _status(name: str, status: int, *children: Element) -> Element:
    return Element(NS, name, [Element(NS, "Status", text=str(status)), *children])


def _time(value: dt.datetime | None) -> str:
    return (value or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "Settings":
        raise EasError(PROTOCOL_ERROR, "expected a Settings request")
    out = []
    for part in body.children[:20]:
        if part.name == "Oof":
            out.append(await _oof(call, part))
        elif part.name == "DeviceInformation":
            out.append(await _device_information(call, part))
        elif part.name == "UserInformation":
            out.append(_user_information(call))
        elif part.name == "DevicePassword":
            # The recovery password a device escrows (PasswordRecoveryEnabled); kept with the partnership.
            password = (part.find("Set") or Element(NS, "Set")).text_of("Password", default="")
            device = call.device
            await call.services.devices.save(dataclasses.replace(
                device, info={**device.info, "recovery_password_set": bool(password)}))
            out.append(_status("DevicePassword", OK))
        elif part.name == "RightsManagementInformation":
            out.append(_status("RightsManagementInformation", DENIED_BY_POLICY))  # IRM is not offered
        else:
            raise EasError(PROTOCOL_ERROR, f"unknown Settings part {part.name}")
    return Element(NS, "Settings", [Element(NS, "Status", text=str(OK)), *out])


async def _device_information(call: EasCall, part: Element) -> Element:
    await call.services.devices.save(with_information(call.device, part))
    return _status("DeviceInformation", OK)


def _user_information(call: EasCall) -> Element:
    user = call.user
    addresses = [user.address, *(a for a in user.aliases if a != user.address)]
    if call.version_tuple >= (14, 1):
        emails = Element(NS, "EmailAddresses", [Element(NS, "PrimarySmtpAddress", text=user.address),
                                                *(Element(NS, "SMTPAddress", text=a) for a in addresses)])
        account = Element(NS, "Account", [Element(NS, "UserDisplayName", text=user.display_name or user.address),
                                          emails])
        get = Element(NS, "Get", [Element(NS, "Accounts", [account])])
    else:
        get = Element(NS, "Get", [Element(NS, "EmailAddresses", [Element(NS, "SMTPAddress", text=a)
                                                                  for a in addresses])])
    return _status("UserInformation", OK, get)


async def _oof(call: EasCall, part: Element) -> Element:
    backend = call.ctx.directory.route(call.user, "imap")
    store = call.ctx.backends.oof(backend, call.creds, [call.user.address, *call.user.aliases],
                                  call.client_ip) if backend else None
    if store is None:
        return _status("Oof", DENIED_BY_POLICY)  # the administrator has not given the back end a ManageSieve
    from adapters.sieve import OofSettings
    try:
        if part.find("Get") is not None:
            settings = await store.get()
            return _status("Oof", OK, _oof_get(settings))
        request = part.find("Set")
        if request is None:
            return _status("Oof", PROTOCOL_ERROR)
        state_text = request.text_of("OofState", default="0")
        if state_text not in ("0", "1", "2"):
            return _status("Oof", INVALID)
        messages = {m.children[0].name: m for m in request.findall("OofMessage") if m.children}
        start = instant(request.text_of("StartTime"), INVALID)
        end = instant(request.text_of("EndTime"), INVALID)
        if state_text == "2" and (start is None or end is None or end <= start):
            return _status("Oof", CONFLICT)

        def text(audience: str) -> tuple[bool, str]:
            m = messages.get(audience)
            if m is None:
                return False, ""
            return m.text_of("Enabled") == "1", m.text_of("ReplyMessage", default="") or ""

        internal_on, internal = text("AppliesToInternal")
        known_on, known = text("AppliesToExternalKnown")
        unknown_on, unknown = text("AppliesToExternalUnknown")
        audience = "all" if unknown_on else "known" if known_on else "none"
        await store.set(OofSettings(int(state_text), start if state_text == "2" else None,
                                    end if state_text == "2" else None, internal if internal_on else "",
                                    unknown or known, audience))
        return _status("Oof", OK)
    except (PermissionDenied, AuthenticationFailed, QuotaExceeded):
        return _status("Oof", ACCESS_DENIED)
    except InvalidData:
        return _status("Oof", INVALID)
    except BackendUnavailable:
        return _status("Oof", UNAVAILABLE)


def _oof_get(settings) -> Element:
    children = [Element(NS, "OofState", text=str(settings.state))]
    if settings.state == 2:
        children += [Element(NS, "StartTime", text=_time(settings.start)),
                     Element(NS, "EndTime", text=_time(settings.end))]
    external = settings.external_message or settings.internal_message
    for audience, enabled, message in (
            ("AppliesToInternal", settings.state != 0, settings.internal_message or external),
            ("AppliesToExternalKnown", settings.state != 0 and settings.external_audience in ("known", "all"),
             external),
            ("AppliesToExternalUnknown", settings.state != 0 and settings.external_audience == "all", external)):
        children.append(Element(NS, "OofMessage", [
            Element(NS, audience), Element(NS, "Enabled", text="1" if enabled else "0"),
            Element(NS, "ReplyMessage", text=message), Element(NS, "BodyType", text="Text")]))
    return Element(NS, "Get", children)
