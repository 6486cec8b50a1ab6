"""The web app at /owa/, in the spirit of Outlook Web App: sign-in, then mail (later: calendar, contacts, options).

Server-rendered pages (Jinja2, autoescaped), no script needed to use them, a
strict Content-Security-Policy on every answer; sessions in the state store
(sessions.py). Routes are registered by ``register``; pages live in pages.py.
"""

from __future__ import annotations

from .pages import register

__all__ = ["register"]
