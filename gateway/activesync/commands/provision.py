"""Provision (MS-ASPROV): the two-step policy key exchange, device information, and remote wipe.

Step one: the device asks for the policy and gets it with a temporary key.
Step two: it acknowledges that key and gets the final one, which it sends on
every later request (X-MS-PolicyKey). A wipe an administrator asked for is
answered instead of the policy; the device's acknowledgement marks it wiped.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets

from ...state import DeviceStatus
from ..devices import with_information
from ..policy import provision_doc, wap_provisioning_xml
from ..wbxml import Element
from . import EasCall, EasError

log = logging.getLogger("casgate.activesync")
NS = "Provision"
EAS_POLICY, WAP_POLICY = "MS-EAS-Provisioning-WBXML", "MS-WAP-Provisioning-XML"
# Provision status (MS-ASPROV 2.2.2.54.1) and Policy status (2.2.2.54.2).
OK, PROTOCOL_ERROR, SERVER_ERROR = 1, 2, 3
POLICY_OK, POLICY_NONE, POLICY_UNKNOWN_TYPE, POLICY_CORRUPT, POLICY_WRONG_KEY = 1, 2, 3, 4, 5
def _new_key() -> int:
    return secrets.randbelow(2**32 - 2) + 1  # a non-zero 32-bit key: 0 means "none"


def _settings_status() -> Element:
    return Element("Settings", "DeviceInformation", [Element("Settings", "Status", text="1")])


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "Provision":
        raise EasError(PROTOCOL_ERROR, "expected a Provision request")
    devices = call.services.devices
    device = call.device
    out: list[Element] = []
    info = body.find("DeviceInformation", "Settings")
    if info is not None:
        device = await devices.save(with_information(device, info))
        out.append(_settings_status())

    for wipe_tag in ("RemoteWipe", "AccountOnlyRemoteWipe"):
        ack = body.find(wipe_tag)
        if ack is not None:
            # The device reports the wipe it was told to do (Status 1: done, 2: failed).
            status = ack.text_of("Status", default="1")
            if device.status == DeviceStatus.WIPE_PENDING:
                device = await devices.save(dataclasses.replace(
                    device, status=DeviceStatus.WIPED if status == "1" else device.status,
                    info={**device.info, "wipe_ack": status}))
                log.warning("device acknowledged remote wipe", extra={
                    "event": "eas-wipe", "user": device.user, "device": device.device_id, "status": status})
            return Element(NS, "Provision", [*out, Element(NS, "Status", text=str(OK))])

    if device.status == DeviceStatus.WIPE_PENDING:
        account_only = bool(device.info.get("account_only_wipe")) and call.version_tuple >= (16, 1)
        return Element(NS, "Provision", [*out, Element(NS, "Status", text=str(OK)),
                                         Element(NS, "AccountOnlyRemoteWipe" if account_only else "RemoteWipe")])

    policies = body.find("Policies")
    policy = policies.find("Policy") if policies is not None else None
    if policy is None:
        raise EasError(PROTOCOL_ERROR, "Provision without Policies/Policy")
    policy_type = policy.text_of("PolicyType", default="")
    wanted = WAP_POLICY if call.version_tuple < (12, 0) else EAS_POLICY
    if policy_type != wanted:
        return _answer(out, policy_type, POLICY_UNKNOWN_TYPE)
    acked = policy.text_of("PolicyKey")
    overrides = call.ctx.config.activesync.policy
    if acked is None:
        # Step one: the policy, with a temporary key to acknowledge.
        temporary = _new_key()
        device = await devices.save(dataclasses.replace(device, info={**device.info, "pending_key": temporary}))
        if policy_type == WAP_POLICY:
            data = Element(NS, "Data", text=wap_provisioning_xml(overrides))
        else:
            data = Element(NS, "Data", [provision_doc(overrides, call.version)])
        return _answer(out, policy_type, POLICY_OK, temporary, data)
    # Step two: the acknowledgement of the temporary key.
    pending = device.info.get("pending_key")
    if not acked.isdigit() or pending is None or int(acked) != pending:
        return _answer(out, policy_type, POLICY_WRONG_KEY)
    final = _new_key()
    info_after = {k: v for k, v in device.info.items() if k != "pending_key"}
    info_after["policy_status"] = policy.text_of("Status", default="1")
    info_after["policy_digest"] = call.services.policy_digest
    await devices.save(dataclasses.replace(device, policy_key=final, info=info_after))
    log.info("device provisioned", extra={"event": "eas-provision", "user": device.user,
                                          "device": device.device_id, "policy_status": info_after["policy_status"]})
    return _answer(out, policy_type, POLICY_OK, final)


def _answer(before: list[Element], policy_type: str, status: int, key: int | None = None,
            data: Element | None = None) -> Element:
    policy = [Element(NS, "PolicyType", text=policy_type), Element(NS, "Status", text=str(status))]
    if key is not None:
        policy.append(Element(NS, "PolicyKey", text=str(key)))
    if data is not None:
        policy.append(data)
    return Element(NS, "Provision", [*before, Element(NS, "Status", text=str(OK)),
                                     Element(NS, "Policies", [Element(NS, "Policy", policy)])])
