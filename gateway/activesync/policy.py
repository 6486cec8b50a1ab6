"""The device policy sent by Provision (MS-ASPROV): Exchange 2010's default mailbox policy plus the admin's overrides.

Pure: names and values in, WBXML elements (or the 2.5 WAP provisioning XML) out.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

from .wbxml import Element

#: Every EASProvisionDoc setting, in the order Exchange sends them, with Exchange 2010's default
#: mailbox policy values ("" is an empty element: no limit). The first 12 are all 12.0 knew.
DEFAULTS: dict[str, str] = {
    "DevicePasswordEnabled": "0",
    "AlphanumericDevicePasswordRequired": "0",
    "PasswordRecoveryEnabled": "0",
    "RequireStorageCardEncryption": "0",
    "AttachmentsEnabled": "1",
    "MinDevicePasswordLength": "4",
    "MaxInactivityTimeDeviceLock": "900",
    "MaxDevicePasswordFailedAttempts": "8",
    "MaxAttachmentSize": "",
    "AllowSimpleDevicePassword": "1",
    "DevicePasswordExpiration": "0",
    "DevicePasswordHistory": "0",
    "AllowStorageCard": "1",
    "AllowCamera": "1",
    "RequireDeviceEncryption": "0",
    "AllowUnsignedApplications": "1",
    "AllowUnsignedInstallationPackages": "1",
    "MinDevicePasswordComplexCharacters": "3",
    "AllowWiFi": "1",
    "AllowTextMessaging": "1",
    "AllowPOPIMAPEmail": "1",
    "AllowBluetooth": "2",
    "AllowIrDA": "1",
    "RequireManualSyncWhenRoaming": "0",
    "AllowDesktopSync": "1",
    "MaxCalendarAgeFilter": "0",
    "AllowHTMLEmail": "1",
    "MaxEmailAgeFilter": "0",
    "MaxEmailBodyTruncationSize": "-1",
    "MaxEmailHTMLBodyTruncationSize": "-1",
    "RequireSignedSMIMEMessages": "0",
    "RequireEncryptedSMIMEMessages": "0",
    "RequireSignedSMIMEAlgorithm": "0",
    "RequireEncryptionSMIMEAlgorithm": "0",
    "AllowSMIMEEncryptionAlgorithmNegotiation": "2",
    "AllowSMIMESoftCerts": "1",
    "AllowBrowser": "1",
    "AllowConsumerEmail": "1",
    "AllowRemoteDesktop": "1",
    "AllowInternetSharing": "1",
}
_V12_0 = ("DevicePasswordEnabled", "AlphanumericDevicePasswordRequired", "PasswordRecoveryEnabled",
          "RequireStorageCardEncryption", "AttachmentsEnabled", "MinDevicePasswordLength",
          "MaxInactivityTimeDeviceLock", "MaxDevicePasswordFailedAttempts", "MaxAttachmentSize",
          "AllowSimpleDevicePassword", "DevicePasswordExpiration", "DevicePasswordHistory")
#: Settings that are lists of application names (or hashes), given as lists in the config.
LISTS = {"UnapprovedInROMApplicationList": "ApplicationName", "ApprovedApplicationList": "Hash"}
_BOOLEAN = {n for n, v in DEFAULTS.items() if n.startswith(("Allow", "Require", "DevicePassword", "Alphanumeric",
                                                          "PasswordRecovery", "Attachments"))
            and v in ("0", "1") and n not in ("DevicePasswordExpiration", "DevicePasswordHistory")}
_RANGES = {"AllowBluetooth": (0, 2), "AllowSMIMEEncryptionAlgorithmNegotiation": (0, 2),
           "RequireSignedSMIMEAlgorithm": (0, 1), "RequireEncryptionSMIMEAlgorithm": (0, 4),
           "MaxCalendarAgeFilter": (0, 7), "MaxEmailAgeFilter": (0, 5), "MinDevicePasswordLength": (1, 16),
           "MinDevicePasswordComplexCharacters": (1, 4), "MaxDevicePasswordFailedAttempts": (4, 16),
           "MaxInactivityTimeDeviceLock": (0, 9999), "DevicePasswordExpiration": (0, 730),
           "DevicePasswordHistory": (0, 50), "MaxEmailBodyTruncationSize": (-1, 2**31 - 1),
           "MaxEmailHTMLBodyTruncationSize": (-1, 2**31 - 1), "MaxAttachmentSize": (0, 2**31 - 1)}


def check_overrides(values: dict[str, Any]) -> str | None:
    """Why the [activesync] policy table is wrong, or None."""
    for name, value in values.items():
        if name in LISTS:
            if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                return f"{name}: must be a list of non-empty strings"
            continue
        if name not in DEFAULTS:
            return f"{name}: not an MS-ASPROV policy setting"
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int):
            return f"{name}: must be a number"
        low, high = (0, 1) if name in _BOOLEAN else _RANGES.get(name, (0, 2**31 - 1))
        if not low <= value <= high:
            return f"{name}: must be between {low} and {high}"
    return None


def settings(overrides: dict[str, Any]) -> dict[str, str | list[str]]:
    """The effective policy: defaults with the overrides applied, values as the wire spells them."""
    out: dict[str, str | list[str]] = dict(DEFAULTS)
    for name, value in overrides.items():
        out[name] = list(value) if name in LISTS else str(int(value))
    for name in LISTS:
        out.setdefault(name, [])
    return out


def provision_doc(overrides: dict[str, Any], version: str) -> Element:
    """The Provision:EASProvisionDoc for a 12.0 or later device."""
    values = settings(overrides)
    names = _V12_0 if version == "12.0" else tuple(values)
    children = []
    for name in names:
        value = values[name]
        if isinstance(value, list):
            children.append(Element("Provision", name, [Element("Provision", LISTS[name], text=v) for v in value]))
        else:
            children.append(Element("Provision", name, text=value or None))
    return Element("Provision", "EASProvisionDoc", children)


def wap_provisioning_xml(overrides: dict[str, Any]) -> str:
    """The 2.5 policy (MS-WAP-Provisioning-XML): the Windows Mobile security policy characteristic."""
    values = settings(overrides)
    pin = values["DevicePasswordEnabled"] == "1"
    params = {
        # Windows Mobile policy ids (MS-ASPROV 2.2.2.56): 4131 password required (0 = required),
        # 4133 unlock from desktop, then the Exchange password parameters.
        "4131": "0" if pin else "1",
        "4133": "1",
    }
    rows = "".join(f"<parm name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items())
    registry = ""
    if pin:
        pw = {"AEFrequencyType": "1" if values["MaxInactivityTimeDeviceLock"] not in ("", "0") else "0",
              "AEFrequencyValue": str(max(1, int(values["MaxInactivityTimeDeviceLock"] or 0) // 60)),
              "DeviceWipeThreshold": values["MaxDevicePasswordFailedAttempts"] or "-1",
              "CodewordFrequency": "5",
              "MinimumPasswordLength": values["MinDevicePasswordLength"] or "4",
              "PasswordComplexity": "0" if values["AlphanumericDevicePasswordRequired"] == "1" else "2"}
        registry = ("<characteristic type=\"Registry\"><characteristic type="
                    "\"HKLM\\Comm\\Security\\Policy\\LASSD\\AE\\{50C13377-C66D-400C-889E-C316FC4AB374}\">"
                    + "".join(f"<parm name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in pw.items())
                    + "</characteristic></characteristic>")
    return ("<wap-provisioningdoc><characteristic type=\"SecurityPolicy\">" + rows + "</characteristic>"
            + registry + "</wap-provisioningdoc>")


def digest(overrides: dict[str, Any]) -> str:
    """A short name of the effective policy, to tell when it changed after a device acknowledged it."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(settings(overrides), sort_keys=True).encode()).hexdigest()[:16]
