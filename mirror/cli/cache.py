"""`imgmirror cache info` and `imgmirror cache prune`: their arguments and what they print."""

from __future__ import annotations

import json
import sys
import time

from ..api import parse_size
from ..core.units import human
from ..progress import Progress

CACHE_HELP = "the cache directory (default: $XDG_CACHE_HOME/imgmirror, else ~/.cache/imgmirror)"


def add_parser(subparsers) -> None:
    """Add `cache` (with `info` and `prune`) to the CLI's subparsers; each sets `handler`."""
    c = subparsers.add_parser(
        "cache", help="what the cache holds (info); remove what no manifest needs (prune)",
        description="The content-addressed cache sync downloads into. Every run records when it used "
        "each blob; info shows the cache, prune removes blobs by those rules (docs/cache.md).")
    sub = c.add_subparsers(dest="cache_command", metavar="{info,prune}", required=True)

    i = sub.add_parser("info", help="size, blob count, oldest and newest use",
                       description="What the cache holds: its size, its blobs, their oldest and newest "
                       "use. Read-only; runs beside a sync.")
    i.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(handler=cmd_info)

    p = sub.add_parser(
        "prune", help="remove blobs no kept manifest needs and not used lately",
        description="Remove the blobs that no --keep manifest needs and that were not used for "
        "--unused-for; with --max-size, least recently used first, only until the cache is under "
        "SIZE. Kept manifests are resolved as sync --dry-run does; an image that does not resolve "
        "makes prune remove nothing. Runs under the cache lock (exit 3 while a sync holds it).")
    p.add_argument("--cache", metavar="DIR", help=CACHE_HELP + "; a kept manifest's cache: is not used")
    p.add_argument("--keep", metavar="MANIFEST", nargs="+", action="extend", default=[],
                   help="keep every blob the images of this mirror.yaml need (repeat, or give several). "
                   "Without --keep no blob is protected by a manifest: only --unused-for and --max-size decide")
    p.add_argument("--unused-for", metavar="AGE",
                   help="remove only blobs not used for AGE (30d, 12h, 2w; s, m, h, d, w)")
    p.add_argument("--max-size", metavar="SIZE",
                   help="remove least recently used first, only until the cache holds at most SIZE "
                   "(200G; K, M, G, T)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    p.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for a running sync's cache lock (default: exit 3 at once)")
    p.set_defaults(handler=cmd_prune)


def _ago(t: float, now: float) -> str:
    s = max(0.0, now - t)
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = int(s // n)
            return f"{k} {unit}{'s' if k != 1 else ''} ago"
    return "just now"


def cmd_info(args) -> int:
    from ..engine.prune_cache import cache_info, iso
    info = cache_info(args.cache)
    for w in info.warnings:
        print(f"imgmirror: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
        return 0
    now = time.time()
    print(f"cache {info.path}")
    print(f"  {info.blobs} blobs, {human(info.bytes)} ({info.bytes} bytes)")
    if info.blobs:
        print(f"  oldest use {iso(info.oldest_use)} ({_ago(info.oldest_use, now)})")
        print(f"  newest use {iso(info.newest_use)} ({_ago(info.newest_use, now)})")
        print(f"  use times: {info.recorded} blobs recorded, {info.blobs - info.recorded} from file times")
    if info.in_use:
        print(f"  in use by {info.in_use}")
    return 0


def cmd_prune(args) -> int:
    from ..engine.prune_cache import iso, parse_age, prune
    unused_for = parse_age(args.unused_for) if args.unused_for is not None else None
    max_size = parse_size(args.max_size, minimum=0) if args.max_size is not None else None
    r = prune(args.cache, keep=args.keep, unused_for=unused_for, max_size=max_size, dry_run=args.dry_run,
              wait_lock=args.wait_lock, progress=Progress())
    verb = "would remove" if r.dry_run else "removed"
    for e in r.removed:
        print(f"{verb} {e.digest} {human(e.size):>10}  last used {iso(e.last_use)}")
    kept = []
    if args.keep:
        kept.append(f"{r.needed} needed by the kept manifests")
    if r.unused_for is not None:
        kept.append(f"{r.recent} used within {args.unused_for.strip()}")
    if r.max_size is not None:
        kept.append(f"{r.spared} left under --max-size {args.max_size}")
    after = f"the cache {'would hold' if r.dry_run else 'holds'} {r.blobs_left} blobs, {human(r.bytes_left)}" + \
        (f" ({', '.join(kept)})" if kept else "")
    if r.dry_run:
        print(f"prune (dry run): would free {human(r.freed)} ({len(r.removed)} blobs); nothing was removed; {after}")
    else:
        print(f"prune: freed {human(r.freed)} ({len(r.removed)} blobs); {after}")
    if r.max_size is not None and r.bytes_left > r.max_size:
        print(f"imgmirror: warning: the cache is still {human(r.bytes_left - r.max_size)} over --max-size "
              f"{args.max_size}: the rest is needed by the kept manifests or used within --unused-for",
              file=sys.stderr)
    return 0
