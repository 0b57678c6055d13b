"""imgmirror sync: mirror.yaml -> resolved images -> unique blobs downloaded once -> bundle."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..bundle.writer import TarWriter, blob_order
from ..core.diff import Base
from ..errors import BundleError, MirrorError
from ..core.oci import IMAGE_CONFIG_TYPES, MAX_CONFIG_READ, Descriptor, image_platform
from ..core.platform import Platform, from_oci
from ..core.units import human
from ..progress import Progress
from ..core.reference import Reference
from ..registry.client import Registry
from .report import BundleSummary, SyncTotals
from .resolve import Resolved, resolve
from ..core.selection import select_tags
from ..core.spec import ImageSpec, MirrorSpec, RegistryConfig
from .referrers import discover
from .context import RunContext
from .copy import Copier, Outcome, Unit
from .fetch import Fetcher, RegistrySource
from .output import BundleOutput
from .push import Destination, PushImage, PushOptions, PushResult, push_images
from ..cache import CacheSink, Store, StoreSource
from ..registry.transport import new_session, transport_for



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
    bundle: BundleSummary | None
    totals: SyncTotals
    push: PushResult | None = None

    def to_json(self) -> dict:
        out = {"images": [asdict(i) for i in self.images], "totals": self.totals.to_json(),
               "bundle": self.bundle.to_json() if self.bundle else None}
        if self.push:
            out["push"] = self.push.to_json()
        return out


class Syncer:
    """Runs one sync over an open store; `run()` is the whole job."""

    def __init__(self, spec: MirrorSpec, store: Store, opts: SyncOptions, progress: Progress):
        self.spec, self.store, self.opts, self.progress = spec, store, opts, progress
        self.registries: dict[str, Registry] = {}
        self.ctx = RunContext()       # this run's threads; closed at the end of run()
        self.fetcher = Fetcher(store, opts.jobs or spec.concurrency, progress)
        self.out = BundleOutput(spec, opts, store, self.ctx)
        self.writer: TarWriter | None = None        # the bundle tar, while the blobs arrive
        self.tasks: list[asyncio.Future] = []       # the copy and the tar feed
        self.source: RegistrySource | None = None
        self.copier: Copier | None = None
        self._item_of: dict[int, Item] = {}         # id(unit) -> its item

    def registry(self, session, ref: Reference) -> Registry:
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
        pushed: PushResult | None = None
        async with new_session() as session:
            items = await self._resolve_all(session)
            live = [it for it in items if it.res is not None]
            try:
                self.out.plan_differential(live)
                if live and not self.opts.dry_run:
                    await self._fetch_and_write(live, items)
                else:
                    for it in live:
                        self.done(it)
                if self.opts.push_to and not self.opts.dry_run:
                    pushed = await self.push([it for it in items if it.report.status == "ok"], session)
            except BaseException:
                await self._abandon()
                raise
        return self._result(items, pushed, started)

    async def _resolve_all(self, session) -> list[Item]:
        """1. Every image resolved first: manifests are small, and then the whole blob set is
        known, so the bundle can be written while the blobs are still arriving."""
        refs_per_spec = await asyncio.gather(*(self.expand(session, s) for s in self.spec.images))
        work = [(s, r) for s, rs in zip(self.spec.images, refs_per_spec, strict=True) for r in rs]
        self.progress.images_total(len(work))
        items = await asyncio.gather(*(self.resolve_one(session, s, r) for s, r in work))
        items += await self.referrers(session, items)
        self.fail_fast_check(items)
        return items

    async def _fetch_and_write(self, live: list[Item], items: list[Item]) -> None:
        """2. Registry -> cache through the copy engine, every missing blob fetched once; the tar
        written in its order meanwhile, following the downloads."""
        missing = self.missing(live)
        self.progress.bytes_total(sum(desc.size for desc, _ in missing.values()))
        self.source = RegistrySource(self.fetcher, {d: (it.reg, it.res.ref.repository, desc)
                                                    for d, (desc, it) in missing.items()})
        # Start the downloads in the order the tar is written in (largest first), so the writer
        # keeps pace with them.
        self.source.start(blob_order({d: desc.size for d, (desc, _) in missing.items()}))
        self.copier = Copier(self.source, CacheSink(self.store), on_done=self._copied)
        units = [self.unit(it) for it in live]
        self.tasks = [asyncio.ensure_future(self.copier.run(units, fail_fast=self.opts.fail_fast))]
        if self.out.wanted() and not self.out.is_dir():
            self.writer = TarWriter(Path(self.out.path()), split=self.opts.split)
            self.tasks.append(asyncio.ensure_future(self.out.feed(self.writer, live, self.source)))
        for fut in asyncio.as_completed(self.tasks):
            await fut

    def unit(self, it: Item) -> Unit:
        """What the cache lacks of an image: its blobs (not those a --since base carried).
        Its manifests are in the cache already: resolve put them there as it read them."""
        res = it.res
        unit = Unit(it.report.reference, res.ref.name, None, res.top,
                    blobs={d: desc for d, desc in res.blobs.items() if d not in self.out.excluded})
        self._item_of[id(unit)] = it
        return unit

    def _copied(self, o: Outcome) -> str | None:
        item = self._item_of[id(o.unit)]
        if o.ok:
            self.done(item)
            return None
        self.fail(item, str(o.error))
        return item.report.error

    async def _abandon(self) -> None:
        """Interrupted or failed fast: every task and download cancelled, the partial tar dropped."""
        everything = list(self.tasks)
        for t in everything:
            t.cancel()
        if self.copier:
            await self.copier.cancel()
        if self.source:
            everything += self.source.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        if self.writer:
            self.writer.abort()

    def _result(self, items: list[Item], pushed: PushResult | None, started: float) -> SyncResult:
        """3. The bundle finished (or dropped), and the report."""
        reports = [it.report for it in items]
        ok_items = [it for it in items if it.report.status == "ok"]
        bundle, bundle_error = None, None
        if ok_items and not self.opts.dry_run and self.out.wanted():
            try:
                bundle = self.out.write([it.res for it in ok_items], self.writer)
            except BundleError as exc:    # the disk filled up, say: still report what happened
                bundle_error = str(exc)
                if self.writer:
                    self.writer.abort()
        elif self.writer:
            self.writer.abort()
        ok = len(ok_items)
        unique = {d: size for it in ok_items for d, size in it.res.sizes().items()}
        totals = SyncTotals(images=len(reports), ok=ok, failed=len(reports) - ok, blobs=len(unique),
                            bytes=sum(unique.values()), downloaded_bytes=self.fetcher.downloaded,
                            seconds=round(time.monotonic() - started, 3),
                            failed_pushes=pushed.totals.failed if pushed else None, bundle_error=bundle_error)
        return SyncResult(reports, bundle, totals, pushed)

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
                if d not in out and d not in self.out.excluded and not self.store.has(d):
                    out[d] = (desc, it)
        return out

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

    def config_platform(self, m) -> Platform | None:
        """The platform an image's config declares, when the config is in the cache. An
        artifact's config (any other media type, of any size) is a blob like a layer: not read."""
        c = m.config
        if c and c.media_type in IMAGE_CONFIG_TYPES and c.size <= MAX_CONFIG_READ and self.store.has(c.digest):
            return from_oci(image_platform(self.store.read(c.digest)))
        return None

