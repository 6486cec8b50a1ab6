"""Device partnerships: recorded on every request, cached briefly, and the provisioning and access checks."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Callable

from adapters.interfaces import UserRecord

from ..config import DeviceRule
from ..state import Device, DeviceStatus, StateStore
from .request import EasRequest
from .wbxml import Element

#: Seconds by which a partnership's recorded last sync may lag behind the truth.
LAST_SYNC_GRAIN = 60.0
#: MS-ASCMD 2.2.2 common status codes used here.
BLOCKED, REMOTE_WIPE, NOT_PROVISIONED, POLICY_REFRESH, INVALID_POLICY_KEY = 129, 140, 142, 143, 144
# The statuses access rules decide; a wipe in progress or done is never undone by a rule.
_RULED = (DeviceStatus.ALLOWED, DeviceStatus.BLOCKED, DeviceStatus.QUARANTINED)


#: Settings:DeviceInformation fields (sent with Provision or Settings) and the names they are kept under.
DEVICE_INFO_FIELDS = {"Model": "model", "OS": "os", "IMEI": "imei", "FriendlyName": "friendly_name",
                      "OSLanguage": "os_language", "PhoneNumber": "phone_number", "UserAgent": "user_agent",
                      "MobileOperator": "mobile_operator", "EnableOutboundSMS": "outbound_sms"}


def with_information(device: Device, information: Element) -> Device:
    """The partnership with what a Settings:DeviceInformation element says of the device."""
    fields = information.find("Set", "Settings")
    values = {DEVICE_INFO_FIELDS[c.name]: (c.text or "")[:200] for c in (fields.children if fields else [])
              if c.ns == "Settings" and c.name in DEVICE_INFO_FIELDS}
    return dataclasses.replace(device, model=values.get("model", device.model), os=values.get("os", device.os),
                               info={**device.info, **values})


def provisioning_status(device: Device, policy_key: int | None, policy_digest: str = "") -> int | None:
    """Why this request must provision first, as an MS-ASCMD status, or None when its policy key is current.

    ``policy_digest`` names the policy in force now; a device that acknowledged another one (the
    administrator changed [activesync] policy since) is told to fetch it again (143).
    """
    if device.status in (DeviceStatus.WIPE_PENDING,):
        return REMOTE_WIPE
    if not device.policy_key or not policy_key:
        return NOT_PROVISIONED
    if policy_key != device.policy_key:
        return INVALID_POLICY_KEY
    if policy_digest and device.info.get("policy_digest", policy_digest) != policy_digest:
        return POLICY_REFRESH
    return None


_BY_ACCESS = {"allow": DeviceStatus.ALLOWED, "block": DeviceStatus.BLOCKED,
              "quarantine": DeviceStatus.QUARANTINED}


def ruled_status(rules: list[DeviceRule], default: str, device_type: str, user_agent: str) -> DeviceStatus:
    """The access the configured rules give a device (the first matching rule, else the default)."""
    for rule in rules:
        if (not rule.device_type or fnmatch.fnmatchcase(device_type.lower(), rule.device_type.lower())) and \
                (not rule.user_agent or fnmatch.fnmatchcase(user_agent.lower(), rule.user_agent.lower())):
            return _BY_ACCESS[rule.access]
    return _BY_ACCESS[default]


class DeviceRegistry:
    def __init__(self, state: StateStore, rules: list[DeviceRule] | None = None, default_access: str = "allow",
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.rules = rules or []
        self.default_access = default_access
        self.clock = clock

    async def seen(self, user: UserRecord, req: EasRequest, user_agent: str) -> Device:
        """The partnership of this request's device as stored now (an administrator's wipe or block takes
        effect at once), created on first contact. It is written back only when something in it changed or
        its last_sync is more than a minute old, so a busy device costs one read per request."""
        now = self.clock()
        stored = await self.state.get_device(user.address, req.device_id)
        if stored is None:
            device = Device(user=user.address, device_id=req.device_id, device_type=req.device_type,
                            user_agent=user_agent[:200], first_seen=now, last_sync=now)
        else:
            device = dataclasses.replace(stored, device_type=req.device_type or stored.device_type,
                                         user_agent=user_agent[:200] or stored.user_agent)
        if device.status in _RULED and not device.info.get("access_by_admin"):
            device = dataclasses.replace(device, status=ruled_status(self.rules, self.default_access,
                                                                     device.device_type, device.user_agent))
        if stored is None or device != stored or now - stored.last_sync > LAST_SYNC_GRAIN:
            device = await self.save(dataclasses.replace(device, last_sync=now))
        return device

    async def save(self, device: Device) -> Device:
        return await self.state.upsert_device(device)

    @staticmethod
    def access(device: Device) -> int | None:
        """A status refusing the device (blocked or quarantined by an administrator), or None."""
        if device.status in (DeviceStatus.BLOCKED, DeviceStatus.QUARANTINED):
            return BLOCKED
        return None
