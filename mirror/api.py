"""The Python API: what the `imgmirror` commands do, as functions that return typed results and
raise the error tree of mirror.errors. The CLI is a thin user of it (parsing and printing only).

    sync(manifest, ...)        -> SyncResult      mirror.yaml -> bundle and/or registry
    push(bundles, to, ...)     -> PushResult      bundle(s) -> registry
    verify(bundle, ...)        -> VerifyResult    every blob and reference checked; writes nothing
    list_images(bundle)        -> list[ImageInfo]
    extract(bundles, ref, out) -> ExtractResult   one image as a single-image OCI archive
    serve(bundles, ...)        -> Server          a read-only registry in a background thread

A library call prints nothing unless given a `progress` (mirror.progress.Progress). Everything
heavy (the engine, aiohttp, the bundle reader) is imported inside the functions, so `import
mirror` stays cheap and `verify`/`list_images` never load the network stack.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .errors import UsageError
from .progress import Progress

if TYPE_CHECKING:
    from .bundle.verify import VerifyResult
    from .engine.push import PushResult
    from .engine.sync import SyncResult

PathLike = str | os.PathLike
DEFAULT_LISTEN = "127.0.0.1:5000"      # as mirror.server's; kept here so parsing needs no aiohttp


class _Silent(Progress):
    """progress=None: a library call writes nothing to the terminal."""

    def line(self, text: str) -> None:
        pass


def _progress(progress: Progress | None) -> Progress:
    return _Silent() if progress is None else progress


def parse_size(text: str | int, minimum: int = 64 * 1024) -> int:
    """`64M` -> 67108864 (K, M, G, T are powers of 1024); an int is taken as bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        t = str(text).strip().upper().removesuffix("B").removesuffix("I")
        number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
        try:
            value = int(float(number) * units[unit])
        except ValueError:
            raise UsageError(f"{text!r} is not a size; write e.g. 64M, 700M or 4G") from None
    if value < minimum:
        raise UsageError(f"{text!r}: the size must be at least {minimum} bytes")
    return value


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


# -- sync and push --------------------------------------------------------------------------------

def sync(manifest, *, output: PathLike | None = None, cache: PathLike | None = None,
         jobs: int | None = None, dry_run: bool = False, fail_fast: bool = False,
         to: str | None = None, since: PathLike | None = None, split: int | str | None = None,
         progress: Progress | None = None, wait_lock: float = 0.0, lock: PathLike | None = None,
         locked: PathLike | None = None, shard: str | None = None, shards: int | None = None) -> SyncResult:
    """Mirror the images of `manifest` (a mirror.yaml path, or a MirrorSpec from
    mirror.specfile.load_spec) into a bundle, a registry (`to`), or both.

    Images that fail are reported in the result (`status == "failed"`), not raised; an invalid
    manifest or argument (SpecError, UsageError, before any request), a held cache lock
    (LockHeldError) or --fail-fast's stop (MirrorError) are raised.

    `lock`: write what the run resolved there (YAML, for review); `locked`: mirror exactly the
    digests of that lock, resolving no tag (an image the lock lacks is a UsageError).
    `shard` ("I/N") or `shards` (N, the index from JOB_COMPLETION_INDEX): this run takes its
    part of the manifest's repositories (engine/shard.py); `{shard}` in the output is `1of4`…
    """
    from .bundle.base import load_base
    from .cache import Store, default_cache_dir
    from .core.spec import MirrorSpec
    from .engine.push import Destination
    from .engine.sync import SyncOptions, Syncer
    from .specfile import beside, load_spec

    if jobs is not None and jobs < 1:
        raise UsageError("--jobs must be at least 1")
    output = os.fspath(output) if output is not None else None
    split = parse_size(split, minimum=4096) if split else None
    if since and to and not output:
        raise UsageError("--since makes a differential bundle: give -o too, or drop --since to push "
                         "everything with --to")
    if split and to and not output:
        raise UsageError("--split cuts a bundle tar into parts; with --to, give -o too")
    if split and output and (output.endswith("/") or os.path.isdir(output)):
        raise UsageError("--split applies to a bundle tar, not to a layout directory")
    spec = manifest if isinstance(manifest, MirrorSpec) else load_spec(manifest)   # before any request
    cache = cache or (beside(spec.path, spec.cache) if spec.cache else None)
    store = Store(cache or default_cache_dir())
    from .engine.lock import read_lock
    from .engine.shard import Shard
    opts = SyncOptions(output=output, jobs=jobs, dry_run=dry_run, fail_fast=fail_fast,
                       push_to=Destination.parse(to) if to else None, split=split,
                       since=load_base(os.fspath(since)) if since else None,
                       lock=os.fspath(lock) if lock else None, locked=read_lock(locked) if locked else None,
                       shard=Shard.parse(shard, shards))
    with store.lock(wait=wait_lock):
        return _run(Syncer(spec, store, opts, _progress(progress)).run())


def push(bundles, to: str, *, config=None, jobs: int = 8, insecure: bool = False,
         chunk_size: int | str = "64M", dry_run: bool = False, fail_fast: bool = False,
         progress: Progress | None = None, policy: PathLike | None = None, key: PathLike | None = None
         ) -> PushResult:
    """Push the images of `bundles` (one path, or a base and its differential bundles in order)
    into the registry `to` (`host[:port][/prefix]`), digest for digest.

    `config`: a mirror.yaml (path or MirrorSpec) whose `registries:` entry for the host gives
    credentials and TLS settings. Images that fail are in the result, not raised.
    `policy` (a mirror.yaml with `trust:`) or `key` (a PEM public key every image must be signed
    with): images that do not verify from the bundle are refused before any manifest is pushed,
    and reported failed.
    """
    from .core.diff import expected_holders
    from .core.oci import ANN_TARGET
    from .core.spec import MirrorSpec, RegistryConfig
    from .engine.push import Destination, PushImage, PushOptions, push_images
    from .specfile import load_spec
    from .bundle.reader import open_bundle, open_bundles

    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    paths = _paths(bundles)
    dest = Destination.parse(to)
    chunk = parse_size(chunk_size)
    spec = config if isinstance(config, MirrorSpec) or config is None else load_spec(config)
    cfg = (spec.registries if spec else {}).get(dest.host, RegistryConfig())
    reader = open_bundles(paths) if len(paths) > 1 else open_bundle(paths[0])
    try:
        unnamed = [desc.digest for ref, desc in reader.images if not ref]
        if unnamed:
            raise UsageError(f"{paths[0]}: index.json entries without org.opencontainers.image.ref.name "
                             f"({', '.join(unnamed)}); push needs a name for each image")
        entries, refused = list(reader.images), []
        trust = load_trust(policy, key)
        if trust is not None:
            entries, refused = _trusted(reader, entries, trust, _progress(progress))
        images = [PushImage(ref, desc, desc.annotations.get(ANN_TARGET)) for ref, desc in entries]
        opts = PushOptions(jobs=jobs, chunk_size=chunk, dry_run=dry_run, fail_fast=fail_fast)
        if refused and fail_fast:
            raise UsageError(f"{refused[0].reference}: {refused[0].error} (--fail-fast: stopped)")
        result = _run(push_images(reader, images, dest, cfg, opts, _progress(progress), insecure=insecure,
                                  holders=expected_holders(reader)))
        if refused:
            result.images[:0] = refused
            result.totals.images += len(refused)
            result.totals.failed += len(refused)
        return result
    finally:
        reader.close()


def load_trust(policy: PathLike | None = None, key: PathLike | None = None):
    """The trust policy of `policy` (a mirror.yaml with `trust:`), or one that wants every image
    signed with the PEM public key `key`; None when neither is given."""
    if policy is not None and key is not None:
        raise UsageError("give --policy or --key, not both")
    if policy is not None:
        from .specfile import load_spec
        spec = load_spec(policy)
        if spec.trust is None:
            raise UsageError(f"{os.fspath(policy)}: no trust: section; add one (see README, Trust) or use --key")
        return spec.trust
    if key is not None:
        from .core.spec import TrustRule, TrustSpec
        from .trust.cosign import load_public_key
        try:
            pem = Path(key).read_bytes()
            load_public_key(pem)
        except OSError as exc:
            raise UsageError(f"--key {os.fspath(key)}: cannot read it ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise UsageError(f"--key {os.fspath(key)}: {exc}") from None
        name = os.path.basename(os.fspath(key))
        return TrustSpec(keys={name: pem}, key_files={name: os.fspath(key)},
                         policies=(TrustRule(where="--key", match="*", signed_by=(name,)),))
    return None


def _trusted(reader, entries, trust, progress):
    """The entries of a bundle that may be pushed under `trust`, and PushReports for the rest."""
    from .bundle.trustcheck import partition
    from .engine.push import PushReport
    kept, refused = partition(reader, entries, trust)
    reports = []
    for j in refused:
        error = f"trust policy {j.verdict.policy}: {j.verdict.reason}"
        reports.append(PushReport(j.reference, "(not pushed)", j.digest, status="failed", error=error))
        progress.image_done(j.reference, False, error)
    return kept, reports


def _run(coro):
    import asyncio
    return asyncio.run(coro)


def _paths(bundles) -> list[str]:
    if isinstance(bundles, (str, os.PathLike)):
        return [os.fspath(bundles)]
    paths = [os.fspath(b) for b in bundles]
    if not paths:
        raise UsageError("give at least one bundle")
    return paths


# -- reading a bundle -----------------------------------------------------------------------------

def verify(bundle: PathLike | BinaryIO, *, bases=(), name: str | None = None,
           policy: PathLike | None = None, key: PathLike | None = None) -> VerifyResult:
    """Check every blob and reference of a bundle (a tar, its first part or base name, a layout
    directory, or a binary stream of a tar); write nothing. Problems are in the result (`.ok`,
    `.problems`), not raised; a path that is not a bundle raises NotABundleError.

    `bases`: for a differential bundle, the earlier bundles (or their reports) that must carry
    the blobs it expects. `name`: a stream's label in the result (default: its file name).
    `policy` (a mirror.yaml with `trust:`) or `key` (a PEM public key): every image is also
    checked against the trust policy from the bundle alone, offline (`.trust`); an image that
    does not verify is a problem.
    """
    from .bundle.verify import verify_bundle

    bases = [os.fspath(b) for b in bases]
    trust = load_trust(policy, key)
    if hasattr(bundle, "read"):
        if trust is not None:
            raise UsageError("--policy and --key read the bundle in place: give a file, not a stream")
        name = name or getattr(bundle, "name", None)
        return verify_bundle(name if isinstance(name, str) else "<stream>", stream=bundle, bases=bases)
    res = verify_bundle(os.fspath(bundle), bases=bases)
    if trust is not None:
        from .bundle.reader import open_bundle
        from .bundle.trustcheck import check_bundle
        with open_bundle(os.fspath(bundle)) as reader:
            res.trust = check_bundle(reader, reader.images, trust)
        res.problems += [f"{j.reference}: trust policy {j.verdict.policy}: {j.verdict.reason}"
                         for j in res.trust if not j.verdict.ok]
    return res


@dataclass(frozen=True)
class ImageInfo:
    """One image of a bundle, as `imgmirror list` shows it. `size` is None, and `problem` says
    why, when its manifests are damaged."""

    reference: str | None
    digest: str
    media_type: str
    platforms: tuple[str, ...] = ()
    size: int | None = None
    problem: str | None = None
    source_digest: str | None = None      # the index's digest at the source, when rewritten
    notes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: dict) -> ImageInfo:
        return cls(d["reference"], d["digest"], d["media_type"], tuple(d["platforms"]), d["size"],
                   d.get("problem"), d.get("source_digest"), tuple(d.get("notes", ())))

    def to_json(self) -> dict:
        """The object `imgmirror list --json` prints (keys absent when empty, as there)."""
        out = {"reference": self.reference, "digest": self.digest, "media_type": self.media_type,
               "platforms": list(self.platforms), "size": self.size}
        if self.problem is not None:
            out["problem"] = self.problem
        if self.source_digest is not None:
            out["source_digest"] = self.source_digest
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def list_images(bundle: PathLike) -> list[ImageInfo]:
    """The images of a bundle, read in place. A damaged image is listed with its `problem`
    rather than raised; a path that is not a bundle raises NotABundleError."""
    from .bundle.listing import list_bundle

    return [ImageInfo.from_json(d) for d in list_bundle(os.fspath(bundle))]


@dataclass(frozen=True)
class ExtractResult:
    """The single-image archive `extract` wrote."""

    path: str
    reference: str
    digest: str
    media_type: str
    blobs: int
    bytes: int             # the image's blobs
    size: int              # the archive
    sha256: str            # of the archive
    docker_load: bool      # manifest.json has an entry (classic `docker load` can read it)
    notes: tuple[str, ...] = ()


def extract(bundles, ref: str, output: PathLike, *, load_platform: str | None = None) -> ExtractResult:
    """Write the image `ref` (as list_images names it; a short form like alpine:3.19 is
    normalised) of `bundles` (one path, or a base and its differential bundles) as a
    single-image OCI archive at `output`. An unknown `ref` raises UsageError."""
    from .bundle.extract import extract as _extract

    res = _extract(_paths(bundles), ref, os.fspath(output), load_platform)
    return ExtractResult(**{**res, "notes": tuple(res["notes"])})


# -- serve ----------------------------------------------------------------------------------------

@dataclass
class Server:
    """A running `serve`: `url` (http://host:port), `address` (host:port, the registry name in
    image references), `images` served, `warnings` about entries not served. `close()` (or
    leaving a `with` block) stops it and closes the bundles."""

    host: str
    port: int
    images: int
    warnings: list[str] = field(default_factory=list)
    _stop: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def close(self) -> None:
        """Stop serving; idempotent."""
        stop, self._stop = self._stop, None
        if stop:
            stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(bundles, *, listen: str = DEFAULT_LISTEN, policy: PathLike | None = None,
          key: PathLike | None = None) -> Server:
    """Serve `bundles` (paths) as a read-only registry on `listen` (`HOST:PORT`, port 0: any free
    one) from a background thread; returns at once with the running Server. Two bundles naming
    one tag differently raise UsageError; an address in use raises MirrorError. With `policy` or
    `key`, images that do not verify against it are not served (each named in `warnings`)."""
    import asyncio
    import threading

    from .server import load_catalog, start_server

    host, port = parse_listen(listen)
    catalog = load_catalog(_paths(bundles), trust=load_trust(policy, key))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="imgmirror-serve", daemon=True)
    thread.start()

    def shut(runner=None) -> None:
        async def down():
            if runner is not None:
                await runner.cleanup()            # closes the catalog's readers
            await loop.shutdown_default_executor()
        asyncio.run_coroutine_threadsafe(down(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    try:
        runner, actual = asyncio.run_coroutine_threadsafe(
            start_server(host=host, port=port, catalog=catalog), loop).result()
    except BaseException:
        shut()                                   # start_server closed the catalog
        raise
    return Server(host, actual, catalog.images, list(catalog.warnings), lambda: shut(runner))


__all__ = ["sync", "push", "verify", "list_images", "extract", "serve", "ImageInfo", "ExtractResult",
           "Server", "parse_size", "parse_listen"]
