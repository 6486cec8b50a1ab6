"""Small helpers for starting back-end processes on free loopback ports and waiting for them."""

from __future__ import annotations

import os
import pwd
import random
import socket
import subprocess
import time
from pathlib import Path


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, below the kernel's ephemeral range.

    A port the kernel picks for bind(0) comes from the same range as the source ports of outgoing
    connections, so a busy process (back-end connections, IDLE watchers) could take it before the
    service it was meant for binds it. Ports below that range are never handed out that way; each is
    given to one caller only.
    """
    low = _ephemeral_low()
    start = max(1024, low - 12000) if low > 13024 else 0
    for _ in range(200):
        port = random.randrange(start, low) if start else 0
        if port and port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found")


def wait_for_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None,
                  what: str = "service", log: Path | None = None) -> None:
    """Block until something accepts on host:port; raise RuntimeError with the log tail if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = ""
    if log and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"{what} did not start listening on {host}:{port}{tail}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args: list[str], log, **kw) -> subprocess.Popen:
    """Start a back end that cannot outlive us: if casgate is killed outright, Linux stops it too.

    Call it from the main thread: the kernel ties the signal to the thread that forked.
    """
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                            preexec_fn=_die_with_parent, **kw)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def unprivileged_ids() -> tuple[int, int, str, str]:
    """uid, gid, user and group that back-end data files belong to.

    As root, mail processes must not run as root (Dovecot refuses), so data
    belongs to ``nobody``; otherwise to the current user.
    """
    if os.geteuid() == 0:
        pw = pwd.getpwnam("nobody")
        import grp
        return pw.pw_uid, pw.pw_gid, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name
    pw = pwd.getpwuid(os.geteuid())
    import grp
    return pw.pw_uid, pw.pw_gid, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name


def traversable_by(path: Path, uid: int, gid: int) -> bool:
    """True when a process running as uid/gid can reach ``path`` (every parent searchable)."""
    p = path.resolve()
    for parent in [p, *p.parents]:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True
