"""Dovecot's push notifications: who may send them, what they say, and the wake-up they become on the bus.

Dovecot tells a waiting IMAP IDLE client of new mail only half a second
after it lands (its mailbox watcher waits 500 ms, compiled in, to batch
changes), so a held Ping answered from IDLE alone is never quicker than
that. Dovecot's push_notification plugin instead calls out inside the
delivering process the moment the message is committed. Two drivers can
call casgate: the Lua one with the script below (every delivery, APPEND,
expunge and flag change, in any folder) and the stock OX one (deliveries by
LMTP/LDA to the INBOX, for users with the METADATA key set). Both POST a
small JSON object naming the user and the folder; it goes out on the bus
exactly as the push hub's own watchers publish what they see, so a waiter
on any node wakes. IDLE stays on as the fallback for servers that send
nothing. The HTTP shell is ``gateway/http/dovecot_push.py``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..state.bus import Bus
from .pushhub import channel

MAX_BODY = 64 * 1024  # a notification is a few hundred octets; the OX driver's snippet is the longest part
MAX_NAME = 1024
# Events that change what a folder holds or shows (RFC 5423 names, as both drivers send them).
EVENTS = frozenset({"MessageNew", "MessageAppend", "MessageExpunge", "MessageRead", "MessageTrash",
                    "FlagsSet", "FlagsClear"})


class NotificationError(ValueError):
    """The body is not a notification casgate understands (the sender gets HTTP 400)."""


@dataclass(frozen=True)
class Notification:
    user: str  # the login as Dovecot knows it
    folder: str
    event: str


def parse(body: bytes) -> Notification:
    """The notification in a POST body (the OX driver's JSON, or the casgate Lua script's, which is the same)."""
    if len(body) > MAX_BODY:
        raise NotificationError("body too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NotificationError("body is not JSON") from None
    if not isinstance(data, dict):
        raise NotificationError("body is not a JSON object")
    user, folder, event = data.get("user"), data.get("folder", "INBOX"), data.get("event", "MessageNew")
    for name, value in (("user", user), ("folder", folder), ("event", event)):
        if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
            raise NotificationError(f"{name} must be a non-empty printable string")
    return Notification(user, folder, event)


class Senders:
    """Who may notify: peer addresses in the allowed networks, and the shared secret when one is set."""

    def __init__(self, networks: Iterable[str], secret: str = "") -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._secret = secret.encode()

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def allows(self, peer: str | None, authorization: str) -> bool:
        try:
            address = ipaddress.ip_address((peer or "").partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address in net for net in self.networks):
            return False
        return not self._secret or hmac.compare_digest(_presented(authorization), self._secret)


def _presented(authorization: str) -> bytes:
    """The secret an Authorization header carries: a Bearer token, or the password of Basic (the OX driver's URL
    user:password@host form)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return b""
    return b""


class DovecotPush:
    """Turns accepted notifications into bus messages; ``counts`` keeps accepted, refused, bad and ignored."""

    def __init__(self, bus: Bus, senders: Senders, on_result: Callable[[str], None] | None = None) -> None:
        self.bus = bus
        self.senders = senders
        self.counts: Counter[str] = Counter()
        self._on_result = on_result

    def _result(self, result: str) -> None:
        self.counts[result] += 1
        if self._on_result is not None:
            self._on_result(result)

    def refused(self) -> None:
        self._result("refused")

    async def receive(self, body: bytes) -> Notification | None:
        """Publish what ``body`` says changed (raises NotificationError); None for an event that changes nothing
        a waiter watches (mailbox created, subscribed...)."""
        try:
            note = parse(body)
        except NotificationError:
            self._result("bad")
            raise
        if note.event not in EVENTS:
            self._result("ignored")
            return None
        await self.bus.publish(channel(note.user), note.folder)
        self._result("accepted")
        return note


# The Lua driver's script, for Dovecot 2.3 with its Lua HTTP client (2.3.19 in Debian 12's dovecot-core; the
# client's settings are 2.3's names, and 2.3 ignores names it does not know). One POST per folder a transaction
# touched, after it committed, in the delivering or changing process, which waits for the answer: at most 2 s
# in all, so a gateway that is down or hung slows deliveries by no more than that (refused at once when down).
LUA_SCRIPT = """\
-- casgate: tell the gateway at once which folder of which user changed (Dovecot push_notification, Lua
-- driver). Settings (plugin section): casgate_push_url, casgate_push_secret (optional, sent as a Bearer token).
local client = nil

function script_init()
  client = dovecot.http.client({connect_timeout_msecs = 1000, request_timeout_msecs = 1000,
                                request_absolute_timeout_msecs = 2000, max_attempts = 1, max_connect_attempts = 1,
                                no_auto_retry = true, user_agent = "dovecot-casgate-push"})
  return 0
end

local function quote(s)
  local escaped = string.gsub(s, '[%c"\\\\]', function(c) return string.format("\\\\u%04x", string.byte(c)) end)
  return '"' .. escaped .. '"'
end

function dovecot_lua_notify_begin_txn(user)
  return {user = user.username, url = user:plugin_getenv("casgate_push_url"),
          secret = user:plugin_getenv("casgate_push_secret"), events = {}, folders = {}}
end

local function changed(ctx, event)
  if ctx.events[event.mailbox] == nil then
    ctx.events[event.mailbox] = event.name
    table.insert(ctx.folders, event.mailbox)
  end
end

dovecot_lua_notify_event_message_new = changed
dovecot_lua_notify_event_message_append = changed
dovecot_lua_notify_event_message_expunge = changed
dovecot_lua_notify_event_flags_set = changed
dovecot_lua_notify_event_flags_clear = changed

function dovecot_lua_notify_end_txn(ctx, success)
  if success == false or ctx.url == nil or ctx.url == "" then
    return
  end
  for _, folder in ipairs(ctx.folders) do
    local rq = client:request({url = ctx.url, method = "POST"})
    rq:add_header("Content-Type", "application/json")
    if ctx.secret ~= nil and ctx.secret ~= "" then
      rq:add_header("Authorization", "Bearer " .. ctx.secret)
    end
    rq:set_payload('{"user":' .. quote(ctx.user) .. ',"folder":' .. quote(folder) ..
                   ',"event":' .. quote(ctx.events[folder]) .. '}')
    local rs = rq:submit()
    if rs:status() >= 300 then
      dovecot.i_warning("casgate push: " .. tostring(rs:status()) .. " " .. tostring(rs:reason()))
    end
  end
end
"""

# What the mail_plugins of protocol lmtp, lda, imap and pop3 need besides their own.
LUA_PLUGINS = "mail_lua notify push_notification push_notification_lua"


def plugin_settings(lua_file: str, url: str, secret: str = "") -> str:
    """The dovecot.conf plugin section that runs ``LUA_SCRIPT`` (saved as ``lua_file``) against ``url``."""
    lines = [f"  push_notification_driver = lua:file={lua_file}", f"  casgate_push_url = {url}"]
    if secret:
        lines.append(f"  casgate_push_secret = {secret}")
    return "plugin {\n" + "\n".join(lines) + "\n}\n"
