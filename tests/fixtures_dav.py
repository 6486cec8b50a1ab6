"""Fixtures for the DAV adapter tests: a private Radicale over TLS with the test users and a service account."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import tls
from gateway.demo.radicale import Radicale

__all__ = ["SERVICE_USER", "radicale", "service_user"]

#: (login, password) of the read-only account the free/busy service reads other users' calendars with.
SERVICE_USER = ("casgate-freebusy", "freebusy-secret-4")


@pytest.fixture(scope="session")
def service_user() -> tuple[str, str]:
    return SERVICE_USER


@pytest.fixture(scope="session")
def radicale(workdir: Path, certs: tls.CertPaths, users: dict[str, str]):
    """Radicale on a free loopback port: CalDAV, CardDAV, htpasswd users, owner-only rights for them and
    read-only access to everyone's collections for SERVICE_USER."""
    server = Radicale(workdir / "radicale", certs.cert, certs.key, users=users,
                      service_user=SERVICE_USER).start()
    yield server
    server.stop()
