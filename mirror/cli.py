"""The `imgmirror` command: argument parsing, and the one place errors become exit codes.

Exit codes: 0 all mirrored; 1 some images failed (or another error); 2 invalid manifest or
usage (nothing fetched); 3 another run holds the cache lock; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import MirrorError, UsageError, exit_code
from .progress import Progress, human, make_progress
from .spec import load_spec
from .store import Store, default_cache_dir
from .sync import SyncOptions, SyncResult, Syncer


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # usage errors exit 2 through the same path as everything else
        raise UsageError(f"{message} (see `imgmirror {self.prog.split()[-1]} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imgmirror", description="Mirror container images into a verified OCI bundle.")
    p.add_argument("--version", action="version", version=f"imgmirror {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("sync", help="mirror the images of a manifest into a bundle")
    s.add_argument("manifest", help="the mirror.yaml to read")
    s.add_argument("-o", "--output", help="bundle path (a path ending in / or a directory: a layout directory)")
    s.add_argument("--cache", help="cache directory (default: cache: in the manifest, else $XDG_CACHE_HOME/imgmirror)")
    s.add_argument("--jobs", type=int, help="parallel blob transfers in all (default: concurrency:, 8)")
    s.add_argument("--dry-run", action="store_true", help="resolve and print the plan; download no blob")
    s.add_argument("--report", help="write a JSON report to this file")
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed image")
    s.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's cache lock (default: exit 3 at once)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    s.add_argument("-v", "--verbose", action="count", default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        return cmd_sync(args)
    except MirrorError as exc:
        print(f"imgmirror: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("imgmirror: interrupted; nothing partial was left at a final path", file=sys.stderr)
        return 130


def cmd_sync(args) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    spec = load_spec(args.manifest)      # validation before any network request
    cache = args.cache or spec.cache
    if cache and not args.cache and not os.path.isabs(os.path.expanduser(cache)):
        cache = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(args.manifest)), cache))
    store = Store(cache or default_cache_dir())
    verbosity = -1 if args.quiet else args.verbose
    progress = make_progress(args.progress, verbosity)
    opts = SyncOptions(output=args.output, jobs=args.jobs, dry_run=args.dry_run, fail_fast=args.fail_fast)
    try:
        with store.lock(wait=args.wait_lock):
            result = asyncio.run(Syncer(spec, store, opts, progress).run())
    finally:
        progress.close()
    if args.dry_run:
        print_plan(result, store)
    if args.report:
        _write_json(Path(args.report), result.to_json())
    summarize(result, progress)
    return 0 if result.totals["failed"] == 0 else 1


def print_plan(result: SyncResult, store: Store) -> None:
    """The --dry-run plan on stdout: one line per image, then totals."""
    for r in result.images:
        if r.status != "ok":
            print(f"FAILED  {r.reference}: {r.error}")
            continue
        print(f"{r.reference}\n    {r.digest} {r.media_type}\n    platforms: {', '.join(r.platforms)}"
              f"\n    {r.blobs} blobs, {human(r.bytes)}, {human(r.new_bytes)} to fetch")
    t = result.totals
    print(f"plan: {t['ok']} images, {t['blobs']} unique blobs, {human(t['bytes'])}; "
          f"nothing downloaded (dry run)")


def summarize(result: SyncResult, progress: Progress) -> None:
    t, b = result.totals, result.bundle
    where = f"; bundle {b['path']}" + (f" ({human(b['size'])}, {b['sha256']})" if b and "size" in b else "") \
        if b else ""
    progress.line(f"summary: {t['ok']} of {t['images']} images mirrored, {t['failed']} failed, "
                  f"{t['blobs']} unique blobs ({human(t['bytes'])}), {human(t['downloaded_bytes'])} "
                  f"downloaded in {t['seconds']:.1f}s{where}")
    for r in result.images:
        if r.status == "failed":
            progress.line(f"failed: {r.reference}: {r.error}")


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MirrorError(f"--report {path}: cannot write ({exc.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
