"""The images a sync is about: mirror.yaml's entries expanded into references (tags listed and
selected, digests), each resolved into an Item with its report, and the referrers of those that
ask for them. A failure is recorded in the image's report, never raised."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..cache import Store
from ..core.reference import Reference, parse_reference
from ..core.selection import select_tags
from ..core.spec import ImageSpec, MirrorSpec, RegistryConfig
from ..errors import MirrorError, UsageError
from ..progress import Progress
from ..registry.client import Registry, pull_scope
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
    trust: dict | None = None       # the trust policy's verdict (trust: in mirror.yaml)


@dataclass
class Item:
    """One image on its way: its report, and once resolved, what it needs."""

    report: ImageReport
    res: Resolved | None
    reg: Registry | None
    started: float
    spec: ImageSpec | None = None
    referrers: list[Item] = field(default_factory=list)   # found for it (referrers: or trust:)
    for_trust: bool = False        # a signature mirrored because a trust policy needs it
    referrer: bool = False         # found pointing at another image (never judged itself)


def fail(item: Item, error: str, progress: Progress) -> None:
    """Record an image's failure, and say it."""
    item.report.status, item.report.error = "failed", error
    item.report.seconds = round(time.monotonic() - item.started, 3)
    progress.image_done(item.report.reference, False, error)


MAX_SIGNATURE_BLOB = 1 << 20     # a signature layer or Sigstore bundle read for a trust check


class Resolver:
    """Phase 1 of a sync: every image resolved (manifests are small), so the whole blob set is
    known before a blob is fetched. One Registry client per host, shared by the run."""

    def __init__(self, spec: MirrorSpec, store: Store, progress: Progress, ctx: RunContext, jobs: int,
                 locked: dict | None = None):
        self.spec, self.store, self.progress, self.ctx, self.jobs = spec, store, progress, ctx, jobs
        self.registries: dict[str, Registry] = {}
        self.on_resolved = None
        self.locked = locked          # sync --locked: reference -> lock.Locked; no tag is resolved

    def registry(self, session, ref: Reference) -> Registry:
        """One Registry (one transport, one token cache, one host semaphore) per host."""
        host = ref.registry
        if host not in self.registries:
            cfg = self.spec.registries.get(host.lower(), RegistryConfig())   # keys are lowercased
            t = transport_for(session, host, cfg, self.jobs)
            t.assume(self.store.host_auth(host))     # how it answered last time, if known
            self.registries[host] = Registry(t, hashers=self.ctx.hashers)
        return self.registries[host]

    def prefetch_tokens(self, session) -> None:
        """Every repository of mirror.yaml is known now: its host fetches each one's token as
        soon as its first answer says it needs tokens, all at once (Transport.prefetch_tokens)."""
        by_host: dict[Registry, set[str]] = {}
        for spec in self.spec.images:
            by_host.setdefault(self.registry(session, spec.repository), set()).add(spec.repository.repository)
        for reg, repos in by_host.items():
            reg.t.prefetch_tokens([pull_scope(r) for r in sorted(repos)])

    def asks_referrers(self, it: Item) -> bool:
        return it.spec.referrers if it.spec.referrers is not None else self.spec.referrers

    def rule(self, it: Item):
        """The trust policy covering an image (None: no trust: or no rule matches)."""
        if self.spec.trust is None or it.res is None:
            return None
        return self.spec.trust.rule_for(str(it.res.ref), it.res.ref.name)

    def is_signature(self, it: Item) -> bool:
        from ..trust.policy import is_signature_manifest
        return any(is_signature_manifest(m.raw) for _, m in it.res.images)

    async def resolve_all(self, session, on_resolved=None) -> list[Item]:
        """Every entry expanded and resolved, with the referrers asked for. `on_resolved(item)`
        is told each entry's image as soon as it is resolved (referrers come later, whole)."""
        self.on_resolved = on_resolved
        self.prefetch_tokens(session)
        if self.locked is not None:
            refs_per_spec = self.expand_locked()
        else:
            refs_per_spec = await asyncio.gather(*(self.expand(session, s) for s in self.spec.images))
        work = [(s, r) for s, rs in zip(self.spec.images, refs_per_spec, strict=True) for r in rs]
        self.progress.images_total(len(work))
        items = await asyncio.gather(*(self.resolve_one(session, s, r) for s, r in work))
        if self.locked is not None:
            await self.check_locked(session, items)
        items += await self.referrers(session, items)
        if self.spec.trust is not None:
            items = await self.check_trust(items)
        return items

    async def check_trust(self, items: list[Item]) -> list[Item]:
        """trust: every image a policy covers judged from the signatures found for it; one that
        fails is not mirrored, and the signatures fetched only for it are dropped."""
        todo = [it for it in items if it.res is not None and not it.referrer and self.rule(it) is not None]
        await asyncio.gather(*(self.judge(it) for it in todo))
        dropped = {id(x) for it in todo if it.res is None for x in it.referrers if x.for_trust}
        return [it for it in items if id(it) not in dropped]

    async def judge(self, it: Item) -> None:
        from ..trust.policy import find_candidates, judge
        from ..trust.types import BUNDLE_V03, SIMPLESIGNING
        rule, res = self.rule(it), it.res
        cands = []
        if not rule.accept_unsigned:
            sigs = [x for x in it.referrers if x.res is not None]
            try:
                await asyncio.gather(*(x.reg.fetch_blob(x.res.ref.repository, d, self.store)
                                       for x in sigs for d in x.res.blobs.values()
                                       if d.media_type in (SIMPLESIGNING, BUNDLE_V03) and d.size <= MAX_SIGNATURE_BLOB
                                       and not self.store.has(d.digest)))
            except MirrorError as exc:
                fail(it, f"trust policy {rule.name}: reading its signatures: {exc}", self.progress)
                it.res = None
                return
            cands = find_candidates([(m.raw, m.digest) for x in sigs for _, m in x.res.images],
                                    lambda d: self.store.read(d) if self.store.has(d) else b"")
        verdict = judge(self.spec.trust, rule, cands, res.source_digest or res.top.digest, res.ref.name)
        it.report.trust = verdict.to_json()
        if not verdict.ok:
            fail(it, f"trust policy {rule.name}: {verdict.reason}", self.progress)
            it.res = None
        elif res.source_digest and not rule.accept_unsigned:
            # the signature covers the registry's index: carry its bytes, so the chain from the
            # signature to the filtered index can be checked inside
            res.manifests.update(res.originals)

    async def referrers(self, session, items: list[Item]) -> list[Item]:
        """referrers: true: one more image for everything that points at a mirrored one."""
        async def of(it: Item) -> list[Item]:
            repo = Reference(it.res.ref.registry, it.res.ref.repository)
            if self.locked is not None:      # the referrers the lock recorded, by their digests
                refs = [parse_reference(e.reference).with_digest(e.digest) for e in self.locked.values()
                        if e.referrer_of == it.res.name]
                return list(await asyncio.gather(*(self.resolve_one(session, it.spec, ref, referrer=True)
                                                   for ref in refs)))
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
                  and (self.asks_referrers(it) or self.rule(it) is not None)]
        if not wanted:
            return []
        batches = await asyncio.gather(*(of(it) for it in wanted))
        seen = {it.report.reference for it in items}
        extra = []
        for it, batch in zip(wanted, batches, strict=True):
            if not self.asks_referrers(it):      # only for the trust policy: its signatures alone
                batch = [x for x in batch if x.res is None or self.is_signature(x)]
                for x in batch:
                    x.for_trust = True
            it.referrers = batch
            for x in batch:
                x.referrer = True
            for x in batch:   # two tags of one image share their referrers: keep each once
                if x.report.reference not in seen:
                    seen.add(x.report.reference)
                    extra.append(x)
        self.progress.images_total(len(items) + len(extra))
        return extra

    def expand_locked(self) -> list[list[Reference]]:
        """sync --locked: each entry's images as the lock pinned them (tag and digest); UsageError
        naming every image mirror.yaml selects that the lock lacks, before any request."""
        out, missing = [], []
        for spec in self.spec.images:
            repo = spec.repository
            if spec.pinned:
                wanted = [spec.pinned.with_tag(spec.pinned.tag)]
            else:
                wanted = [repo.with_tag(t) for t in spec.tags] + [repo.with_digest(d) for d in spec.digests]
            if spec.tag_filter:      # what the filter selected when the lock was written
                named = {str(w) for w in wanted}
                wanted += [parse_reference(k) for k, e in sorted(self.locked.items())
                           if not e.referrer_of and k.startswith(repo.name + ":") and k not in named]
            refs = []
            for ref in wanted:
                entry = self.locked.get(str(ref))
                if entry is None:
                    missing.append(f"{spec.where}: {ref}")
                else:
                    refs.append(ref.with_digest(entry.fetch_digest))
            out.append(refs)
        if missing:
            raise UsageError("the lock lacks images mirror.yaml selects: " + "; ".join(missing) +
                             "; run sync with --lock to write it again, and review the change")
        return out

    async def check_locked(self, session, items: list[Item]) -> None:
        """A locked image came out as the lock says (a filtered index cut again gives the same
        digest); a tag that moved since is reported, not followed."""
        async def moved(it: Item) -> None:
            ref = it.res.ref
            try:
                now = await it.reg.head_manifest(ref.repository, ref.tag)
            except MirrorError as exc:
                self.progress.warn(f"{ref.with_tag(ref.tag)}: could not check whether the tag moved ({exc})")
                return
            if now and now != ref.digest:
                self.progress.warn(f"{ref.with_tag(ref.tag)}: the tag now points at {now}; mirroring the "
                                   f"locked {ref.digest} (write the lock again to follow it)")
        for it in items:
            if it.res is None:
                continue
            entry = self.locked[it.res.name]
            if it.res.top.digest != entry.digest:
                fail(it, f"locked as {entry.digest}, but {entry.fetch_digest} now gives {it.res.top.digest} (did "
                     "platforms: change?); write the lock again with --lock", self.progress)
                it.res = None
        await asyncio.gather(*(moved(it) for it in items if it.res is not None and it.res.ref.tag))

    def lock_entries(self, items: list[Item]) -> list:
        """What this run resolved, for sync --lock: every image that is mirrored, referrers too."""
        from .lock import Locked
        subject = {id(x): it.res.name for it in items if it.res is not None for x in it.referrers}
        return [Locked(it.res.name, it.res.top.digest, it.res.source_digest, subject.get(id(it)))
                for it in items if it.res is not None and it.report.status != "failed"]

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
        if self.on_resolved and not referrer:
            self.on_resolved(item)
        return item
