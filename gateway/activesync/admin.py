"""What `casgate devices` does to ActiveSync partnerships in the state store (Exchange: Get-/Clear-/Remove-
ActiveSyncDevice, Set-CASMailbox -ActiveSyncBlockedDeviceIDs / -ActiveSyncAllowedDeviceIDs)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from ..state import Device, DeviceStatus, StateStore

class DeviceAdminError(LookupError):
    """The partnership asked for does not exist."""


def _when(epoch: float) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(device: Device) -> dict:
    """One partnership as the command shows it (as Exchange's Get-ActiveSyncDeviceStatistics does, with the
    policy key the device acknowledged; a key still being exchanged is left out)."""
    info = {k: v for k, v in device.info.items() if k != "pending_key"}
    return {"user": device.user, "device_id": device.device_id, "device_type": device.device_type,
            "model": device.model, "os": device.os, "user_agent": device.user_agent, "status": str(device.status),
            "provisioned": bool(device.policy_key), "policy_key": device.policy_key or None,
            "first_seen": _when(device.first_seen),
            "last_sync": _when(device.last_sync), "info": info}


def table(devices: list[Device]) -> str:
    rows = [("USER", "DEVICE ID", "TYPE", "MODEL", "STATUS", "LAST SYNC")]
    rows += [(d.user, d.device_id, d.device_type, d.model or "-", str(d.status), _when(d.last_sync))
             for d in devices]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


async def act(store: StateStore, action: str, users: list[str], device_id: str | None,
              account_only: bool = False) -> str:
    """Carry out one action and return what to print."""
    if action == "list":
        found = [d for u in users for d in await store.list_devices(u)]
        return table(found) if found else "no devices\n"
    assert device_id is not None and len(users) == 1
    user = users[0]
    device = await store.get_device(user, device_id)
    if device is None:
        raise DeviceAdminError(f"{user} has no device {device_id}")
    if action == "show":
        return json.dumps(describe(device), indent=2, sort_keys=True) + "\n"
    if action == "remove":
        await store.delete_device(user, device_id)
        return f"removed {device_id} of {user} and its sync state\n"
    if action == "wipe":
        info = {**device.info, "account_only_wipe": account_only, "wipe_requested": dt.datetime.now(
            dt.timezone.utc).isoformat(timespec="seconds")}
        await store.upsert_device(dataclasses.replace(device, status=DeviceStatus.WIPE_PENDING, info=info))
        what = "the account's data on" if account_only else "all data on"
        return f"{device_id} of {user}: a remote wipe of {what} it is pending; it happens at its next request\n"
    status = DeviceStatus.BLOCKED if action == "block" else DeviceStatus.ALLOWED
    # An administrator's decision outranks the access rules from now on.
    await store.upsert_device(dataclasses.replace(device, status=status,
                                                  info={**device.info, "access_by_admin": action}))
    return f"{device_id} of {user} is now {status}\n"
