"""The typed configuration schema: one TOML file, loaded once into frozen dataclasses.

Every key has a type, a default and help text (``casgate config-help`` prints
them).  A bad file raises ``ConfigError`` naming the key; the CLI turns that
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """The configuration is unusable; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def _opt(default: Any, help: str, *, check: typing.Callable[[Any], str | None] | None = None,
         factory: bool = False) -> Any:
    meta = {"help": help, "check": check}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number from 0 to 65535 (0 disables)"


def _positive(v: int | float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: int | float) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> typing.Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"
    return check


@dataclass(frozen=True)
class ServerConfig:
    listen: str = _opt("127.0.0.1", "Address all listeners bind to.")
    https_port: int = _opt(8443, "HTTPS port (ActiveSync, EWS, autodiscover, web app, /metrics).", check=_port)
    imap_port: int = _opt(1143, "IMAP port with STARTTLS; 0 disables.", check=_port)
    imaps_port: int = _opt(1993, "IMAP port with implicit TLS; 0 disables.", check=_port)
    pop3_port: int = _opt(1110, "POP3 port with STLS; 0 disables.", check=_port)
    pop3s_port: int = _opt(1995, "POP3 port with implicit TLS; 0 disables.", check=_port)
    public_url: str = _opt("", "URL clients use to reach the gateway (autodiscover answers with it); "
                               "empty means https://<listen>:<https_port>.")
    shutdown_grace: float = _opt(10.0, "Seconds held connections get to finish on shutdown.", check=_positive)
    ssl_read_buffer: int = _opt(16384, "Bytes of TLS read buffer per connection under stock asyncio "
                                       "(uvloop manages its own).", check=_positive)


@dataclass(frozen=True)
class SniCertificate:
    hostnames: list[str] = _opt(list, "Server names (SNI) this certificate answers for.", factory=True)
    cert: str = _opt("", "PEM certificate chain file.")
    key: str = _opt("", "PEM private key file.")


@dataclass(frozen=True)
class TlsConfig:
    cert: str = _opt("certs/server.pem", "Default PEM certificate chain (used when no SNI entry matches).")
    key: str = _opt("certs/server.key", "Private key of the default certificate.")
    ca_file: str = _opt("", "CA bundle used to verify back ends' certificates; empty uses the system store.")
    sni: list[SniCertificate] = _opt(list, "Extra certificates chosen by the client's server name.", factory=True)


@dataclass(frozen=True)
class StateConfig:
    backend: str = _opt("sqlite", "Where device, sync and session state lives: sqlite (one node) or "
                                  "postgresql (several nodes).", check=_one_of("sqlite", "postgresql"))
    path: str = _opt("casgate.db", "SQLite database file (backend = sqlite).")
    dsn: str = _opt("", "PostgreSQL connection string (backend = postgresql).")
    schema: str = _opt("", "PostgreSQL schema to keep the tables in (empty: the search path's first).")
    bus: str = _opt("local", "How change notices reach the other gateway nodes: local (one node) or redis.",
                    check=_one_of("local", "redis"))
    redis_url: str = _opt("redis://127.0.0.1:6379/0", "Redis server for bus = redis.")


@dataclass(frozen=True)
class AuthConfig:
    cache_ttl: int = _opt(300, "Seconds a successful back-end login is remembered (as a keyed hash).",
                          check=_positive)
    max_failures: int = _opt(5, "Failed logins per user or per client address before back-off starts.",
                             check=_positive)
    failure_window: int = _opt(900, "Seconds over which failures are counted.", check=_positive)
    backoff_base: float = _opt(2.0, "First back-off in seconds; it doubles with every further failure.",
                               check=_positive)
    backoff_max: float = _opt(300.0, "Longest back-off in seconds.", check=_positive)
    timeout: float = _opt(10.0, "Seconds to wait for the back end to answer a login.", check=_positive)


@dataclass(frozen=True)
class DirectoryConfig:
    users_file: str = _opt("users.toml", "TOML file listing users ([[user]] tables with address, "
                                         "name, login, aliases and per-user back-end overrides).")


def _ldap_url(v: str) -> str | None:
    if not v:
        return None
    parts = urlsplit(v)
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        return "has a bad port"
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        return "must be ldaps://host[:port] or ldap://host[:port] (no path)"
    return None


def _ldap_filter(v: str) -> str | None:
    ok = "{text}" in v and v.startswith("(") and v.endswith(")") and v.count("(") == v.count(")")
    return None if ok else "must be an LDAP filter in parentheses containing {text}, e.g. (mail={text}*)"


def _gal_attributes(v: dict[str, str]) -> str | None:
    from adapters.ldap import DEFAULT_ATTRIBUTES
    bad = [k for k in v if k not in DEFAULT_ATTRIBUTES]
    return f"{bad[0]}: must be one of {', '.join(DEFAULT_ATTRIBUTES)}" if bad else None


@dataclass(frozen=True)
class GalConfig:
    """The global address list phones search (Search GAL, ResolveRecipients, Find): the directory's users, plus
    an LDAP directory and a shared CardDAV address book when configured."""

    cache_ttl: float = _opt(60.0, "Seconds a source's answer to one query is reused.", check=_positive)
    timeout: float = _opt(5.0, "Seconds one source (LDAP, CardDAV) may take; a slower or failing source is "
                               "left out of the answer (and not asked again for cache_ttl seconds).",
                          check=_positive)
    ldap_url: str = _opt("", "LDAP server: ldaps://host:636 or ldap://host:389 (StartTLS unless ldap_tls = "
                             "none); empty: no LDAP.", check=_ldap_url)
    ldap_tls: str = _opt("auto", "auto (from the URL), implicit, starttls or none.",
                         check=_one_of("auto", "implicit", "starttls", "none"))
    ldap_ca_file: str = _opt("", "CA bundle for the LDAP server's certificate; empty uses tls.ca_file (or the "
                                 "system store).")
    ldap_bind_dn: str = _opt("", "DN the gateway binds as to read the directory; empty binds anonymously.")
    ldap_password: str = _opt("", "Password of ldap_bind_dn (prefer ldap_password_file).")
    ldap_password_file: str = _opt("", "File holding the password of ldap_bind_dn (first line).")
    ldap_base: str = _opt("", "Search base, e.g. ou=people,dc=example,dc=com.")
    ldap_filter: str = _opt("(&(objectClass=inetOrgPerson)(|(cn={text}*)(givenName={text}*)(sn={text}*)"
                            "(displayName={text}*)(mail={text}*)(uid={text}*)))",
                            "Search filter; {text} is replaced by what the user typed, escaped (RFC 4515).",
                            check=_ldap_filter)
    ldap_attributes: dict[str, str] = _opt(dict, "LDAP attribute per GAL field, over the inetOrgPerson defaults "
                                                 "(display_name = \"cn\", email = \"mail\", picture = "
                                                 "\"jpegPhoto\", certificates = \"userCertificate;binary\"...).",
                                           factory=True, check=_gal_attributes)
    ldap_size_limit: int = _opt(500, "Most entries one LDAP search asks for.", check=_positive)
    carddav_backend: str = _opt("", "CardDAV back end holding a shared address book for the GAL, read with "
                                    "its service_login; empty: none.")
    carddav_book: str = _opt("", "That address book: a URL, or a path relative to the back end's url "
                                 "(e.g. \"shared/gal/\").")

    def __repr__(self) -> str:  # keep the LDAP password out of logs and tracebacks
        return f"GalConfig(ldap_url={self.ldap_url!r}, carddav_backend={self.carddav_backend!r})"

    def ldap_secret(self, base: "Config") -> str:
        """The LDAP bind password, read from ldap_password_file when that is set."""
        if self.ldap_password and self.ldap_password_file:
            raise ConfigError("gal.ldap_password_file", "set ldap_password or ldap_password_file, not both")
        return _secret(base, self.ldap_password, self.ldap_password_file, "gal.ldap_password_file")


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt("info", "Log level.", check=_one_of("debug", "info", "warning", "error"))
    format: str = _opt("json", "json (one object per line) or text.", check=_one_of("json", "text"))


def _networks(v: list[str]) -> str | None:
    import ipaddress
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an address or network (CIDR) such as 10.0.0.0/8"
    return None


@dataclass(frozen=True)
class MailFrontConfig:
    """The keys [imap] and [pop3] share."""

    allow_plaintext_loopback: bool = _opt(False, "Accept logins without TLS from loopback clients (127.0.0.0/8, "
                                                 "::1), e.g. a local webmail or benchmark; otherwise plain "
                                                 "connections must start TLS before logging in.")
    preauth_timeout: float = _opt(60.0, "Seconds a connection may stay silent before it has logged in.",
                                  check=_positive)
    idle_timeout: float = _opt(1800.0, "Seconds a logged-in session may stay silent (RFC 3501: at least 30 "
                                       "minutes for IMAP; RFC 1939: at least 10 for POP3).", check=_positive)
    max_connections: int = _opt(10000, "Connections accepted on this protocol's ports together; 0 for no limit.",
                                check=_non_negative)
    max_connections_per_ip: int = _opt(50, "Connections from one client address; 0 for no limit.",
                                       check=_non_negative)
    max_line: int = _opt(8192, "Longest command line in octets (not counting literals).", check=_positive)
    max_literal: int = _opt(8192, "Largest literal before login (LOGIN and AUTHENTICATE data), in octets.",
                            check=_positive)
    max_commands_before_login: int = _opt(50, "Commands a connection may send before it logs in.",
                                          check=_positive)
    max_auth_attempts: int = _opt(3, "Failed logins on one connection before it is closed.", check=_positive)
    proxy_protocol_from: list[str] = _opt(list, "Load balancers (addresses or CIDR networks) whose connections "
                                                "start with a PROXY protocol header (v1 or v2) naming the real "
                                                "client; connections from elsewhere must not send one.",
                                          check=_networks, factory=True)


@dataclass(frozen=True)
class ImapFrontConfig(MailFrontConfig):
    """IMAP4 front end (Exchange: Set-ImapSettings)."""

    backend_spares: int = _opt(1, "Connections to each IMAP back end kept opened, secured and greeted ahead of "
                                  "the next login, so that login skips the connect and the TLS handshake; one "
                                  "is opened each time one is taken (0: never).", check=_non_negative)
    backend_spare_age: float = _opt(20.0, "Seconds an unused spare connection is kept before it is logged out "
                                          "(keep it below the back end's own pre-login timeout; Dovecot's is "
                                          "60 s or more). A quiet gateway holds none.", check=_positive)


@dataclass(frozen=True)
class Pop3FrontConfig(MailFrontConfig):
    """POP3 front end (Exchange: Set-PopSettings)."""

    idle_timeout: float = _opt(600.0, "Seconds a logged-in session may stay silent (RFC 1939: at least 10 "
                                      "minutes).", check=_positive)
    max_line: int = _opt(512, "Longest command line in octets (RFC 2449 allows 255).", check=_positive)
    folder: str = _opt("INBOX", "Mailbox POP3 clients see as their maildrop.")
    read_ahead: int = _opt(262144, "After a RETR, fetch the next message from the store while the client reads "
                                   "this one, if it is at most this many octets (0: never). Costs that much "
                                   "memory per session at most.", check=_non_negative)


EAS_VERSIONS = ("2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1")


def _eas_versions(v: list[str]) -> str | None:
    bad = [x for x in v if x not in EAS_VERSIONS]
    if bad:
        return f"{bad[0]}: must be one of {', '.join(EAS_VERSIONS)}"
    return "must name at least one version" if not v else None


def _policy(v: dict[str, Any]) -> str | None:
    from .activesync.policy import check_overrides
    return check_overrides(v)


DEVICE_ACCESS = ("allow", "block", "quarantine")


@dataclass(frozen=True)
class DeviceRule:
    """One device access rule (Exchange: New-ActiveSyncDeviceAccessRule); the first that matches decides."""

    device_type: str = _opt("", "Shell pattern (*, ?) matched against the DeviceType, ignoring case; empty "
                                "matches any.")
    user_agent: str = _opt("", "Shell pattern matched against the User-Agent header, ignoring case; empty "
                               "matches any.")
    access: str = _opt("allow", "What a matching device gets: allow, block or quarantine (quarantined "
                                "devices are refused until an administrator allows them).",
                       check=_one_of(*DEVICE_ACCESS))


@dataclass(frozen=True)
class OwaConfig:
    """[owa]: the web app at /owa/."""

    enabled: bool = _opt(True, "Serve the web app at /owa/ on the HTTPS listener.")
    session_idle: float = _opt(1800.0, "Seconds a web session lives after its last request.", check=_positive)
    session_lifetime: float = _opt(12 * 3600.0, "Seconds a web session lives at most, however busy.",
                                   check=_positive)


@dataclass(frozen=True)
class ActiveSyncConfig:
    """Exchange ActiveSync at /Microsoft-Server-ActiveSync (Exchange: Set-ActiveSyncMailboxPolicy and friends)."""

    versions: list[str] = _opt(lambda: list(EAS_VERSIONS), "Protocol versions offered to devices (MS-ASProtocol"
                                                           "Versions); any of " + ", ".join(EAS_VERSIONS) + ".",
                               factory=True, check=_eas_versions)
    require_provisioning: bool = _opt(True, "Devices must fetch and acknowledge the policy (Provision) before "
                                            "they may sync; false lets devices that never provision sync too.")
    policy: dict[str, Any] = _opt(dict, "Policy settings sent to devices, by their MS-ASPROV names, over the "
                                        "defaults of Exchange 2010's default mailbox policy, e.g. "
                                        "{ DevicePasswordEnabled = 1, MinDevicePasswordLength = 6 }.",
                                  factory=True, check=_policy)
    max_request_bytes: int = _opt(10 * 1024 * 1024, "Largest request body accepted, in octets (Exchange's "
                                                    "default is 10 MB); larger ones get HTTP 413.",
                                  check=_positive)
    max_window_size: int = _opt(512, "Most items one Sync response carries for one folder (a device asking "
                                     "for more gets this many).", check=_positive)
    client_wins_conflicts: bool = _opt(False, "When a device changes an item that also changed on the server "
                                              "since the device last synced, keep the device's change "
                                              "(Exchange's default is that the server wins).")
    device_rules: list[DeviceRule] = _opt(list, "Device access rules, tried in order, e.g. [[activesync."
                                                "device_rules]] device_type = \"Android*\" access = \"block\". "
                                                "An administrator's own allow or block of one device "
                                                "(casgate devices) outranks them.", factory=True)
    default_access: str = _opt("allow", "Access of a device no rule matches: allow, block or quarantine.",
                               check=_one_of(*DEVICE_ACCESS))
    ping_min_heartbeat: int = _opt(60, "Shortest HeartbeatInterval a Ping or a waiting Sync may ask for, in "
                                       "seconds (shorter ones are answered with this bound).", check=_positive)
    ping_max_heartbeat: int = _opt(3540, "Longest HeartbeatInterval, in seconds (Exchange's default).",
                                   check=_positive)
    ping_max_folders: int = _opt(300, "Most folders one Ping may watch.", check=_positive)
    ping_check_interval: float = _opt(30.0, "Seconds between a held Ping's own looks at its folders (the "
                                            "push hub tells it of INBOX changes at once, of new mail in "
                                            "other folders at once with NOTIFY, and of the rest every "
                                            "push_poll_interval).", check=_positive)
    push_poll_interval: float = _opt(15.0, "Seconds between the push hub's looks (STATUS) at a user's watched "
                                           "folders other than INBOX, which it watches with NOTIFY or IDLE.",
                                     check=_positive)
    push_idle: bool = _opt(True, "Keep a connection per waiting user that reports changes (IMAP NOTIFY, or IDLE "
                                 "on INBOX; see push_notify). Set it to false when Dovecot's "
                                 "push notifications reach the gateway (dovecot_push_from): they report every "
                                 "change at once, and each waiting user then costs one back-end connection "
                                 "less (the INBOX is still looked at every push_poll_interval).")
    push_notify: bool = _opt(True, "With push_idle: where the IMAP back end offers NOTIFY (RFC 5465; Dovecot does), "
                                   "that connection reports every change in INBOX and new or removed messages in "
                                   "every other folder at once (flag changes there are still polled); where it "
                                   "does not, it IDLEs on INBOX.")
    mail_idle_close: float = _opt(120.0, "Seconds a user's back-end mail connection stays open after their "
                                         "last request, so the next sync skips the login.", check=_positive)
    dovecot_push_from: list[str] = _opt(list, "Addresses or networks (CIDR) from which Dovecot's push_notification "
                                              "plugin may POST to /casgate/dovecot-push, which wakes held Pings "
                                              "at once instead of after IDLE's half-second delay, e.g. "
                                              "[\"127.0.0.1\", \"10.0.0.5\"]. Empty: the endpoint does not exist.",
                                        factory=True, check=_networks)
    dovecot_push_secret: str = _opt("", "Shared secret Dovecot must send with each notification (Bearer token, "
                                        "or the password of Basic authentication); empty: the sender's "
                                        "address alone decides (prefer dovecot_push_secret_file).")
    dovecot_push_secret_file: str = _opt("", "File holding dovecot_push_secret (first line).")

    def dovecot_push_secret_value(self, base: "Config") -> str:
        """The notification secret, read from dovecot_push_secret_file when that is set."""
        return _secret(base, self.dovecot_push_secret, self.dovecot_push_secret_file,
                       "activesync.dovecot_push_secret_file")


ACCESS_LEVELS = ("none", "availability", "limited")
DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def _hhmm(v: str) -> str | None:
    h, _, m = v.partition(":")
    # isascii: str.isdigit alone admits digits such as "²" that int() refuses.
    ok = (h + m).isascii() and h.isdigit() and m.isdigit() and len(m) == 2 and 0 <= int(h) <= 24 and 0 <= int(m) < 60
    return None if ok and (int(h) < 24 or int(m) == 0) else "must be a time of day as HH:MM"


def _days(v: list[str]) -> str | None:
    return None if v and all(d in DAYS for d in v) else f"must be a non-empty list of {', '.join(DAYS)}"


def _access_map(v: dict[str, str]) -> str | None:
    bad = [k for k, level in v.items() if level not in ACCESS_LEVELS]
    return f"{bad[0]}: must be one of {', '.join(ACCESS_LEVELS)}" if bad else None


def _zone(v: str) -> str | None:
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: e.g. a name too long for a file
        return "must be an IANA time zone name such as Europe/Berlin"
    return None


@dataclass(frozen=True)
class AvailabilityConfig:
    default_access: str = _opt("availability", "What others see of a user's calendar: none, availability "
                                               "(free/busy only) or limited (free/busy with subject and "
                                               "location). Private items never show details.",
                               check=_one_of(*ACCESS_LEVELS))
    user_access: dict[str, str] = _opt(dict, "Per-user overrides of default_access, by address.",
                                       factory=True, check=_access_map)
    max_mailboxes: int = _opt(100, "Mailboxes allowed in one free/busy request.", check=_positive)
    max_days: int = _opt(42, "Longest time window of one free/busy request, in days.", check=_positive)
    timeout: float = _opt(10.0, "Seconds one mailbox's calendar may take before it is answered with an "
                                "error (the others are still answered).", check=_positive)
    cache_ttl: float = _opt(60.0, "Seconds a mailbox's free/busy is reused while its calendars' ctags are "
                                  "unchanged.", check=_positive)
    revalidate_after: float = _opt(15.0, "A cached answer younger than this is served without asking the calendar "
                                         "server whether it changed; older ones are revalidated by ctag.",
                                   check=_non_negative)
    working_days: list[str] = _opt(lambda: ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
                                   "Default working days.", factory=True, check=_days)
    working_start: str = _opt("08:00", "Default start of the working day.", check=_hhmm)
    working_end: str = _opt("17:00", "Default end of the working day.", check=_hhmm)
    time_zone: str = _opt("UTC", "Time zone of the default working hours (IANA name).", check=_zone)


TLS_MODES = ("implicit", "starttls", "none")
PUBLISHED_PROTOCOLS = ("imap", "pop3", "smtp")


def _host_name(v: str) -> str | None:
    import ipaddress
    bad = not v.isascii() or any(c.isspace() or c in "/@?#[]" for c in v)
    if ":" in v and not bad:  # only an IPv6 address may contain colons; a port is not part of a host name
        try:
            ipaddress.IPv6Address(v)
        except ValueError:
            bad = True
    return "must be a bare host name such as mail.example.com (no scheme, port or path)" if bad else None


def _culture(v: str) -> str | None:
    lang, colon, region = v.partition(":")
    ok = colon and lang.isascii() and region.isascii() and lang.isalpha() and region.isalpha()
    return None if ok and 2 <= len(lang) <= 3 and 2 <= len(region) <= 3 else 'must look like "en:us"'


def _protocols(v: list[str]) -> str | None:
    bad = [p for p in v if p not in PUBLISHED_PROTOCOLS]
    return f"{bad[0]}: must be one of {', '.join(PUBLISHED_PROTOCOLS)}" if bad else None


@dataclass(frozen=True)
class AutodiscoverConfig:
    http_port: int = _opt(0, "Plain-HTTP port that answers GET /autodiscover/autodiscover.xml (and .svc) with a "
                             "redirect to the HTTPS URL (Exchange's HTTP redirect method); 0 disables.", check=_port)
    public_host: str = _opt("", "Host name clients are told (EWS, ActiveSync and web URLs, mail servers); empty "
                                "means the host of server.public_url, else server.listen. The HTTPS port and "
                                "path stay those of server.public_url (or server.https_port).", check=_host_name)
    protocols: list[str] = _opt(lambda: list(PUBLISHED_PROTOCOLS), "Mail protocols published besides EWS and "
                                "ActiveSync: any of imap, pop3, smtp.", factory=True, check=_protocols)
    imap_host: str = _opt("", "IMAP host clients are told; empty means public_host.", check=_host_name)
    imap_port: int = _opt(0, "IMAP port clients are told; 0 means the gateway's own port for imap_tls "
                             "(server.imaps_port for implicit, server.imap_port otherwise); if that is 0 too, "
                             "IMAP is not published.", check=_port)
    imap_tls: str = _opt("implicit", "How IMAP clients start TLS: implicit, starttls or none.",
                         check=_one_of(*TLS_MODES))
    pop3_host: str = _opt("", "POP3 host clients are told; empty means public_host.", check=_host_name)
    pop3_port: int = _opt(0, "POP3 port clients are told; 0 means the gateway's own port for pop3_tls "
                             "(server.pop3s_port for implicit, server.pop3_port otherwise).", check=_port)
    pop3_tls: str = _opt("implicit", "How POP3 clients start TLS: implicit, starttls or none.",
                         check=_one_of(*TLS_MODES))
    smtp_host: str = _opt("", "SMTP submission host clients are told; empty means the host of the user's (or "
                              "domain's) smtp back end.", check=_host_name)
    smtp_port: int = _opt(0, "SMTP submission port; 0 means the port of that smtp back end.", check=_port)
    smtp_tls: str = _opt("auto", "How SMTP clients start TLS: auto (as the smtp back end does), implicit, "
                                 "starttls or none.", check=_one_of("auto", *TLS_MODES))
    culture: str = _opt("en:us", "Culture named in ActiveSync autodiscover answers (language:region).",
                        check=_culture)
    sign_mobileconfig: bool = _opt(False, "Sign /mobileconfig profiles (CMS) with tls.cert and tls.key, so "
                                          "Apple devices show them as verified.")


BACKEND_TYPES = ("imap", "caldav", "carddav", "smtp", "ews")
_SCHEMES = {
    "imap": ("imap", "imaps"),
    "smtp": ("smtp", "smtps", "submission"),
    "caldav": ("http", "https"),
    "carddav": ("http", "https"),
    "ews": ("http", "https"),
}


def _host_port(v: str) -> str | None:
    if not v:
        return None
    host, colon, port = v.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or _host_name(host.strip("[]")):
        return "must be host:port, e.g. mail.example.com:4190"
    return None


@dataclass(frozen=True)
class BackendConfig:
    type: str = _opt("imap", "Kind of back end.", check=_one_of(*BACKEND_TYPES))
    url: str = _opt("", "Where it is: imaps://host:993, imap://host:143 (STARTTLS unless tls = none), "
                        "smtp://host:587, smtps://host:465, http(s)://host/path for CalDAV, CardDAV, EWS.")
    tls: str = _opt("auto", "auto (from the URL), implicit, starttls or none.",
                    check=_one_of("auto", "implicit", "starttls", "none"))
    verify: bool = _opt(True, "Verify the back end's certificate.")
    ca_file: str = _opt("", "CA bundle for this back end (overrides tls.ca_file).")
    timeout: float = _opt(10.0, "Seconds to wait for a connection or an answer.", check=_positive)
    service_login: str = _opt("", "Account the gateway uses for organisation-wide reads (free/busy of other "
                                  "users' calendars); it needs read access to every calendar.")
    service_password: str = _opt("", "Password of service_login (prefer service_password_file).")
    service_password_file: str = _opt("", "File holding the password of service_login (first line).")
    master_login: str = _opt("", "IMAP: master account the gateway logs in with on behalf of users (SASL PLAIN "
                                 "authorization identity, e.g. Dovecot master users); empty uses each user's "
                                 "own password.")
    master_password: str = _opt("", "Password of master_login (prefer master_password_file).")
    master_password_file: str = _opt("", "File holding the password of master_login (first line).")
    managesieve: str = _opt("", "IMAP: host:port of the ManageSieve server (RFC 5804, usually port 4190, "
                                "STARTTLS unless tls = none) that keeps users' Sieve scripts; out-of-office "
                                "from phones is set there as a vacation rule. Empty: out-of-office is not "
                                "offered.", check=_host_port)
    home_template: str = _opt("{login}/", "CalDAV/CardDAV: where a user's collections live, relative to url; "
                                          "{login} and {address} are replaced (Radicale: \"{login}/\").")

    def __repr__(self) -> str:  # keep the service password out of logs and tracebacks
        return f"BackendConfig(type={self.type!r}, url={self.url!r})"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.port:
            return parts.port
        return {"imap": 143, "imaps": 993, "smtp": 587, "submission": 587, "smtps": 465,
                "http": 80, "https": 443}.get(parts.scheme, 0)

    def service_secret(self, base: "Config") -> str:
        """The service account's password, read from service_password_file when that is set."""
        return _secret(base, self.service_password, self.service_password_file, "service_password_file")

    def master_secret(self, base: "Config") -> str:
        """The master account's password, read from master_password_file when that is set."""
        return _secret(base, self.master_password, self.master_password_file, "master_password_file")

    @property
    def tls_mode(self) -> str:
        if self.tls != "auto":
            return self.tls
        scheme = urlsplit(self.url).scheme
        if scheme in ("imaps", "smtps", "https"):
            return "implicit"
        if scheme == "http":
            return "none"
        return "starttls"


def _secret(base: "Config", inline: str, file: str, key: str) -> str:
    if file:
        path = base.path(file)
        try:
            return path.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ConfigError(key, f"cannot read a password from {path}") from None
    return inline


@dataclass(frozen=True)
class DomainConfig:
    imap: str = _opt("", "Name of the default IMAP back end of this domain.")
    caldav: str = _opt("", "Name of the default CalDAV back end.")
    carddav: str = _opt("", "Name of the default CardDAV back end.")
    smtp: str = _opt("", "Name of the default SMTP submission back end.")
    ews: str = _opt("", "Name of the default EWS back end (an existing Exchange).")
    aliases: list[str] = _opt(list, "Other domains whose addresses belong to this one.", factory=True)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    gal: GalConfig = field(default_factory=GalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    autodiscover: AutodiscoverConfig = field(default_factory=AutodiscoverConfig)
    imap: ImapFrontConfig = field(default_factory=ImapFrontConfig)
    pop3: Pop3FrontConfig = field(default_factory=Pop3FrontConfig)
    activesync: ActiveSyncConfig = field(default_factory=ActiveSyncConfig)
    owa: OwaConfig = field(default_factory=OwaConfig)
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    #: Folder relative paths in the file are resolved against.
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """Resolve a path setting against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def https_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"https://{self.server.listen}:{self.server.https_port}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix, "must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}" if prefix else unknown[0], "unknown setting")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            continue
        values[name] = _convert(hints[name], data[name], key)
        check = f.metadata.get("check")
        if check and (problem := check(values[name])):
            raise ConfigError(key, problem)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, "must be a table")
        return {k: _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(key, "unsupported type")  # pragma: no cover - schema has no unions
    if tp is Any:  # checked by the setting's own check
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"must be of type {_type_name(tp)}, not {type(value).__name__}")
    return value


def _validate(cfg: Config) -> None:
    for name, b in cfg.backends.items():
        key = f"backends.{name}"
        if not b.url:
            raise ConfigError(f"{key}.url", "is required")
        try:
            scheme = urlsplit(b.url).scheme
            b.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError as exc:
            raise ConfigError(f"{key}.url", f"is not a valid URL: {exc}") from None
        if scheme not in _SCHEMES[b.type]:
            raise ConfigError(f"{key}.url", f"a {b.type} back end needs a URL starting with "
                                            f"{' or '.join(s + '://' for s in _SCHEMES[b.type])}")
        if not b.host:
            raise ConfigError(f"{key}.url", "has no host name")
    for dname, d in cfg.domains.items():
        for role in BACKEND_TYPES:
            target = getattr(d, role)
            if target and target not in cfg.backends:
                raise ConfigError(f"domains.{dname}.{role}", f"names back end {target!r}, which is not defined")
            if target and cfg.backends[target].type != role:
                raise ConfigError(f"domains.{dname}.{role}",
                                  f"back end {target!r} is of type {cfg.backends[target].type}, not {role}")
    for name, b in cfg.backends.items():
        if b.service_password and b.service_password_file:
            raise ConfigError(f"backends.{name}.service_password_file", "set service_password or "
                                                                       "service_password_file, not both")
        if "{login}" not in b.home_template and "{address}" not in b.home_template:
            raise ConfigError(f"backends.{name}.home_template", "must contain {login} or {address}")
    if cfg.state.backend == "postgresql" and not cfg.state.dsn:
        raise ConfigError("state.dsn", "is required when state.backend = postgresql")
    for i, sni in enumerate(cfg.tls.sni):
        if not (sni.hostnames and sni.cert and sni.key):
            raise ConfigError(f"tls.sni[{i}]", "needs hostnames, cert and key")


def from_dict(data: dict[str, Any], base_dir: str = ".") -> Config:
    """Build and validate a Config from parsed TOML."""
    cfg = _build(Config, data, "")
    cfg = dataclasses.replace(cfg, base_dir=base_dir)
    _validate(cfg)
    return cfg


def load(path: str | Path) -> Config:
    """Read, parse and validate a config file; raise ConfigError on any problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from None
    return from_dict(data, base_dir=str(p.resolve().parent))


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every key of the schema as (key, type, default, help), for --help output and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            rows += describe(typing.get_args(tp)[1], f"{key}.<name>")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((key, _type_name(tp) if typing.get_origin(tp) is None else str(tp),
                         default, f.metadata.get("help", "")))
            if typing.get_origin(tp) is list and dataclasses.is_dataclass(item := typing.get_args(tp)[0]):
                rows += describe(item, f"{key}[]")  # the keys of each table in the list
    return rows
