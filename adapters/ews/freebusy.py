"""Free/busy of mailboxes on an EWS server (GetUserAvailability through exchangelib), as protocol-neutral records."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from exchangelib import Configuration, EWSDateTime, EWSTimeZone, FailFast
from exchangelib import Credentials as EwsCredentials
from exchangelib import errors as ews
from exchangelib.properties import FreeBusyViewOptions, MailboxData, TimeWindow, TimeZone
from exchangelib.protocol import CachingProtocol, Protocol
from exchangelib.services import GetUserAvailability
from exchangelib.transport import BASIC

from adapters.errors import AuthenticationFailed, BackendError, BackendUnavailable, NotFound, PermissionDenied
from adapters.interfaces import Credentials

__all__ = ["EwsFreeBusy", "RemoteBusy"]

UTC = dt.timezone.utc
_EWS_UTC = EWSTimeZone("UTC")
# LegacyFreeBusyType names in the gateway's BusyType order. "NoData" is left out:
# it says the server knows nothing of that time, which is no event to pass on.
_BUSY = {"Free": 0, "Tentative": 1, "Busy": 2, "OOF": 3, "WorkingElsewhere": 4}
_NOT_FOUND = (ews.ErrorMailRecipientNotFound, ews.ErrorNonExistentMailbox)
_DENIED = (ews.ErrorNoFreeBusyAccess, ews.ErrorAccessDenied)
# A few sessions, so batches for different windows need not queue behind one another.
_SESSIONS = 4


@dataclass(frozen=True, slots=True)
class RemoteBusy:
    """One calendar event as the remote availability service reported it; start and end are aware UTC.

    ``busy`` is 0 free, 1 tentative, 2 busy, 3 out of office, 4 working elsewhere.
    Without details (the remote shares free/busy times only) subject and
    location are None and the flags False.
    """

    start: dt.datetime
    end: dt.datetime
    busy: int
    subject: str | None
    location: str | None
    private: bool
    recurring: bool
    exception: bool
    meeting: bool
    reminder: bool
    uid: str


class _TrustAdapter(requests.adapters.HTTPAdapter):
    """Verifies the server with this back end's own setting (CA bundle, system store or not at all)."""

    def __init__(self, verify: bool | str) -> None:
        # One connection, no retries: exchangelib's session pool and retry policy decide those.
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0, pool_block=True)
        self._verify = verify

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> Any:
        # requests folds REQUESTS_CA_BUNDLE into ``verify``; a process-wide variable must not decide
        # whom this one back end trusts.
        return super().send(request, stream=stream, timeout=timeout, verify=self._verify, cert=cert,
                            proxies=proxies)


class _Unshared(CachingProtocol):
    """Builds a new Protocol on every call instead of exchangelib's process-wide one per endpoint and login."""

    # A shared Protocol would carry another adapter's trust setting and timeout (or hand ours to it).
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return type.__call__(cls, *args, **kwargs)


class _Protocol(Protocol, metaclass=_Unshared):
    def __init__(self, config: Configuration, verify: bool | str, timeout: float) -> None:
        super().__init__(config=config)
        self._verify = verify
        self.TIMEOUT = timeout  # an instance attribute, so the class-wide default stays as it is

    def create_session(self) -> Any:
        session = super().create_session()
        session.mount(self.service_endpoint, _TrustAdapter(self._verify))  # replaces the stock adapter
        return session


class _Availability(GetUserAvailability):
    # Stock exchangelib returns "recipient not found" per mailbox but raises any other
    # mailbox's error, which ends the whole answer there; each error belongs to its mailbox.
    ERRORS_TO_CATCH_IN_RESPONSE = (ews.EWSWarning, ews.TransportError)


def _plain_utc(when: Any) -> dt.datetime:
    u = when.astimezone(_EWS_UTC)
    return dt.datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC)


def _ews_utc(when: dt.datetime) -> EWSDateTime:
    u = when.astimezone(UTC)
    return EWSDateTime(u.year, u.month, u.day, u.hour, u.minute, u.second, tzinfo=_EWS_UTC)


def _record(event: Any) -> RemoteBusy | None:
    busy = _BUSY.get(event.busy_type)
    if busy is None or event.start is None or event.end is None:
        return None
    start = _plain_utc(event.start)
    d = event.details
    return RemoteBusy(start=start, end=max(start, _plain_utc(event.end)), busy=busy,
                      subject=d.subject if d else None, location=d.location if d else None,
                      private=bool(d and d.is_private), recurring=bool(d and d.is_recurring),
                      exception=bool(d and d.is_exception), meeting=bool(d and d.is_meeting),
                      reminder=bool(d and d.is_reminder_set), uid=(d.id or "") if d else "")


def _translate(exc: BaseException, what: str) -> BackendError:
    """One of our errors for whatever exchangelib or requests raised (or reported for one mailbox)."""
    name = type(exc).__name__
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, _NOT_FOUND):
        return NotFound(f"{what}: the server knows no such mailbox")
    if isinstance(exc, _DENIED):
        return PermissionDenied(f"{what}: the server refused access ({name})")
    if isinstance(exc, ews.UnauthorizedError):
        return AuthenticationFailed(f"{what}: the server refused the credentials")
    if isinstance(exc, ews.ErrorServerBusy) and exc.back_off:
        return BackendUnavailable(f"{what}: the server is busy", retry_after=max(1, int(exc.back_off)))
    if isinstance(exc, (ews.EWSError, requests.RequestException, OSError)):
        # Connection failures arrive as ErrorTimeoutExpired, TLS ones as TransportError, HTTP 5xx as
        # ErrorInternalServerTransientError or MalformedResponseError: all mean "try again later".
        # Only the first line, short: some of these carry whole response bodies.
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return BackendUnavailable(f"{what}: {name}" + (f": {detail}" if detail else ""))
    return BackendError(f"{what}: unexpected {name}")


class EwsFreeBusy:
    """Asks one EWS server for free/busy with one account; one exchangelib Protocol (sessions, version) each.

    exchangelib is synchronous, so every call runs in a worker thread. Nothing
    it raises leaves this class: callers see the errors of ``adapters.errors``.
    """

    def __init__(self, service_url: str, credentials: Credentials, ca_file: str | Path | None, timeout: float,
                 *, verify: bool = True) -> None:
        self._url = service_url
        config = Configuration(service_endpoint=service_url, auth_type=BASIC, retry_policy=FailFast(),
                               credentials=EwsCredentials(credentials.username, credentials.password),
                               max_connections=_SESSIONS)
        trust: bool | str = (str(ca_file) if ca_file else True) if verify else False
        self._protocol = _Protocol(config, trust, timeout)
        self._zones: dict[int, TimeZone] = {}  # the server's description of UTC, by year

    def __repr__(self) -> str:
        return f"EwsFreeBusy({self._url!r})"

    async def busy_events(self, addresses: Sequence[str], start: dt.datetime, end: dt.datetime
                          ) -> list[list[RemoteBusy] | BackendError]:
        """Each address's events overlapping [start, end), in order, or the error the server gave for it.

        An error of the whole request (server down, credentials refused) is
        raised instead. Naive datetimes are UTC.
        """
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        if end <= start:
            raise ValueError("the time window ends before it starts")
        if not addresses:
            return []
        return await asyncio.to_thread(self._ask, list(addresses), start, end)

    def _ask(self, addresses: list[str], start: dt.datetime, end: dt.datetime
             ) -> list[list[RemoteBusy] | BackendError]:
        try:
            views = list(_Availability(protocol=self._protocol).call(
                tzinfo=_EWS_UTC, timezone=self._utc_zone(start.year),
                mailbox_data=[MailboxData(email=a, attendee_type="Required", exclude_conflicts=False)
                              for a in addresses],
                free_busy_view_options=FreeBusyViewOptions(
                    time_window=TimeWindow(start=_ews_utc(start), end=_ews_utc(end)),
                    merged_free_busy_interval=30, requested_view="Detailed")))
        except Exception as exc:  # exchangelib raises from many layers; all are translated here
            raise _translate(exc, self._url) from None
        if len(views) != len(addresses):
            raise BackendUnavailable(f"{self._url}: answered {len(views)} mailboxes of {len(addresses)}")
        return [self._answer(address, view) for address, view in zip(addresses, views)]

    def _utc_zone(self, year: int) -> TimeZone:
        # The request's zone has to be given in the server's own terms; UTC's never change, so ask once a year.
        if year not in self._zones:
            found = list(self._protocol.get_timezones(timezones=[_EWS_UTC], return_full_timezone_data=True))
            if not found or isinstance(found[0], Exception):
                raise BackendUnavailable(f"{self._url}: the server did not describe UTC")
            self._zones[year] = TimeZone.from_server_timezone(tz_definition=found[0], for_year=year)
        return self._zones[year]

    def _answer(self, address: str, view: Any) -> list[RemoteBusy] | BackendError:
        if isinstance(view, Exception):
            return _translate(view, address)
        if view.view_type == "None":
            # Exchange's way of saying "no permission": a successful answer with nothing in it.
            return PermissionDenied(f"{address}: the server shares no free/busy of this mailbox")
        # In the server's order: passed through, not re-derived.
        return [r for ev in view.calendar_events or () if (r := _record(ev)) is not None]

    def close(self) -> None:
        """Close the pooled HTTP sessions (a later call opens new ones)."""
        self._protocol.close()
