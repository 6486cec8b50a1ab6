"""Fixtures for the DAV adapter tests: a private Radicale over TLS with the test users."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import tls
from gateway.demo.radicale import Radicale

__all__ = ["radicale"]


@pytest.fixture(scope="session")
def radicale(workdir: Path, certs: tls.CertPaths, users: dict[str, str]):
    """Radicale on a free loopback port with CalDAV, CardDAV, htpasswd users and owner-only rights."""
    server = Radicale(workdir / "radicale", certs.cert, certs.key, users=users).start()
    yield server
    server.stop()
