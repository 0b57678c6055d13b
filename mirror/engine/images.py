"""The images a sync is about: mirror.yaml's entries expanded into references (tags listed and
selected, digests), each resolved into an Item with its report, and the referrers of those that
ask for them. A failure is recorded in the image's report, never raised."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..cache import Store
from ..core.reference import Reference
from ..core.selection import select_tags
from ..core.spec import ImageSpec, MirrorSpec, RegistryConfig
from ..errors import MirrorError
from ..progress import Progress
from ..registry.client import Registry
from ..registry.transport import transport_for
from .context import RunContext
from .referrers import discover
from .resolve import Resolved, resolve


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
class Item:
    """One image on its way: its report, and once resolved, what it needs."""

    report: ImageReport
    res: Resolved | None
    reg: Registry | None
    started: float
    spec: ImageSpec | None = None


def fail(item: Item, error: str, progress: Progress) -> None:
    """Record an image's failure, and say it."""
    item.report.status, item.report.error = "failed", error
    item.report.seconds = round(time.monotonic() - item.started, 3)
    progress.image_done(item.report.reference, False, error)


class Resolver:
    """Phase 1 of a sync: every image resolved (manifests are small), so the whole blob set is
    known before a blob is fetched. One Registry client per host, shared by the run."""

    def __init__(self, spec: MirrorSpec, store: Store, progress: Progress, ctx: RunContext, jobs: int):
        self.spec, self.store, self.progress, self.ctx, self.jobs = spec, store, progress, ctx, jobs
        self.registries: dict[str, Registry] = {}

    def registry(self, session, ref: Reference) -> Registry:
        """One Registry (one transport, one token cache, one host semaphore) per host."""
        host = ref.registry
        if host not in self.registries:
            cfg = self.spec.registries.get(host.lower(), RegistryConfig())   # keys are lowercased
            self.registries[host] = Registry(transport_for(session, host, cfg,
                                                           self.jobs),
                                             hashers=self.ctx.hashers)
        return self.registries[host]

    async def resolve_all(self, session) -> list[Item]:
        """Every entry expanded and resolved, with the referrers asked for."""
        refs_per_spec = await asyncio.gather(*(self.expand(session, s) for s in self.spec.images))
        work = [(s, r) for s, rs in zip(self.spec.images, refs_per_spec, strict=True) for r in rs]
        self.progress.images_total(len(work))
        items = await asyncio.gather(*(self.resolve_one(session, s, r) for s, r in work))
        items += await self.referrers(session, items)
        return items

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
            fail(item, str(exc), self.progress)
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
