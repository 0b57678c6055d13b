"""`imgmirror serve`: its arguments, the warnings, and the run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from .. import api
from ..api import DEFAULT_LISTEN, parse_listen  # noqa: F401  (parse_listen: importable from here)
from ..core.reference import is_loopback


def add_parser(subparsers) -> None:
    """Add `serve` to the CLI's subparsers; it sets `handler`."""
    s = subparsers.add_parser("serve", help="serve bundles as a read-only registry")
    s.add_argument("bundle", nargs="+", help="bundle tars or layout directories")
    s.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}, loopback; a non-loopback "
                   "host is served with a warning)")
    s.add_argument("--policy", metavar="MIRROR.yaml",
                   help="serve only the images that verify against this manifest's trust: policy")
    s.add_argument("--key", metavar="COSIGN.pub", help="serve only the images signed with this key")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    """`imgmirror serve`: runs until Ctrl-C or SIGTERM, then exits 0."""
    host, _ = parse_listen(args.listen)
    if not is_loopback(host):
        print(f"imgmirror: warning: listening on {host}, not loopback: anyone who can reach it can "
              "pull every image of the bundles (no authentication, no TLS)", file=sys.stderr)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()    # only it may set handlers
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        with api.serve(args.bundle, listen=args.listen, policy=args.policy, key=args.key) as server:
            for w in server.warnings:
                print(f"imgmirror: warning: {w}", file=sys.stderr)
            print(f"serving {server.images} images on {server.url}", flush=True)
            while not stop.wait(0.5):        # a timed wait: Ctrl-C is seen at once on every platform
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    print("imgmirror: serve stopped", file=sys.stderr)
    return 0
