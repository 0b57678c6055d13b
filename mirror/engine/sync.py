"""imgmirror sync: mirror.yaml -> resolved images -> unique blobs downloaded once -> bundle."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from ..bundle.writer import BundleContent, BundleImage, LoadEntry, TarWriter, blob_order, write_dir
from ..core.diff import ANN_BASE, ANN_EXPECTED, Base, add_holder, expected_doc, holders_json
from ..errors import BundleError, MirrorError
from ..core.oci import Descriptor, image_platform, sha256_digest
from ..core.platform import Platform, from_oci, matches, parse_platform
from ..core.units import human
from ..progress import Progress
from ..core.reference import Reference
from ..registry.client import Registry
from .resolve import Resolved, resolve
from ..core.selection import select_tags
from ..core.spec import ImageSpec, MirrorSpec, RegistryConfig
from .referrers import discover
from .context import RunContext
from .push import Destination, PushImage, PushOptions, PushResult, push_images
from ..cache import Store, StoreSource
from ..registry.transport import transport_for

DEFAULT_LOAD_PLATFORM = parse_platform("linux/amd64")


@dataclass
class ImageReport:
    """One line of the report: an image and what became of it."""

    source: str
    reference: str
    digest: str | None = None
    source_digest: str | None = None
    media_type: str | None = None
    platforms: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    new_bytes: int = 0
    seconds: float = 0.0
    status: str = "pending"
    error: str | None = None


@dataclass
class SyncOptions:
    """Command-line choices that override or complete the manifest."""

    output: str | None = None
    cache: str | None = None
    jobs: int | None = None
    dry_run: bool = False
    fail_fast: bool = False
    push_to: Destination | None = None     # sync --to: push from the cache into this registry
    split: int | None = None               # --split SIZE: NAME.tar.001, .002, … of at most SIZE bytes
    since: Base | None = None              # --since: a differential bundle on this base


@dataclass
class Item:
    """One image on its way: its report, and once resolved, what it needs."""

    report: ImageReport
    res: Resolved | None
    reg: Registry | None
    started: float
    spec: ImageSpec | None = None


@dataclass
class SyncResult:
    images: list[ImageReport]
    bundle: dict | None
    totals: dict
    push: PushResult | None = None

    def to_json(self) -> dict:
        out = {"images": [asdict(i) for i in self.images], "totals": self.totals, "bundle": self.bundle}
        if self.push:
            out["push"] = self.push.to_json()
        return out


class Syncer:
    """Runs one sync over an open store; `run()` is the whole job."""

    def __init__(self, spec: MirrorSpec, store: Store, opts: SyncOptions, progress: Progress):
        self.spec, self.store, self.opts, self.progress = spec, store, opts, progress
        self.ctx = RunContext()       # this run's threads; closed at the end of run()
        self.clock = time.gmtime()    # {date} and {time} in output: are this moment, once
        self.jobs = asyncio.Semaphore(opts.jobs or spec.concurrency)
        self.registries: dict[str, Registry] = {}
        self.inflight: dict[str, asyncio.Future] = {}
        self.fetched: set[str] = set()      # digests downloaded (and verified) by this run
        self.started: dict[str, asyncio.Future] = {}   # digest -> its BlobWriter, once under way
        self.excluded: set[str] = set()     # --since: blobs the base bundle carried
        self.expected_blob: tuple[str, int] | None = None   # --since: (digest, size) of that list
        self.downloaded = 0

    def registry(self, session: aiohttp.ClientSession, ref: Reference) -> Registry:
        """One Registry (one transport, one token cache, one host semaphore) per host."""
        host = ref.registry
        if host not in self.registries:
            cfg = self.spec.registries.get(host.lower(), RegistryConfig())   # keys are lowercased
            self.registries[host] = Registry(transport_for(session, host, cfg,
                                                           self.opts.jobs or self.spec.concurrency),
                                             hashers=self.ctx.hashers)
        return self.registries[host]

    async def run(self) -> SyncResult:
        """The whole sync; the run's threads are shut down at its end, whatever happens."""
        try:
            return await self._run()
        finally:
            self.ctx.close()

    async def _run(self) -> SyncResult:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        writer: TarWriter | None = None
        pushed: PushResult | None = None
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         trust_env=False) as session:
            refs_per_spec = await asyncio.gather(*(self.expand(session, s) for s in self.spec.images))
            work = [(s, r) for s, rs in zip(self.spec.images, refs_per_spec, strict=True) for r in rs]
            self.progress.images_total(len(work))
            # 1. Resolve every image first: manifests are small, and then the whole blob set is
            #    known, so the bundle can be written while the blobs are still arriving.
            items = await asyncio.gather(*(self.resolve_one(session, s, r) for s, r in work))
            items += await self.referrers(session, items)
            self.fail_fast_check(items)
            live = [it for it in items if it.res is not None]
            tasks: list[asyncio.Future] = []
            try:
                self.plan_differential(live)
                if live and not self.opts.dry_run:
                    # 2. Fetch every missing blob once; write the tar in digest order meanwhile.
                    missing = self.missing(live)
                    self.progress.bytes_total(sum(desc.size for desc, _ in missing.values()))
                    # Start the downloads in the order the tar is written in (largest first), so
                    # the writer keeps pace with them (the semaphore lets them go first-come).
                    for digest in blob_order({d: desc.size for d, (desc, _) in missing.items()}):
                        desc, it = missing[digest]
                        self.blob(it.reg, it.res.ref.repository, desc)
                    tasks = [asyncio.ensure_future(self.fetch_one(it)) for it in live]
                    if self.wants_bundle() and not self.dir_output():
                        writer = TarWriter(Path(self.output_path()), split=self.opts.split)
                        tasks.append(asyncio.ensure_future(self.feed(writer, live)))
                    for fut in asyncio.as_completed(tasks):
                        await fut
                        self.fail_fast_check(items)
                else:
                    for it in live:
                        self.done(it)
                if self.opts.push_to and not self.opts.dry_run:
                    pushed = await self.push([it for it in items if it.report.status == "ok"], session)
            except BaseException:
                everything = tasks + list(self.inflight.values())
                for t in everything:
                    t.cancel()
                await asyncio.gather(*everything, return_exceptions=True)
                if writer:
                    writer.abort()
                raise
        reports = [it.report for it in items]
        ok_items = [it for it in items if it.report.status == "ok"]
        bundle, bundle_error = None, None
        if ok_items and not self.opts.dry_run and self.wants_bundle():
            try:
                bundle = self.write_bundle([it.res for it in ok_items], writer)
            except BundleError as exc:    # the disk filled up, say: still report what happened
                bundle_error = str(exc)
                if writer:
                    writer.abort()
        elif writer:
            writer.abort()
        ok = len(ok_items)
        unique = {d: size for it in ok_items for d, size in it.res.sizes().items()}
        totals = {"images": len(reports), "ok": ok, "failed": len(reports) - ok,
                  "blobs": len(unique), "bytes": sum(unique.values()),
                  "downloaded_bytes": self.downloaded, "seconds": round(time.monotonic() - started, 3)}
        if pushed:
            totals["failed_pushes"] = pushed.totals["failed"]
        if bundle_error:
            totals["bundle_error"] = bundle_error
        return SyncResult(reports, bundle, totals, pushed)

    def wants_bundle(self) -> bool:
        """A bundle is written unless the images go straight to a registry (sync --to without -o)."""
        return not self.opts.push_to or bool(self.opts.output)

    async def push(self, items: list[Item], session) -> PushResult:
        """sync --to: push what was just mirrored, from the cache, into the destination registry."""
        dest = self.opts.push_to
        images = [PushImage(it.res.name, it.res.top, it.res.target) for it in items]
        cfg = self.spec.registries.get(dest.host, RegistryConfig())
        opts = PushOptions(jobs=self.opts.jobs or self.spec.concurrency, fail_fast=self.opts.fail_fast)
        return await push_images(StoreSource(self.store), images, dest, cfg, opts, self.progress, session,
                                 ctx=self.ctx)

    async def referrers(self, session, items: list[Item]) -> list[Item]:
        """referrers: true: one more image for everything that points at a mirrored one."""
        async def of(it: Item) -> list[Item]:
            repo = Reference(it.res.ref.registry, it.res.ref.repository)
            try:
                found = await discover(it.reg, repo.repository, it.res.source_digest or it.res.top.digest)
            except MirrorError as exc:
                report = ImageReport(source=repo.name, reference=f"referrers of {repo}", status="failed",
                                     error=str(exc))
                self.progress.image_done(report.reference, False, report.error)
                return [Item(report, None, None, time.monotonic(), it.spec)]
            refs = [repo.with_tag(r[1:]) if r.startswith(":") else repo.with_digest(r[1:]) for r in found]
            return list(await asyncio.gather(*(self.resolve_one(session, it.spec, ref, referrer=True)
                                               for ref in refs)))
        wanted = [it for it in items if it.res is not None and it.spec is not None
                  and (it.spec.referrers if it.spec.referrers is not None else self.spec.referrers)]
        if not wanted:
            return []
        found = [x for batch in await asyncio.gather(*(of(it) for it in wanted)) for x in batch]
        seen = {it.report.reference for it in items}
        extra = []
        for x in found:       # two tags of one image share their referrers: keep each once
            if x.report.reference not in seen:
                seen.add(x.report.reference)
                extra.append(x)
        self.progress.images_total(len(items) + len(extra))
        return extra

    def fail_fast_check(self, items: list[Item]) -> None:
        if self.opts.fail_fast:
            for it in items:
                if it.report.status == "failed":
                    raise MirrorError(f"{it.report.reference}: {it.report.error} (--fail-fast: stopped)")

    def missing(self, items: list[Item]) -> dict[str, tuple[Descriptor, Item]]:
        """The blobs of these images that the cache lacks, each once, with an image that needs it."""
        out: dict[str, tuple[Descriptor, Item]] = {}
        for it in items:
            for d, desc in it.res.blobs.items():
                if d not in out and d not in self.excluded and not self.store.has(d):
                    out[d] = (desc, it)
        return out

    def plan_differential(self, items: list[Item]) -> None:
        """--since: leave out the blobs the base carried (manifests always travel), and record
        which ones this bundle expects from it."""
        base = self.opts.since
        if base is None or not items:
            return
        manifests = {d for it in items for d in it.res.manifests}
        self.excluded = set(base.carried) - manifests
        expected = {d: size for it in items for d, size in it.res.sizes().items() if d in self.excluded}
        doc = expected_doc(base, expected)
        self.expected_blob = (sha256_digest(doc), len(doc))
        self.store.put(self.expected_blob[0], doc)

    def dir_output(self) -> bool:
        target = self.output_path()
        return str(self.opts.output or "").endswith("/") or os.path.isdir(target)

    async def expand(self, session, spec: ImageSpec) -> list:
        """The references one manifest entry stands for: its tags (listed or selected) and digests."""
        repo = spec.repository
        if spec.pinned:
            return [spec.pinned]
        refs: list = [repo.with_tag(t) for t in spec.tags] + [repo.with_digest(d) for d in spec.digests]
        if spec.tag_filter:
            try:
                tags = await self.registry(session, repo).list_tags(repo.repository)
            except MirrorError as exc:
                return [ImageReport(source=repo.name, reference=repo.name, status="failed",
                                    error=f"{spec.where}: {exc}")]
            selected = select_tags(tags, spec.tag_filter)
            if not selected:
                self.progress.warn(f"{spec.where}: no tag of {repo.name} matches the filter "
                                   f"(the repository has {len(tags)} tags)")
            refs += [repo.with_tag(t) for t in selected if t not in spec.tags]
        return refs

    async def resolve_one(self, session, spec: ImageSpec, ref, referrer: bool = False) -> Item:
        """Resolve one image's manifests; a failure is recorded in its report, never raised.

        A referrer (signature, attestation, SBOM, or the index listing them) is taken whole:
        no platform filter applies to it, and its digest must stay what was signed."""
        if isinstance(ref, ImageReport):     # its tag list could not be read
            self.progress.image_done(ref.reference, False, ref.error)
            return Item(ref, None, None, time.monotonic())
        item = Item(ImageReport(source=spec.repository.name, reference=str(ref)), None, None,
                    time.monotonic(), spec)
        try:
            item.reg = self.registry(session, ref)
            platforms = (self.spec.platforms if spec.platforms is None else spec.platforms) or None  # all: ()
            res = await resolve(item.reg, self.store, ref, None if referrer else platforms,
                                True if referrer else self.spec.keep_index_digest, spec.where)
        except MirrorError as exc:
            self.fail(item, str(exc))
            return item
        r = item.report
        r.digest, r.source_digest, r.media_type, r.platforms = (
            res.top.digest, res.source_digest, res.top.media_type, res.platforms)
        r.blobs, r.bytes = len(res.sizes()), sum(res.sizes().values())
        r.new_bytes = sum(d.size for d in res.blobs.values() if not self.store.has(d.digest))
        for d in res.foreign:
            self.progress.warn(f"{ref}: foreign layer {d.digest} is not mirrored (it is fetched "
                               "from its own URLs by whoever pulls the image)")
        res.target = spec.target
        item.res = res
        return item

    async def fetch_one(self, item: Item) -> None:
        """Download what one image lacks (shared downloads are joined, not repeated)."""
        res = item.res
        missing = [d for d in res.blobs.values() if not self.store.has(d.digest) and d.digest not in self.excluded]
        # Wait for every blob even after one failed: what did arrive is kept for next time.
        results = await asyncio.gather(*(self.blob(item.reg, res.ref.repository, d) for d in missing),
                                       return_exceptions=True)
        for desc, r in zip(missing, results, strict=True):
            if isinstance(r, MirrorError):
                return self.fail(item, str(r))
            if isinstance(r, OSError):   # the cache's disk: full, read-only, gone
                return self.fail(item, f"cache {self.store.root}: {r.strerror or r} "
                                       f"({r.filename or f'writing blob {desc.digest}'}); "
                                       "free space or choose --cache")
            if isinstance(r, BaseException):
                raise r
        self.done(item)

    def done(self, item: Item) -> None:
        res, r = item.res, item.report
        if not self.opts.dry_run:
            # A single-platform image names its platform only in its config blob.
            res.images = [(p or self.config_platform(m), m) for p, m in res.images]
            r.platforms = res.platforms or sorted({str(p) for p, _ in res.images if p})
        r.status = "ok"
        r.seconds = round(time.monotonic() - item.started, 3)
        self.progress.image_done(r.reference, True, f"{r.digest} {human(r.bytes)} {r.seconds:.1f}s")

    def fail(self, item: Item, error: str) -> None:
        item.report.status, item.report.error = "failed", error
        item.report.seconds = round(time.monotonic() - item.started, 3)
        self.progress.image_done(item.report.reference, False, error)

    async def feed(self, writer: TarWriter, items: list[Item]) -> None:
        """Write every blob into the tar in `blob_order`: one still downloading is followed as
        its bytes land, so the tar is finished moments after the last download."""
        needed_by: dict[str, list[Item]] = {}
        for it in items:
            for d in it.res.sizes():
                needed_by.setdefault(d, []).append(it)
        sizes = {d: size for it in items for d, size in it.res.sizes().items() if d not in self.excluded}
        if self.expected_blob:
            sizes[self.expected_blob[0]] = self.expected_blob[1]
            needed_by[self.expected_blob[0]] = [it for it in items]
        run = asyncio.get_running_loop().run_in_executor
        for digest in blob_order(sizes):
            if all(it.report.status == "failed" for it in needed_by[digest]):
                continue              # only failed images want it (blobs of images failing later stay)
            started = self.started.get(digest)
            blob_writer = await started if started is not None else None
            if blob_writer is not None:
                # False when the download failed: the tar is left as it was, and fetch_one
                # reports the images that needed the blob.
                await run(self.ctx.tar, writer.add_following, blob_writer.follow())
                continue
            fut = self.inflight.get(digest)
            if fut is not None:
                try:
                    await asyncio.shield(fut)
                except (MirrorError, OSError):
                    continue
            # Blobs fetched in this run were verified moments ago; older cache entries are
            # hashed again on the way, so a disk that changed them cannot slip into a bundle.
            await run(self.ctx.tar, writer.add_blob, self.store, digest, digest not in self.fetched)

    def blob(self, reg: Registry, repo: str, desc: Descriptor) -> asyncio.Future:
        """The one download of a digest, shared by every image that needs it."""
        fut = self.inflight.get(desc.digest)
        if fut is None:
            # resolved with the BlobWriter when the transfer begins (None if it never does)
            self.started[desc.digest] = asyncio.get_running_loop().create_future()
            fut = asyncio.ensure_future(self._download(reg, repo, desc))
            self.inflight[desc.digest] = fut
        # shield: one image failing or being cancelled must not cancel a download others await
        return asyncio.shield(fut)

    async def _download(self, reg: Registry, repo: str, desc: Descriptor) -> None:
        started = self.started[desc.digest]
        try:
            if self.store.has(desc.digest):
                return
            async with self.jobs:
                def on_bytes(n: int) -> None:
                    self.downloaded += n
                    self.progress.advance(n)
                await reg.fetch_blob(repo, desc, self.store, on_bytes, on_start=started.set_result)
                self.fetched.add(desc.digest)
        finally:
            if not started.done():
                started.set_result(None)

    # --- the bundle -----------------------------------------------------------------------
    def write_bundle(self, resolved: list[Resolved], writer: TarWriter | None) -> dict:
        """Finish the tar (its blobs are written already) or write the layout directory."""
        content = BundleContent()
        load_platform = self.spec.load_platform or DEFAULT_LOAD_PLATFORM
        for res in resolved:
            content.blobs.update({d: n for d, n in res.sizes().items() if d not in self.excluded})
            content.images.append(BundleImage(
                ref_name=res.name, descriptor=res.top, source_digest=res.source_digest, target=res.target,
                load=self.load_entry(res, load_platform) if res.ref.tag else None, tag=res.ref.tag))
        carried = set(content.blobs)
        holders: dict = {}        # blob -> the images' repositories (and targets) carrying it
        for res in resolved:
            for d in res.blobs:
                if d not in self.excluded:
                    add_holder(holders, d, (res.ref.name, res.target))
        if self.expected_blob:
            digest, size = self.expected_blob
            content.blobs[digest] = size
            content.annotations = {ANN_BASE: self.opts.since.index_sha256, ANN_EXPECTED: digest}
            expected = {b["digest"] for b in json.loads(self.store.read(digest))["blobs"]}
            carried |= expected
            holders.update({d: self.opts.since.holders[d] for d in expected if d in self.opts.since.holders})
        summary = {"images": len(content.images), "blobs": len(content.blobs),
                   # what a later --since needs from this bundle: the sha256 of its index.json,
                   # every digest it holds or expects from its own base, and where each blob was
                   # carried (so a differential push can mount it from there)
                   "index_sha256": sha256_digest(content.index_json()), "carried": sorted(carried),
                   "carried_by": {d: holders_json(holders[d]) for d in sorted(holders)}}
        if writer is None:
            target = Path(self.output_path())
            write_dir(target, self.store, content)
            return {"path": str(target), "format": "directory", **summary}
        size, sha = writer.finish(content)
        out = {"path": str(writer.target), "format": "tar", "size": size, "sha256": sha, **summary}
        if writer.parts:          # --split: [{path, size, sha256}] of every part, in order
            out["parts"] = writer.parts
            out["sha256sums"] = str(writer.sums_path)
        return out

    def load_entry(self, res: Resolved, wanted: Platform) -> LoadEntry | None:
        """The docker-load view of an image for one platform, if it has it (Linux only)."""
        for platform, m in res.images:
            if platform is None or platform.os != "linux" or not matches(wanted, platform):
                continue
            layers = tuple(d.digest for d in m.layers)
            # docker load needs every layer in the tar: not so in a differential bundle
            if m.config and all(d in res.blobs and d not in self.excluded for d in (*layers, m.config.digest)):
                return LoadEntry(config=m.config.digest, layers=layers)
        return None

    def config_platform(self, m) -> Platform | None:
        """The platform an image's config declares, when the config is in the cache."""
        if m.config and self.store.has(m.config.digest):
            return from_oci(image_platform(self.store.read(m.config.digest)))
        return None

    def output_path(self) -> str:
        if self.opts.output:
            return self.opts.output
        now = self.clock     # the run's start: every call names the same file
        path = self.spec.output.replace("{date}", time.strftime("%Y%m%d", now)) \
            .replace("{time}", time.strftime("%H%M%S", now))
        path = os.path.expanduser(path)
        # Relative to the manifest, so a cron job's working directory does not matter.
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.spec.path)), path)
        return os.path.normpath(path)
