"""Shared fixtures: a test CA and real back ends (Dovecot, Radicale, SMTP) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gateway import tls
from gateway.demo.dovecot import Dovecot

# Fixtures that belong to one area live in their own module and are pulled in here.
from fixtures_dav import *  # noqa: F401,F403
from fixtures_ldap import *  # noqa: F401,F403
from fixtures_mailfront import *  # noqa: F401,F403
from fixtures_smtp import *  # noqa: F401,F403
from fixtures_state import *  # noqa: F401,F403

# The mitmproxy inspector's tests run in their own virtualenv (make test-inspect): mitmproxy's pins would
# hold back this one's dependencies, so here they are not collected at all.
try:
    import mitmproxy  # noqa: F401
except ImportError:
    collect_ignore = ["test_eas_inspect.py"]

USERS = {
    "alice@example.test": "alice-secret-1",
    "bob@example.test": "bob-secret-2",
    "carol@example.test": "carol-secret-3",
    # Mailboxes of the IMAP/POP3 front-end tests alone, so their deletions and counts disturb nobody.
    "pop@example.test": "pop-secret-4",
    "imapper@example.test": "imap per \"secret\" 5",
    # ActiveSync tests: one mailbox for the windows and counts, one for changes both ways.
    "phone@example.test": "phone-secret-6",
    "tablet@example.test": "tablet-secret-7",
    # The other side of the ActiveSync meeting tests' invitations and replies.
    "organizer@example.test": "organizer-secret-8",
}


@pytest.fixture(scope="session")
def workdir():
    """A folder every back-end user may enter (pytest's own tmp folders are 0700 root); removed at the end."""
    d = Path(tempfile.mkdtemp(prefix="casgate-test-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(workdir: Path) -> tls.CertPaths:
    paths, _ = tls.init_certs(workdir / "certs", "example.test")
    return paths


@pytest.fixture(scope="session")
def users() -> dict[str, str]:
    return dict(USERS)


@pytest.fixture(scope="session")
def dovecot(workdir: Path, certs: tls.CertPaths, users: dict[str, str]):
    dc = Dovecot(workdir / "dovecot", certs.cert, certs.key, users=users, masters=dict([MASTER])).start()
    yield dc
    dc.stop()
