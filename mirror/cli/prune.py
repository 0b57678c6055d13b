"""`imgmirror prune`: its arguments, the listing it prints, and its exit code (0 all done, 1 some
failed, 2 usage or an invalid manifest)."""

from __future__ import annotations

import os
import sys

VERBS = {"listed": "would delete", "deleted": "deleted", "kept-because-referenced": "kept", "failed": "FAILED"}


def add_parser(subparsers) -> None:
    """Add `prune` to the CLI's subparsers; it sets `handler`."""
    p = subparsers.add_parser("prune", help="list what is under --to that mirror.yaml no longer selects; "
                              "delete it with --yes")
    p.add_argument("manifest", help="the mirror.yaml whose images are to stay")
    p.add_argument("--to", required=True, metavar="REGISTRY[/PREFIX]",
                   help="the registry and path prefix imgmirror pushes into (as for sync --to and push)")
    p.add_argument("--yes", action="store_true", help="delete what is listed (default: list only, delete nothing)")
    p.add_argument("--report", metavar="FILE.json", help="write a JSON report: one entry per tag or manifest")
    p.add_argument("--cache", help="cache directory (default: cache: in the manifest, else $XDG_CACHE_HOME/imgmirror)")
    p.add_argument("--jobs", type=int, help="parallel requests (default: concurrency:, 8)")
    p.add_argument("--insecure", action="store_true", help="the target: HTTPS without verification, else plain HTTP")
    p.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's cache lock (default: exit 3 at once)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="also every image resolved")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args) -> int:
    """`imgmirror prune MANIFEST --to REGISTRY[/PREFIX] [--yes]`."""
    from ..engine.prune import prune
    from ..progress import Progress
    from . import _write_json         # here: this module is imported while mirror.cli is

    if "/" not in args.to.strip().strip("/"):
        print(f"imgmirror: warning: --to {args.to} has no prefix: every repository of the registry is looked "
              "at, and those no entry of the manifest maps to are pruned whole", file=sys.stderr)
    result = prune(args.manifest, args.to, yes=args.yes, cache=args.cache, jobs=args.jobs,
                   insecure=args.insecure, wait_lock=args.wait_lock, progress=Progress(verbosity=args.verbose))
    if args.report:
        from pathlib import Path
        _write_json(Path(args.report), result.to_json())
    print_result(result, os.path.basename(args.manifest))
    if result.deletes_disabled:
        print(f"imgmirror: error: {result.deletes_disabled}", file=sys.stderr)
    return 0 if result.totals.failed == 0 else 1


def name_of(host: str, e) -> str:
    """`host/repo:tag`, `host/repo@sha256:…`, or `host/repo` for the repository as a whole."""
    if e.tag is not None:
        return f"{host}/{e.repository}:{e.tag}"
    return f"{host}/{e.repository}@{e.digest}" if e.digest else f"{host}/{e.repository}"


def print_result(result, manifest: str = "mirror.yaml") -> None:
    """One line per entry, then what was done (or how to do it)."""
    host = result.destination.split("/", 1)[0]
    for e in result.entries:
        line = f"{VERBS[e.action]:<12} {name_of(host, e)}"
        if e.tag is not None and e.digest:
            line += f" {e.digest}"
        if e.error:
            line += f": {e.error}"
        elif e.reason:
            line += f" ({e.reason})"
        print(line)
    t = result.totals
    pruned = _n(t.tags, "tag") + (f" and {_n(t.manifests, 'manifest')} by digest" if t.manifests else "")
    looked = f"{_n(t.repositories, 'repository', 'repositories')} under {result.destination}"
    tail = f"; {t.kept} kept because referenced, {t.failed} failed"
    if not t.tags and not t.manifests:
        print(f"prune: nothing in the {looked} that {manifest} does not select{tail}")
    elif not result.deleting:
        print(f"prune: {pruned} in the {looked} not selected by {manifest}{tail}; nothing was "
              "deleted: run the same command with --yes to delete them")
    else:
        done = pruned if t.deleted == t.tags + t.manifests else f"{t.deleted} of {pruned}"
        print(f"prune: deleted {done} in the {looked} ({_n(t.deletes, 'DELETE request')}){tail}")
        if t.deleted:
            print("prune: a registry frees the space of the blobs only when it collects garbage "
                  "(distribution: registry garbage-collect CONFIG, while it is read-only or stopped)")


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"
