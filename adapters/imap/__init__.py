"""IMAP back-end adapter: login checks, a lean IMAP client and the MailStore over any IMAP4rev1 server."""

from .connect import ImapEndpoint, check_login
from .store import ImapMailStore
from .wire import ImapConnection

__all__ = ["ImapEndpoint", "check_login", "ImapMailStore", "ImapConnection"]
