"""imgmirror sync: mirror.yaml -> resolved images -> unique blobs downloaded once -> bundle."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..bundle.writer import TarWriter, blob_order
from ..cache import CacheSink, Store, StoreSource
from ..core.diff import Base
from ..core.oci import IMAGE_CONFIG_TYPES, MAX_CONFIG_READ, Descriptor, image_platform
from ..core.platform import Platform, from_oci
from ..core.spec import MirrorSpec, RegistryConfig
from ..core.units import human
from ..errors import BundleError, MirrorError
from ..progress import Progress, SideProgress
from ..registry.transport import new_session, transport_for
from ..registry.upload import Uploader
from .context import RunContext
from .copy import Copier, Outcome, Unit
from .fetch import Fetcher, RegistrySource
from .images import ImageReport, Item, Resolver, fail
from .output import BundleOutput
from .push import Destination, PushImage, PushOptions, PushReport, PushResult, Pusher
from .report import BundleSummary, SyncTotals
from .shard import Shard, partition, weigh

__all__ = ["ImageReport", "Item", "SyncOptions", "SyncResult", "Syncer"]


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
    lock: str | None = None                # --lock FILE: write what the run resolved
    locked: dict | None = None             # --locked FILE, read: mirror exactly those digests
    shard: Shard | None = None             # --shard I/N: this run takes its part of the repositories


@dataclass
class SyncResult:
    images: list[ImageReport]
    bundle: BundleSummary | None
    totals: SyncTotals
    push: PushResult | None = None
    shard: dict | None = None          # --shard: this shard and the whole partition

    def to_json(self) -> dict:
        out = {"images": [asdict(i) for i in self.images], "totals": self.totals.to_json(),
               "bundle": self.bundle.to_json() if self.bundle else None}
        if self.push:
            out["push"] = self.push.to_json()
        if self.shard:
            out["shard"] = self.shard
        return out


class Syncer:
    """Runs one sync over an open store; `run()` is the whole job."""

    def __init__(self, spec: MirrorSpec, store: Store, opts: SyncOptions, progress: Progress):
        self.spec, self.store, self.opts, self.progress = spec, store, opts, progress
        self.ctx = RunContext()       # this run's threads; closed at the end of run()
        self.resolver = Resolver(spec, store, progress, self.ctx, opts.jobs or spec.concurrency, opts.locked)
        self.fetcher = Fetcher(store, progress)
        self.out = BundleOutput(spec, opts, store, self.ctx)
        self.writer: TarWriter | None = None        # the bundle tar, while the blobs arrive
        self.tasks: list[asyncio.Future] = []       # the copy and the tar feed
        self.source: RegistrySource | None = None
        self.copier: Copier | None = None
        self._item_of: dict[int, Item] = {}         # id(unit) -> its item
        self._started: set[int] = set()             # id(item) of those whose copy began
        self.shard_plan: dict | None = None
        self.pusher: Pusher | None = None           # sync --to
        self.push_copier: Copier | None = None
        self._push_of: dict[int, asyncio.Future] = {}     # id(item) -> its push
        self._push_failed: dict[int, PushReport] = {}
        self._push_started = 0.0

    async def run(self) -> SyncResult:
        """The whole sync; the run's threads are shut down at its end, whatever happens."""
        try:
            return await self._run()
        finally:
            self.remember_hosts()
            self.ctx.close()

    def remember_hosts(self) -> None:
        """How each registry answered its first request, for the next run (cache.host_auth)."""
        transports = [reg.t for reg in self.resolver.registries.values()]
        if self.pusher is not None:
            transports.append(self.pusher.up.t)
        for t in transports:
            t.cancel_prefetches()
            answered = t.answered_with()
            if answered is not None:
                self.store.remember_host_auth(t.settings.host, answered)

    async def _run(self) -> SyncResult:
        started = time.monotonic()
        pushed: PushResult | None = None
        async with new_session() as session:
            try:
                # No barrier where nothing needs the whole set first: each image's blobs are
                # asked for (and with --to, it is pushed) as soon as it is resolved. The bundle
                # is still written in its one order, once every image is resolved.
                streaming = self.streams()
                if streaming:
                    self.open_copies(session)
                items = await self.resolver.resolve_all(session, self.resolved if streaming else None)
                if self.opts.shard:
                    items = self.take_shard(items)
                self.fail_fast_check(items)
                live = [it for it in items if it.res is not None]
                self.out.plan_differential(live)
                if live and not self.opts.dry_run:
                    await self._fetch_and_write(live, items, session)
                else:
                    for it in live:
                        self.done(it)
                if self.opts.push_to and not self.opts.dry_run:
                    pushed = await self.finish_push(items, session)
            except BaseException:
                await self._abandon()
                raise
        if self.opts.lock:
            from .lock import write_lock
            write_lock(self.opts.lock, self.resolver.lock_entries(items))
        return self._result(items, pushed, started)

    def streams(self) -> bool:
        """Whether images may be copied as they are resolved: not when something must see every
        image first (--shard weighs them all, --since and trust: judge the set, --locked checks
        it; a dry run copies nothing)."""
        o = self.opts
        return not (o.dry_run or o.shard or o.since or o.locked is not None or self.spec.trust is not None)

    def open_copies(self, session) -> None:
        """The copy into the cache, and with --to the push from it, opened (once): before
        resolving when streaming, else once every image is resolved."""
        if self.copier is None:
            self.source = RegistrySource(self.fetcher, {})
            self.copier = Copier(self.source, CacheSink(self.store), on_done=self._copied)
        if self.opts.push_to and self.pusher is None:
            self.pusher = self._pusher(session)
            self.push_copier = self.pusher.copier()
            self._push_started = time.monotonic()

    def resolved(self, it: Item) -> None:
        """One image resolved (streaming): its missing blobs asked for now, its copy started."""
        if it.res is None or id(it) in self._started:
            return
        self._started.add(id(it))
        missing = {}
        for d, desc in it.res.blobs.items():
            self.source.wants.setdefault(d, (it.reg, it.res.ref.repository, desc))
            if d not in self.fetcher.inflight and not self.store.has(d):
                missing[d] = desc
        self.progress.bytes_total(sum(desc.size for desc in missing.values()))
        for desc in sorted(missing.values(), key=lambda x: -x.size):
            self.fetcher.blob(it.reg, it.res.ref.repository, desc)
        if self.pusher is not None:       # --to: is it there already? asked while it downloads
            repo, tag, digest = self.pusher.dest.place(self.push_image(it))
            self.pusher.up.ask_early(repo, tag or digest)
        self.copier.add(self.unit(it))

    async def _fetch_and_write(self, live: list[Item], items: list[Item], session) -> None:
        """2. Registry -> cache through the copy engine, every missing blob fetched once; the tar
        written in its order meanwhile, following the downloads."""
        self.open_copies(session)
        missing = {d: desc for d, (desc, _) in self.missing(live).items() if d not in self.fetcher.inflight}
        self.progress.bytes_total(sum(desc.size for desc in missing.values()))
        # Where every blob can come from, not only the missing ones: a cached blob found damaged
        # and evicted meanwhile (the tar writer hashes old entries) is fetched again, not lost.
        for it in live:
            for d, desc in it.res.blobs.items():
                self.source.wants.setdefault(d, (it.reg, it.res.ref.repository, desc))
        # Start the rest of the downloads in the order the tar is written in (largest first),
        # so the writer keeps pace with them.
        self.source.start(blob_order({d: desc.size for d, desc in missing.items()}))
        for it in live:
            if id(it) not in self._started:
                self._started.add(id(it))
                self.copier.add(self.unit(it))
        self.tasks = [asyncio.ensure_future(self.copier.finish(fail_fast=self.opts.fail_fast))]
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
            if self.push_copier is not None:
                self.push(item)     # sync --to: pushed as soon as its blobs are in the cache
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
        if self.push_copier:
            await self.push_copier.cancel()
            everything += self.pusher.up.drop_early()
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
        return SyncResult(reports, bundle, totals, pushed, self.shard_plan)

    def _pusher(self, session) -> Pusher:
        """sync --to: the push from the cache into the destination registry, in this run's session."""
        dest = self.opts.push_to
        cfg = self.spec.registries.get(dest.host, RegistryConfig())
        opts = PushOptions(jobs=self.opts.jobs or self.spec.concurrency, fail_fast=self.opts.fail_fast)
        uploader = Uploader(transport_for(session, dest.host, cfg, opts.jobs), readers=self.ctx.readers)
        uploader.t.assume(self.store.host_auth(dest.host))
        return Pusher(StoreSource(self.store), uploader, dest, opts, SideProgress(self.progress))

    def push(self, item: Item) -> None:
        """One image mirrored: its push begins (a failure to place it is its push report)."""
        image = self.push_image(item)
        try:
            unit = self.pusher.place(image)
        except MirrorError as exc:
            self._push_failed[id(item)] = PushReport(image.ref_name, "", image.descriptor.digest,
                                                     status="failed", error=str(exc))
            self.progress.image_done(f"{image.ref_name} -> (not placed)", False, str(exc))
            return
        self._push_of[id(item)] = self.push_copier.add(unit)

    def push_image(self, item: Item) -> PushImage:
        return PushImage(item.res.name, item.res.top, item.res.target)

    async def finish_push(self, items: list[Item], session) -> PushResult:
        """sync --to: every image pushed; reports in the order of the images."""
        self.open_copies(session)      # opened already, unless every image failed
        await self.push_copier.finish(fail_fast=self.opts.fail_fast)
        reports = []
        for it in items:
            if id(it) in self._push_of:
                reports.append(self.pusher.report(self._push_of[id(it)].result()[0]))
            elif id(it) in self._push_failed:
                reports.append(self._push_failed[id(it)])
        return self.pusher.result(reports, self._push_started)

    def take_shard(self, items: list[Item]) -> list[Item]:
        """--shard I/N: the partition of the whole manifest's repositories, and this shard's items."""
        shard = self.opts.shard
        weights = weigh(items)
        parts = partition(weights, shard.count)
        self.shard_plan = {"shard": shard.label, "index": shard.index, "count": shard.count,
                           "partition": [{"shard": Shard(i, shard.count).label, "repositories": p,
                                          "bytes": sum(weights[r] for r in p)} for i, p in enumerate(parts)]}
        mine = set(parts[shard.index])
        taken = [it for it in items if it.report.source in mine]
        self.progress.images_total(len(taken))
        return taken

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
        fail(item, error, self.progress)

    def config_platform(self, m) -> Platform | None:
        """The platform an image's config declares, when the config is in the cache. An
        artifact's config (any other media type, of any size) is a blob like a layer: not read."""
        c = m.config
        if c and c.media_type in IMAGE_CONFIG_TYPES and c.size <= MAX_CONFIG_READ and self.store.has(c.digest):
            return from_oci(image_platform(self.store.read(c.digest)))
        return None

