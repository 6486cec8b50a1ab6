"""Autodiscover: POX (Outlook, mobile), SOAP and JSON endpoints, and the plain-HTTP redirect, from the directory."""

from .http import MAX_BODY, build_redirect_app, register
from .published import (Mailbox, MailService, Published, mail_services, mailbox_of, public_base_url, public_host,
                        published)

__all__ = ["register", "build_redirect_app", "MAX_BODY", "MailService", "Mailbox", "Published", "published",
           "mail_services", "mailbox_of", "public_base_url", "public_host"]
