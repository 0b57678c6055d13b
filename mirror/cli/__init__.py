"""The `imgmirror` command: argument parsing, and the one place errors become exit codes.

Exit codes: 0 all mirrored; 1 some images failed (or another error); 2 invalid manifest or
usage (nothing fetched); 3 another run holds the cache lock; 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from .. import __version__, api
from ..errors import MirrorError, UsageError, exit_code
from ..core.units import human
from ..progress import Progress, make_progress
from .cache import add_parser as add_cache_command
from .prune import add_parser as add_prune_command
from .serve import add_parser as add_serve_command
from .bundle import add_extract_parser as add_extract_command
from .bundle import add_parsers as add_bundle_commands

# Everything a command does is in mirror.api, which imports the engine (and aiohttp) only inside
# the functions that need it: `imgmirror --version`, `verify` and `list` never load the network.


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # usage errors exit 2 through the same path as everything else
        raise UsageError(f"{message} (see `{self.prog} --help`)")   # prog: `imgmirror [sub]`


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imgmirror", description="Mirror container images into a verified OCI bundle.")
    p.add_argument("--version", action="version", version=f"imgmirror {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("sync", help="mirror the images of a manifest into a bundle")
    s.add_argument("manifest", help="the mirror.yaml to read")
    s.add_argument("-o", "--output", help="bundle path (a path ending in / or a directory: a layout directory)")
    s.add_argument("--cache", help="cache directory (default: cache: in the manifest, else $XDG_CACHE_HOME/imgmirror)")
    s.add_argument("--jobs", type=int, help="blob transfers at once per registry host (default: concurrency:, 8)")
    s.add_argument("--dry-run", action="store_true", help="resolve and print the plan; download no blob")
    s.add_argument("--report", help="write a JSON report to this file")
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed image")
    s.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's cache lock (default: exit 3 at once)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    s.add_argument("--to", metavar="REGISTRY[/PREFIX]",
                   help="push into this registry from the cache (no bundle unless -o is given too)")
    s.add_argument("--since", metavar="PREVIOUS", help="a differential bundle: leave out the blobs "
                   "PREVIOUS (an earlier bundle, or its --report JSON) carried")
    s.add_argument("--split", metavar="SIZE", help="write the bundle tar as NAME.tar.001, .002, … of at "
                   "most SIZE each (K, M, G suffixes), and NAME.tar.sha256sums")
    s.add_argument("--lock", metavar="FILE", help="write what this run resolved (every image's tag and digest) "
                   "to FILE, YAML for review and version control")
    s.add_argument("--locked", metavar="FILE", help="mirror exactly the digests of this lock: no tag is "
                   "resolved (a tag that moved is reported); an image the lock lacks is an error")
    s.add_argument("--shard", metavar="I/N", help="take part I (from 0) of N of the manifest's repositories; "
                   "every shard computes the same partition ({shard} in the output path: 1of4, …)")
    s.add_argument("--shards", type=int, metavar="N", help="as --shard, with I from $JOB_COMPLETION_INDEX "
                   "(a Kubernetes Indexed Job)")
    s.add_argument("--metrics", metavar="FILE.prom", help="write Prometheus text-format metrics of this run "
                   "(for node_exporter's textfile collector), atomically")
    s.add_argument("-v", "--verbose", action="count", default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")

    u = sub.add_parser("push", help="push the images of a bundle into a registry")
    u.add_argument("bundle", nargs="+", help="a bundle tar written by sync, or a layout directory; "
                   "several: a base and the differential bundles made on it, in order")
    u.add_argument("--to", required=True, metavar="REGISTRY[/PREFIX]", help="the registry (and path prefix)")
    u.add_argument("--config", metavar="MIRROR.yaml", help="take the registry's settings and credentials "
                   "from the registries: section of this manifest")
    u.add_argument("--jobs", type=int, default=8, help="blob transfers at once (default 8)")
    u.add_argument("--insecure", action="store_true", help="HTTPS without verification, else plain HTTP")
    u.add_argument("--chunk-size", default="64M", metavar="SIZE",
                   help="upload blobs above SIZE in chunks (default 64M; K, M, G suffixes)")
    u.add_argument("--dry-run", action="store_true", help="show what would be pushed; write nothing")
    u.add_argument("--report", help="write a JSON report to this file")
    u.add_argument("--fail-fast", action="store_true", help="stop at the first failed image")
    add_trust_options(u, "refuse, before any manifest, images that do not verify")
    u.add_argument("--metrics", metavar="FILE.prom", help="write Prometheus text-format metrics of this run, "
                   "atomically")
    u.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    u.add_argument("-v", "--verbose", action="count", default=0)
    u.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")
    add_bundle_commands(sub)            # verify, list
    add_serve_command(sub)              # serve
    add_extract_command(sub)            # extract
    add_prune_command(sub)              # prune
    add_cache_command(sub)              # cache info, cache prune
    return p


def console() -> int:
    """The `imgmirror` command: main(), then the process ends without the interpreter's last
    garbage collection over every object of the run (~0.1 s after a large sync; the operating
    system frees the memory anyway). Not for in-process callers: they keep collecting."""
    code = main()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the command line, run the command, return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        if hasattr(args, "handler"):         # verify, list, serve, extract, prune, cache
            return args.handler(args)
        return _with_metrics(cmd_push if args.command == "push" else cmd_sync, args)
    except MirrorError as exc:
        print(f"imgmirror: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("imgmirror: interrupted; nothing partial was left at a final path", file=sys.stderr)
        return 130


def _with_metrics(cmd, args) -> int:
    """Run sync or push; with --metrics, write the run's metrics whatever its end (exit code)."""
    started, code = time.time(), 1
    try:
        code = cmd(args)
        return code
    except MirrorError as exc:
        code = exit_code(exc)
        raise
    except KeyboardInterrupt:
        code = 130
        raise
    finally:
        if getattr(args, "metrics", None):
            from ..metrics import write_metrics
            write_metrics(args.metrics, command=args.command, manifest=args.bundle[0] if args.command == "push" else args.manifest,
                          started=started, ended=time.time(), exit_code=code, result=getattr(args, "result", None))


def cmd_sync(args) -> int:
    progress = _Deferred(args.progress, -1 if args.quiet else args.verbose)
    try:
        result = api.sync(args.manifest, output=args.output, cache=args.cache, jobs=args.jobs,
                          dry_run=args.dry_run, fail_fast=args.fail_fast, to=args.to, since=args.since,
                          split=args.split, progress=progress, wait_lock=args.wait_lock, lock=args.lock,
                          locked=args.locked, shard=args.shard, shards=args.shards)
        args.result = result
    finally:
        progress.close()
    if args.dry_run:
        print_plan(result)
    if args.report:
        _write_json(Path(args.report), result.to_json())
    summarize(result, progress)
    if result.push:
        summarize_push(result.push, progress)
    failed = result.totals.failed + (result.push.totals.failed if result.push else 0)
    if result.totals.bundle_error:
        progress.line(f"error: no bundle was written: {result.totals.bundle_error}")
        return 1
    return 0 if failed == 0 else 1


def cmd_push(args) -> int:
    progress = _Deferred(args.progress, -1 if args.quiet else args.verbose)
    try:
        result = api.push(args.bundle, args.to, config=args.config, jobs=args.jobs, insecure=args.insecure,
                          chunk_size=args.chunk_size, dry_run=args.dry_run, fail_fast=args.fail_fast,
                          progress=progress, policy=args.policy, key=args.key)
        args.result = result
    finally:
        progress.close()
    if args.report:
        _write_json(Path(args.report), result.to_json())
    summarize_push(result, progress, dry_run=args.dry_run)
    return 0 if result.totals.failed == 0 else 1


def add_trust_options(parser, what: str) -> None:
    """--policy MIRROR.yaml / --key COSIGN.pub: the trust policy checked from the bundle alone."""
    parser.add_argument("--policy", metavar="MIRROR.yaml", help=f"the trust: policy of this manifest: {what}")
    parser.add_argument("--key", metavar="COSIGN.pub", help=f"every image signed with this public key: {what}")


class _Deferred(Progress):
    """The Progress the options ask for, made at its first use: an invalid manifest or argument
    (raised before the run starts) then shows its error alone, without empty bars above it."""

    def __init__(self, bars: bool | None, verbosity: int):
        super().__init__(verbosity=verbosity)
        self._bars, self._real = bars, None

    def _get(self) -> Progress:
        if self._real is None:
            self._real = make_progress(self._bars, self.verbosity)
        return self._real

    def line(self, text: str) -> None:
        self._get().line(text)

    def warn(self, text: str) -> None:
        self._get().warn(text)

    def images_total(self, n: int) -> None:
        self._get().images_total(n)

    def bytes_total(self, n: int) -> None:
        self._get().bytes_total(n)

    def advance(self, n: int) -> None:
        self._get().advance(n)

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        self._get().image_done(ref, ok, detail)

    def close(self) -> None:
        if self._real is None:               # nothing happened: the summary needs no bars
            self._real = Progress(verbosity=self.verbosity)
        self._real.close()


def summarize_push(result, progress: Progress, dry_run: bool = False) -> None:
    t = result.totals
    verb = "would push" if dry_run else "pushed"
    progress.line(f"push summary: {t.ok} of {t.images} images {verb} to {result.destination}, "
                  f"{t.failed} failed; {t.blobs_uploaded} blobs uploaded "
                  f"({human(t.uploaded_bytes)}), {t.blobs_mounted} mounted in {t.seconds:.1f}s")
    for r in result.images:
        if r.status == "failed":
            progress.line(f"failed: {r.reference} -> {r.target}: {r.error}")


def print_plan(result) -> None:
    """The --dry-run plan on stdout: one line per image, then totals (and a shard's partition)."""
    if result.shard:
        for part in result.shard["partition"]:
            mine = " (this shard)" if part["shard"] == result.shard["shard"] else ""
            print(f"shard {part['shard']}{mine}: {len(part['repositories'])} repositories, "
                  f"{human(part['bytes'])}: {', '.join(part['repositories']) or '-'}")
    for r in result.images:
        if r.status != "ok":
            print(f"FAILED  {r.reference}: {r.error}")
            continue
        print(f"{r.reference}\n    {r.digest} {r.media_type}\n    platforms: {', '.join(r.platforms)}"
              f"\n    {r.blobs} blobs, {human(r.bytes)}, {human(r.new_bytes)} to fetch")
    t = result.totals
    print(f"plan: {t.ok} images, {t.blobs} unique blobs, {human(t.bytes)}; "
          f"nothing downloaded (dry run)")


def summarize(result, progress: Progress) -> None:
    t, b = result.totals, result.bundle
    where = f"; bundle {b.path}" + (f" ({human(b.size)}, {b.sha256})" if b.size is not None else "") \
        if b else ""
    progress.line(f"summary: {t.ok} of {t.images} images mirrored, {t.failed} failed, "
                  f"{t.blobs} unique blobs ({human(t.bytes)}), {human(t.downloaded_bytes)} "
                  f"downloaded in {t.seconds:.1f}s{where}")
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
