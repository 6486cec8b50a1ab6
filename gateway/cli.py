"""The ``casgate`` command: serve, check, demo, certs, dns, devices and config-help."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from . import __version__, logs, tls
from .config import ConfigError, describe, load

EXIT_USAGE = 2

DESCRIPTION = """\
casgate stands in for the Client Access role of Exchange 2010: phones (ActiveSync),
Outlook and other desktop clients (autodiscover, EWS), browsers and IMAP/POP3 clients
connect to it, and it serves them from the mail, calendar and contact stores you
already run (any IMAP server, any CalDAV/CardDAV server, an existing Exchange).

Start with `casgate demo` to see a complete organisation on this machine, then copy
casgate.example.toml, point it at your own back ends and run `casgate check -c FILE`
followed by `casgate serve -c FILE`."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casgate", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"casgate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway in front of the back ends named in a config file",
                       description="Run the gateway until SIGINT or SIGTERM.")
    s.add_argument("-c", "--config", required=True, metavar="FILE", help="casgate.toml to use")

    c = sub.add_parser("check", help="validate a config file and try to reach every back end",
                       description="Print one line per check; exit 0 when all pass, 1 when one fails, "
                                   "2 when the file itself is wrong.")
    c.add_argument("-c", "--config", required=True, metavar="FILE", help="casgate.toml to check")

    d = sub.add_parser("demo", help="run a complete demo organisation on this machine",
                       description="Start Dovecot, Radicale and an SMTP submission service on loopback "
                                   "ports, seed users alice, bob and carol at example.test, and run the "
                                   "gateway in front of them until Ctrl-C (which stops everything).")
    d.add_argument("--state-dir", default="./.casgate-demo", metavar="DIR",
                   help="where back-end data, config and endpoints.json live (default: %(default)s)")
    d.add_argument("--port-base", type=int, default=0, metavar="N",
                   help="add N to every gateway port (defaults: HTTPS 8443, IMAP 1993 TLS / 1143 STARTTLS, "
                        "POP3 1995 TLS / 1110 STLS); e.g. 10000 gives HTTPS on 18443")
    d.add_argument("--no-seed", action="store_true", help="do not put sample mail, events and contacts in")
    d.add_argument("--certs-dir", default="certs", metavar="DIR",
                   help="where the dev CA and certificate are made or reused (default: %(default)s)")

    ce = sub.add_parser("certs", help="make development certificates")
    ce_sub = ce.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    ci = ce_sub.add_parser("init", help="make (or reuse) a dev CA and a leaf certificate",
                           description="Write ca.pem/ca.key and server.pem/server.key. Without --host the "
                                       "certificate names mail.DOMAIN, autodiscover.DOMAIN, autoconfig.DOMAIN, "
                                       "localhost and "
                                       "127.0.0.1.")
    ci.add_argument("--domain", required=True, help="mail domain, e.g. example.com")
    ci.add_argument("--host", action="append", default=[], metavar="H",
                    help="a host name or address for the certificate (repeatable)")
    ci.add_argument("--dir", default="certs", help="output folder (default: %(default)s)")

    dn = sub.add_parser("dns", help="print the DNS records to publish for a domain",
                        description="Print, in zone-file syntax, the SRV records (_autodiscover, and _imaps, "
                                    "_imap, _pop3s, _pop3, _submissions, _submission per RFC 6186/8314) and the "
                                    "autodiscover/autoconfig host names that let clients find this gateway "
                                    "from an address alone. Services not offered get the '0 0 0 .' record.")
    dn.add_argument("--domain", required=True, help="mail domain (or alias domain) of the configuration")
    dn.add_argument("-c", "--config", required=True, metavar="FILE", help="casgate.toml to read")

    dv = sub.add_parser("devices", help="list, inspect, wipe, block, allow or remove ActiveSync devices",
                        description="Act on the ActiveSync partnerships in the state store named by the config. "
                                    "list [USER]: every device (of USER, or of every user in the directory); "
                                    "show/wipe/block/allow/remove USER DEVICE_ID: one device. A wipe happens "
                                    "at the device's next request (it then reports it done); block refuses the "
                                    "device until allow; remove forgets the partnership and its sync state "
                                    "(the device sets itself up again at its next request).")
    dv.add_argument("action", choices=("list", "show", "wipe", "block", "allow", "remove"))
    dv.add_argument("user", nargs="?", help="the user's address")
    dv.add_argument("device_id", nargs="?", help="the device's DeviceId")
    dv.add_argument("--account-only", action="store_true",
                    help="with wipe: ask a 16.1 device to remove only this account's data (AccountOnlyRemoteWipe)")
    dv.add_argument("-c", "--config", required=True, metavar="FILE", help="casgate.toml to read")

    sub.add_parser("config-help", help="list every config key with its type, default and meaning")
    return p


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"casgate: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except tls.CertificateError as exc:
        return _fail(f"certificate problem: {exc}")
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from .server import StartupError, install_event_loop
    from .state.bus import BusError
    if args.command == "config-help":
        for key, typ, default, help_text in describe():
            print(f"{key} ({typ}, default {default!r})\n    {help_text}")
        return 0
    if args.command == "certs":
        hosts = args.host or None
        paths, made = tls.init_certs(Path(args.dir), args.domain, hosts)
        print(f"{'wrote' if made else 'kept'} {paths.cert} (names: {', '.join(tls.cert_hosts(paths.cert))})")
        print(f"CA to trust: {paths.ca_cert}")
        return 0
    if args.command == "dns":
        from .autodiscover.dns import zone_for
        cfg = load(args.config)
        try:
            print(zone_for(cfg, args.domain, args.config), end="")
        except LookupError as exc:
            return _fail(str(exc))
        return 0
    if args.command == "devices":
        cfg = load(args.config)
        return asyncio.run(_devices(cfg, args))
    if args.command == "check":
        cfg = load(args.config)
        return asyncio.run(_check(cfg))
    if args.command == "serve":
        cfg = load(args.config)
        logs.setup(cfg.log.level, cfg.log.format)
        install_event_loop(cfg.server.ssl_read_buffer)
        try:
            asyncio.run(_serve(cfg))
        except (StartupError, BusError) as exc:
            return _fail(str(exc), 1)
        return 0
    if args.command == "demo":
        from .demo.run import run_demo
        logs.setup("info", "text")
        install_event_loop()
        try:
            asyncio.run(run_demo(Path(args.state_dir), Path(args.certs_dir), args.port_base, not args.no_seed))
        except StartupError as exc:
            return _fail(str(exc), 1)
        except RuntimeError as exc:  # a back end that would not start says why
            return _fail(str(exc), 1)
        return 0
    raise AssertionError(args.command)


async def _serve(cfg) -> None:
    import signal
    from .context import open_context
    from .server import serve_until
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        ctx = await open_context(cfg, stack)
        await serve_until(ctx, stop)


async def _devices(cfg, args: argparse.Namespace) -> int:
    from .activesync.admin import DeviceAdminError, act
    from .services.directory import StaticDirectory
    from .state import open_store
    if args.action != "list" and not (args.user and args.device_id):
        return _fail(f"devices {args.action} needs USER and DEVICE_ID")
    users = [args.user] if args.user else [u.address for u in StaticDirectory.from_config(cfg).all_users()]
    st = cfg.state
    store = open_store(st.backend, path=str(cfg.path(st.path)) if st.backend == "sqlite" else "", dsn=st.dsn,
                       purge_interval=None)
    await store.start()
    try:
        print(await act(store, args.action, users, args.device_id, args.account_only), end="")
    except DeviceAdminError as exc:
        return _fail(str(exc), 1)
    finally:
        await store.close()
    return 0


async def _check(cfg) -> int:
    from .context import server_ssl_context
    from .services.backends import Backends
    from .services.directory import StaticDirectory
    failed = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal failed
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")

    line(True, "config", "parsed and valid")
    try:
        server_ssl_context(cfg)
        line(True, "tls", f"{cfg.path(cfg.tls.cert)} matches its key")
    except tls.CertificateError as exc:
        line(False, "tls", str(exc))
    try:
        directory = StaticDirectory.from_config(cfg)
        line(True, "directory", f"{len(directory.all_users())} users")
    except ConfigError as exc:
        line(False, "directory", str(exc))
    for p in await Backends(cfg).probe_all():
        line(p.ok, f"backend {p.name} ({p.type})", f"{p.detail} [{p.seconds * 1000:.0f} ms]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
