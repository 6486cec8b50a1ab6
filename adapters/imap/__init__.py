"""IMAP back-end adapter: login checks and the MailStore over any IMAP4rev1 server."""

from .connect import ImapEndpoint, check_login
from .store import ImapMailStore

__all__ = ["ImapEndpoint", "check_login", "ImapMailStore"]
