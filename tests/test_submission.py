"""SMTP submission: the demo SubmissionServer and the SmtpSubmission adapter against the real Dovecot."""

from __future__ import annotations

import asyncio
import base64
import email
import email.utils
import imaplib
import secrets
import ssl
from email import policy
from email.message import EmailMessage

import aiosmtplib
import pytest

from adapters.errors import AuthenticationFailed, BackendUnavailable, InvalidData, PermissionDenied, QuotaExceeded
from adapters.interfaces import Credentials, Submission
from adapters.smtp import RecipientsRefused, SmtpSubmission
from gateway import tls
from gateway.demo.procs import free_port
from gateway.demo.submission import MAX_MESSAGE_SIZE, SubmissionServer

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


def make_message(sender: str, to: list[str], subject: str) -> tuple[bytes, str]:
    token = secrets.token_hex(8)
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, ", ".join(to)
    msg["Subject"] = f"{subject} {token}"
    msg["Message-ID"] = f"<{token}@example.test>"
    msg["Date"] = email.utils.formatdate(localtime=True)
    # A line that starts with a dot checks the dot-stuffing on both the SMTP and the LMTP leg.
    msg.set_content(f"Hello from {sender}.\n.this line starts with a dot\n")
    return msg.as_bytes(policy=policy.SMTP), token


def _inbox_matches(port: int, ca: str, user: str, password: str, token: str) -> list[bytes]:
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ssl.create_default_context(cafile=ca)) as imap:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "HEADER", "Message-ID", token)
        found = []
        for num in data[0].split():
            _, parts = imap.fetch(num, "(RFC822)")
            found.append(parts[0][1])
        imap.logout()
        return found


@pytest.fixture
def inbox(dovecot, certs, users):
    """inbox(user, token, wait) -> raw messages in the user's INBOX whose Message-ID holds ``token``."""
    async def look(user: str, token: str, wait: bool = True) -> list[bytes]:
        # LMTP has stored the message before SMTP says 250, so an absence seen once is final.
        for _ in range(50 if wait else 1):
            found = await asyncio.to_thread(_inbox_matches, dovecot.imaps_port, str(certs.ca_cert),
                                            user, users[user], token)
            if found or not wait:
                return found
            await asyncio.sleep(0.1)
        return []
    return look


async def _raw_client(port: int, ca: str, starttls: bool) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=starttls, timeout=10,
                             tls_context=ssl.create_default_context(cafile=ca), local_hostname="tests.example.test")
    await client.connect()
    await client.ehlo()
    return client


async def test_alice_sends_to_bob(submit_as, inbox):
    sender = submit_as(ALICE)
    assert isinstance(sender, Submission)
    message, token = make_message(ALICE, [BOB], "lunch")
    await sender.send(ALICE, [BOB], message)
    found = await inbox(BOB, token)
    assert len(found) == 1
    got = email.message_from_bytes(found[0], policy=policy.default)
    assert got["Subject"] == f"lunch {token}"
    received = " ".join(got.get_all("Received"))
    assert "Authenticated sender: alice@example.test" in received and "with ESMTPSA" in received
    assert ".this line starts with a dot" in got.get_content()


async def test_wrong_password_is_authentication_failed(submit_as, inbox):
    message, token = make_message(ALICE, [BOB], "bad password")
    with pytest.raises(AuthenticationFailed, match="535"):
        await submit_as(ALICE, "not-the-password").send(ALICE, [BOB], message)
    assert await inbox(BOB, token, wait=False) == []


async def test_unknown_login_is_authentication_failed(submit_as, submission, certs):
    sender = SmtpSubmission("127.0.0.1", submission.port, "starttls", Credentials("mallory@example.test", "x"),
                            str(certs.ca_cert), timeout=10)
    with pytest.raises(AuthenticationFailed):
        await sender.send("mallory@example.test", [BOB], make_message("mallory@example.test", [BOB], "hi")[0])


async def test_auth_and_mail_refused_before_starttls(submission, certs, users):
    client = await _raw_client(submission.port, str(certs.ca_cert), starttls=False)
    try:
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")
        plain = base64.b64encode(f"\0{ALICE}\0{users[ALICE]}".encode())
        assert (await client.execute_command(b"AUTH", b"PLAIN", plain)).code == 530
        assert (await client.execute_command(b"MAIL", f"FROM:<{ALICE}>".encode())).code == 530
    finally:
        client.close()


async def test_after_starttls_auth_offered_and_mail_needs_it(submission, certs, users):
    client = await _raw_client(submission.port, str(certs.ca_cert), starttls=True)
    try:
        assert set(client.server_auth_methods) == {"plain", "login"}
        refused = await client.execute_command(b"MAIL", f"FROM:<{ALICE}>".encode())
        assert (refused.code, refused.message) == (530, "5.7.0 Authentication required")
        assert (await client.auth_login(ALICE, users[ALICE])).code == 235
        assert (await client.mail(ALICE)).code == 250
    finally:
        await client.quit()


async def test_forged_sender_refused_and_nothing_delivered(submit_as, inbox):
    message, token = make_message(CAROL, [BOB], "forged")
    with pytest.raises(PermissionDenied, match="553") as caught:
        await submit_as(ALICE).send(CAROL, [BOB], message)
    assert CAROL in str(caught.value)
    assert await inbox(BOB, token, wait=False) == []


async def test_outside_recipient_refused(submit_as, inbox):
    outsider = "someone@elsewhere.example"
    message, token = make_message(ALICE, [BOB, outsider], "outside")
    with pytest.raises(RecipientsRefused) as caught:
        await submit_as(ALICE).send(ALICE, [BOB, outsider], message)
    assert isinstance(caught.value, InvalidData)
    assert list(caught.value.refused) == [outsider]
    assert caught.value.refused[outsider].startswith("550 5.7.1")
    assert outsider in str(caught.value)
    # The adapter sends to all or to none, so bob must not have it either.
    assert await inbox(BOB, token, wait=False) == []


async def test_adapter_unknown_local_user_refuses_whole_message(submit_as, inbox):
    ghost = "nobody@example.test"
    message, token = make_message(ALICE, [BOB, ghost], "ghost via adapter")
    with pytest.raises(RecipientsRefused) as caught:
        await submit_as(ALICE).send(ALICE, [BOB, ghost], message)
    assert list(caught.value.refused) == [ghost]
    assert caught.value.refused[ghost].startswith("550 5.1.1")
    assert await inbox(BOB, token, wait=False) == []


async def test_server_refuses_unknown_local_user_at_rcpt_and_delivers_the_rest(submission, certs, users, inbox):
    ghost = "nobody@example.test"
    message, token = make_message(ALICE, [BOB, ghost], "ghost via smtp")
    client = await _raw_client(submission.port, str(certs.ca_cert), starttls=True)
    try:
        await client.login(ALICE, users[ALICE])
        await client.mail(ALICE)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as caught:
            await client.rcpt(ghost)
        assert caught.value.code == 550 and caught.value.message.startswith("5.1.1")
        assert (await client.rcpt(BOB)).code == 250
        assert (await client.data(message)).code == 250
    finally:
        await client.quit()
    assert len(await inbox(BOB, token)) == 1


async def test_oversized_message(submit_as, submission, certs, users, inbox):
    line = b"x" * 998 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (MAX_MESSAGE_SIZE // len(line) + 10)
    # The adapter declares SIZE, so the server refuses at MAIL FROM before the upload.
    with pytest.raises(QuotaExceeded, match="552"):
        await submit_as(ALICE).send(ALICE, [BOB], big)
    # A client that does not declare SIZE is refused once the data has come in.
    client = await _raw_client(submission.port, str(certs.ca_cert), starttls=True)
    try:
        await client.login(ALICE, users[ALICE])
        await client.mail(ALICE)
        await client.rcpt(BOB)
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await client.data(big)
        assert caught.value.code == 552
    finally:
        await client.quit()


async def test_closed_port_is_backend_unavailable(certs):
    sender = SmtpSubmission("127.0.0.1", free_port(), "starttls", Credentials(ALICE, "x"),
                            str(certs.ca_cert), timeout=5)
    with pytest.raises(BackendUnavailable):
        await sender.send(ALICE, [BOB], b"Subject: x\r\n\r\nx\r\n")


class FakeLmtp:
    """An LMTP server that takes every recipient and answers DATA per recipient from a table."""

    def __init__(self) -> None:
        self.data_replies: dict[str, str] = {}
        self.deliveries: list[tuple[str, list[str], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake LMTP\r\n")
        sender, rcpts = "", []
        while line := await reader.readline():
            verb, arg = line.decode().strip()[:4].upper(), line.decode().strip()
            if verb == "LHLO":
                writer.write(b"250-fake\r\n250 8BITMIME\r\n")
            elif verb == "MAIL":
                sender, rcpts = arg[10:].strip("<>"), []
                writer.write(b"250 2.1.0 OK\r\n")
            elif verb == "RCPT":
                rcpts.append(arg[8:].strip("<>"))
                writer.write(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                body = await reader.readuntil(b"\r\n.\r\n")
                self.deliveries.append((sender, rcpts, body))
                for r in rcpts:
                    writer.write(self.data_replies.get(r, "250 2.0.0 Saved").encode() + b"\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            await writer.drain()
        writer.close()


async def test_partial_failure_after_data_bounces_and_total_failure_reports(certs, users):
    fake = FakeLmtp()
    lmtp = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    server = SubmissionServer("127.0.0.1", 0, tls.server_context(certs.cert, certs.key), users,
                              "127.0.0.1", lmtp.sockets[0].getsockname()[1])
    await server.start()
    try:
        sender = SmtpSubmission("127.0.0.1", server.port, "starttls", Credentials(ALICE, users[ALICE]),
                                str(certs.ca_cert), timeout=10)
        fake.data_replies = {CAROL: "552 5.2.2 <carol@example.test> Mailbox is full"}
        message, token = make_message(ALICE, [BOB, CAROL], "partly")
        await sender.send(ALICE, [BOB, CAROL], message)
        assert [(s, r) for s, r, _ in fake.deliveries] == [(ALICE, [BOB, CAROL]), ("", [ALICE])]
        assert token.encode() in fake.deliveries[0][2]
        ndr = email.message_from_bytes(fake.deliveries[1][2], policy=policy.default)
        assert ndr["Subject"] == f"Undeliverable: partly {token}"
        assert "<carol@example.test>: 552 5.2.2" in ndr.get_content()
        # When every recipient fails, the temporary failure speaks for all so the client retries.
        fake.deliveries.clear()
        fake.data_replies = {BOB: "550 5.1.1 gone", CAROL: "451 4.3.0 Temporary failure"}
        with pytest.raises(BackendUnavailable, match="451 4.3.0"):
            await sender.send(ALICE, [BOB, CAROL], message)
        assert len(fake.deliveries) == 1  # no bounce: the client was told
    finally:
        await server.stop()
        lmtp.close()


async def test_lmtp_down_defers(certs, users):
    server = SubmissionServer("127.0.0.1", 0, tls.server_context(certs.cert, certs.key), users,
                              "127.0.0.1", free_port())
    await server.start()
    try:
        sender = SmtpSubmission("127.0.0.1", server.port, "starttls", Credentials(ALICE, users[ALICE]),
                                str(certs.ca_cert), timeout=10)
        with pytest.raises(BackendUnavailable, match="451 4.4.1"):
            await sender.send(ALICE, [BOB], make_message(ALICE, [BOB], "deferred")[0])
    finally:
        await server.stop()
