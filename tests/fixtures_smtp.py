"""Fixtures for the smtp tests: the demo submission service relaying to the test Dovecot."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import pytest_asyncio

from adapters.interfaces import Credentials
from adapters.smtp import SmtpSubmission
from gateway import tls
from gateway.demo.submission import SubmissionServer

__all__ = ["submission", "submit_as"]


@pytest_asyncio.fixture(scope="session")
async def submission(certs: tls.CertPaths, users: dict[str, str], dovecot):
    """The demo's SubmissionServer on a free loopback port, delivering to the session Dovecot's LMTP."""
    server = SubmissionServer("127.0.0.1", 0, tls.server_context(certs.cert, certs.key), users,
                              "127.0.0.1", dovecot.lmtp_port)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def submit_as(submission: SubmissionServer, certs: tls.CertPaths,
              users: dict[str, str]) -> Callable[..., SmtpSubmission]:
    """Make an SmtpSubmission (STARTTLS, verified against the test CA) for a user, by default with their password."""
    def make(address: str, password: str | None = None) -> SmtpSubmission:
        creds = Credentials(address, users[address] if password is None else password)
        return SmtpSubmission("127.0.0.1", submission.port, "starttls", creds, str(certs.ca_cert), timeout=10)
    return make
