"""Protocol-neutral errors that every adapter raises; each front end renders them in its own wire form."""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error an adapter raises."""

    #: True when retrying the same call later may succeed.
    transient: bool = False


class AuthenticationFailed(BackendError):
    """The back end refused the credentials."""


class BackendUnavailable(BackendError):
    """The back end could not be reached or did not answer in time."""

    transient = True

    def __init__(self, message: str = "back end unavailable", retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BackendError):
    """The folder, item or collection does not exist."""


class Conflict(BackendError):
    """The item changed on the back end since the client last saw it, or already exists."""


class QuotaExceeded(BackendError):
    """The back end refused to store more for this user."""


class InvalidData(BackendError):
    """The back end (or the adapter on its behalf) rejected malformed data."""


class PermissionDenied(BackendError):
    """The user may not do this on the back end."""


__all__ = [
    "BackendError",
    "AuthenticationFailed",
    "BackendUnavailable",
    "NotFound",
    "Conflict",
    "QuotaExceeded",
    "InvalidData",
    "PermissionDenied",
]
