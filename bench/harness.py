"""Shared benchmark plumbing: pinned child processes, wrk runs, HTTPS probes, progress line, machine facts."""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"


@dataclass(frozen=True)
class Options:
    """What every benchmark is told: how long, how often, how hard, and on which CPUs."""

    seconds: int = 3
    rounds: int = 5
    connections: int = 8
    warmup: int = 1
    server_cpu: int = 0
    client_cpu: int = 1


class BenchError(RuntimeError):
    """A benchmark could not be set up or measured; the message says what and where to look."""


class Progress:
    """One live status line on stderr (rewritten in place on a terminal, one line per step otherwise)."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self._shown = False

    def show(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.1f}s] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self._shown = False

    def note(self, text: str) -> None:
        """A message that stays on screen (a warning, a finished step)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark process dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` run through ``taskset -c cpu`` (unchanged when cpu is None)."""
    if cpu is None:
        return cmd
    if not shutil.which("taskset"):
        raise BenchError("taskset is missing (Debian package util-linux)")
    return ["taskset", "-c", str(cpu), *cmd]


def spawn(cmd: list[str], cpu: int | None, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start a long-running child pinned to ``cpu``, output to ``log``, in its own session."""
    with open(log, "ab") as out:
        return subprocess.Popen(pinned(cmd, cpu), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)


def log_tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def https_get(url: str, ca_file: Path, timeout: float = 3.0) -> tuple[int, bytes]:
    """Status and body of one GET, verifying the server against ``ca_file``."""
    try:
        with urllib.request.urlopen(url, context=client_context(ca_file), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http_ok(url: str, ca_file: Path, proc: subprocess.Popen, log: Path, what: str,
                 timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; raise BenchError with the log tail if it never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = f"process exited with status {proc.returncode}"
            break
        try:
            status, body = https_get(url, ca_file, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise BenchError(f"{what} did not answer 200 at {url} ({last}); log {log}:\n{log_tail(log)}")


def tls_session_facts(host: str, port: int, ca_file: Path) -> dict:
    """TLS version and cipher a default client negotiates with host:port."""
    import socket
    with socket.create_connection((host, port), timeout=3) as raw:
        with client_context(ca_file).wrap_socket(raw, server_hostname=host) as s:
            return {"version": s.version(), "cipher": s.cipher()[0]}


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds CPU ``cpu`` has spent since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            hz = os.sysconf("SC_CLK_TCK")
            return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz
    return 0.0, 0.0


def run_wrk(url: str, opts: Options, seconds: int, close: bool = False, server_pid: int | None = None,
            request_lua: str = "") -> dict:
    """One wrk run against ``url`` pinned to the client CPU; returns totals and requests per second.

    ``close`` sends ``Connection: close`` so every request pays a TCP connect and a full TLS
    handshake (wrk never resumes TLS sessions). With ``server_pid`` the result also says how much
    CPU the server used (``rps_per_cpu``: requests per server CPU-second, which other load on the
    machine disturbs far less than requests per second) and how busy its CPU was with anything.
    """
    script = WRK_SCRIPT
    if request_lua:  # wrk takes one script: the request set-up goes in front of the report function
        import tempfile
        fd, name = tempfile.mkstemp(suffix=".lua", prefix="casgate-wrk-")
        with os.fdopen(fd, "w") as f:
            f.write(request_lua + "\n" + WRK_SCRIPT.read_text())
        script = Path(name)
    cmd = ["wrk", "-t1", f"-c{opts.connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(script)]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(url)
    cpu0 = process_cpu_seconds(server_pid) if server_pid else 0.0
    busy0, total0 = cpu_busy_seconds(opts.server_cpu)
    cbusy0, ctotal0 = cpu_busy_seconds(opts.client_cpu)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(pinned(cmd, opts.client_cpu), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.monotonic() - t0
    if request_lua:
        os.unlink(script)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = cpu_busy_seconds(opts.server_cpu)
    cbusy1, ctotal1 = cpu_busy_seconds(opts.client_cpu)
    server_cpu = process_cpu_seconds(server_pid) - cpu0 if server_pid else None
    wrk_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}) on {url}:\n{text[-1500:]}")
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    r["wall_seconds"] = round(wall, 3)
    r["server_cpu_seconds"] = round(server_cpu, 3) if server_cpu is not None else None
    # Shares of one CPU over the run: the server process, anything at all on the server's CPU,
    # wrk itself, anything at all on the client's CPU. Busy well above the process's own share
    # means other jobs competed for that CPU.
    r["server_cpu_share"] = round(server_cpu / wall, 3) if server_cpu is not None else None
    r["server_cpu_busy_share"] = round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None
    r["wrk_cpu_share"] = round(wrk_cpu / wall, 3)
    r["client_cpu_busy_share"] = round((cbusy1 - cbusy0) / (ctotal1 - ctotal0), 3) if ctotal1 > ctotal0 else None
    r["rps_per_cpu"] = r["requests"] / server_cpu if server_cpu else None
    r["errors"] = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return r


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine_info() -> dict:
    """Facts that make a result file readable later."""
    import aiohttp
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "aiohttp": aiohttp.__version__,
        "wrk": _tool_version(["wrk", "--version"]),
        "commit": (commit + ("+dirty" if dirty else "")) if commit else "unknown",
    }


def check_cpus(opts: Options) -> Options:
    """Fail early with a clear message when the chosen CPUs do not exist here."""
    usable = os.sched_getaffinity(0)
    for name, cpu in (("--server-cpu", opts.server_cpu), ("--client-cpu", opts.client_cpu)):
        if cpu not in usable:
            raise BenchError(f"{name} {cpu} is not a CPU this process may use (usable: {sorted(usable)})")
    return opts
