"""`imgmirror serve`: its arguments, the listening address, and the run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys

from ..core.reference import is_loopback
from ..errors import UsageError
from ..serve import DEFAULT_LISTEN, Catalog, load_catalog, start_server


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `PORT` (on 127.0.0.1) -> (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)|(\d+)", text.strip())
    if not m:
        raise UsageError(f"--listen {text!r}: write HOST:PORT, e.g. 127.0.0.1:5000 (0.0.0.0:5000 "
                         "for every interface)")
    host = m.group(1) or m.group(3) or "127.0.0.1"
    port = int(m.group(2) or m.group(4) or m.group(5))
    if port > 65535:
        raise UsageError(f"--listen {text!r}: port {port} is over 65535")
    return host, port


def add_parser(subparsers) -> None:
    """Add `serve` to the CLI's subparsers; it sets `handler`."""
    s = subparsers.add_parser("serve", help="serve bundles as a read-only registry")
    s.add_argument("bundle", nargs="+", help="bundle tars or layout directories")
    s.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}, loopback; a non-loopback "
                   "host is served with a warning)")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    """`imgmirror serve`: runs until Ctrl-C or SIGTERM, then exits 0."""
    host, port = parse_listen(args.listen)
    if not is_loopback(host):
        print(f"imgmirror: warning: listening on {host}, not loopback: anyone who can reach it can "
              "pull every image of the bundles (no authentication, no TLS)", file=sys.stderr)
    catalog = load_catalog(args.bundle)
    for w in catalog.warnings:
        print(f"imgmirror: warning: {w}", file=sys.stderr)
    try:
        asyncio.run(_serve_forever(catalog, host, port))
    except KeyboardInterrupt:
        pass
    print("imgmirror: serve stopped", file=sys.stderr)
    return 0


async def _serve_forever(catalog: Catalog, host: str, port: int) -> None:
    runner, actual = await start_server(host=host, port=port, catalog=catalog)
    try:
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {catalog.images} images on http://{shown}:{actual}", flush=True)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
