"""imgmirror push (and sync --to): replay images from a bundle or the cache into a registry,
digest for digest.

Blobs first (HEAD, skip what exists; mount what this run already put in another repository of
the registry; else upload), then manifests children first, then tags, each tag checked after.
Every blob and manifest is sent once per repository, as the exact bytes of the source.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field

from ..errors import MirrorError, RegistryError, UsageError
from ..core.oci import Descriptor, Manifest, parse_manifest
from ..core.units import human
from ..progress import Progress
from ..core.diff import Holder
from ..core.reference import ReferenceError_, parse_reference
from ..registry.upload import Uploader
from ..core.content import Sink, Source
from .base_blobs import BaseBlobs
from .context import RunContext
from .report import PushTotals

DEFAULT_CHUNK = 64 << 20


@dataclass(frozen=True)
class PushImage:
    """One image to push: its name in the bundle, its top manifest, and an optional target path."""

    ref_name: str
    descriptor: Descriptor
    target: str | None = None


@dataclass(frozen=True)
class Destination:
    """Where images go: a registry host and an optional path prefix."""

    host: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`registry.internal:5000/mirror` -> host and prefix; the host must look like one."""
        host, _, prefix = text.strip().strip("/").partition("/")
        if not host or not ("." in host or ":" in host or host == "localhost"):
            raise UsageError(f"--to {text!r}: name a registry host (with a '.' or a port, or "
                             "localhost), optionally followed by /path, e.g. registry.internal:5000/mirror")
        if prefix:
            try:
                parse_reference(f"{host}/{prefix}")
            except ReferenceError_ as exc:
                raise UsageError(f"--to {text!r}: {exc}") from None
        return cls(host.lower(), prefix)

    def place(self, image: PushImage) -> tuple[str, str | None, str]:
        """(repository, tag or None, digest) in this registry for a bundle image."""
        src = parse_reference(image.ref_name)
        return self.repository(src.repository, image.target), src.tag, image.descriptor.digest

    def repository(self, path: str, target: str | None = None) -> str:
        """The repository here for a source repository path (without its host) or its target:."""
        path = target or path
        return f"{self.prefix}/{path}" if self.prefix else path


@dataclass
class PushReport:
    reference: str
    target: str
    digest: str
    status: str = "pending"
    error: str | None = None
    blobs: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    existing: int = 0
    seconds: float = 0.0


@dataclass
class PushOptions:
    jobs: int = 8
    chunk_size: int = DEFAULT_CHUNK
    dry_run: bool = False
    fail_fast: bool = False


@dataclass
class PushResult:
    images: list[PushReport]
    totals: PushTotals
    destination: str

    def to_json(self) -> dict:
        return {"images": [asdict(i) for i in self.images], "totals": self.totals.to_json(),
                "destination": self.destination}


@dataclass
class _Plan:
    image: PushImage
    repo: str
    tag: str | None
    manifests: list[Manifest] = field(default_factory=list)   # children first, top last
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    lacking: dict[str, Descriptor] = field(default_factory=dict)   # not in any source bundle
    sparse: bool = False          # an index whose children are not all in the source


class Pusher:
    """Pushes a set of images from one source into one registry."""

    def __init__(self, source: Source, uploader: Sink, dest: Destination, opts: PushOptions,
                 progress: Progress, holders: dict[str, tuple[Holder, ...]] | None = None):
        self.source, self.up, self.dest, self.opts, self.progress = source, uploader, dest, opts, progress
        self.jobs = asyncio.Semaphore(opts.jobs)
        # a differential bundle's blobs expected from its base, found where the base carried them
        self.base = BaseBlobs(uploader, dest, holders or {}, self.jobs, opts.dry_run)
        self.blob_tasks: dict[tuple[str, str], asyncio.Future] = {}
        self.holder: dict[str, asyncio.Future] = {}      # digest -> repo that has it (this run)
        self.uploaded_bytes = 0

    def plan(self, images: list[PushImage]) -> list[_Plan]:
        """Where each image goes and what it consists of; refuses two images on one name."""
        plans, seen = [], {}
        for image in images:
            repo, tag, digest = self.dest.place(image)
            name = f"{self.dest.host}/{repo}" + (f":{tag}" if tag else f"@{digest}")
            if name in seen and seen[name] != image.ref_name:
                raise UsageError(f"{name}: both {seen[name]} and {image.ref_name} would be pushed there; "
                                 "give one of them a target: in mirror.yaml, or push them separately")
            seen[name] = image.ref_name
            plan = _Plan(image, repo, tag)
            self._walk(plan, image.descriptor, depth=0)
            plans.append(plan)
        return plans

    def _walk(self, plan: _Plan, desc: Descriptor, depth: int) -> None:
        if depth > 8:            # as the bundle reader allows
            raise MirrorError(f"{plan.image.ref_name}: indexes nested too deep")
        raw = self.source.read(desc.digest)
        if len(raw) != desc.size:
            raise MirrorError(f"{plan.image.ref_name}: manifest {desc.digest} has {len(raw)} bytes in the "
                              f"bundle, its descriptor says {desc.size}; run imgmirror verify on it")
        m = parse_manifest(raw, desc.media_type, plan.image.ref_name)
        if m.is_index:
            for child in m.children:
                if self.source.has(child.digest):      # a sparse index lacks some children
                    self._walk(plan, child, depth + 1)
                else:
                    plan.sparse = True
        else:
            for b in m.blobs:
                if self.source.has(b.digest):
                    if self.source.size(b.digest) != b.size:
                        raise MirrorError(f"{plan.image.ref_name}: blob {b.digest} has "
                                          f"{self.source.size(b.digest)} bytes in the bundle, its "
                                          f"descriptor says {b.size}; run imgmirror verify on it")
                    plan.blobs[b.digest] = b
                elif not b.urls:                 # foreign layers are fetched from their URLs
                    plan.lacking[b.digest] = b   # a differential bundle's, from its base
        plan.manifests.append(m)

    async def run(self, images: list[PushImage]) -> PushResult:
        started = time.monotonic()
        plans = self.plan(images)
        await self.base.locate(plans)
        self.progress.images_total(len(plans))
        tasks = [asyncio.ensure_future(self.push_one(p)) for p in plans]
        try:
            if self.opts.fail_fast:
                for fut in asyncio.as_completed(tasks):
                    report = await fut
                    if report.status == "failed":
                        raise MirrorError(f"{report.reference}: {report.error} (--fail-fast: stopped)")
            reports = await asyncio.gather(*tasks)
        except BaseException:
            everything = tasks + list(self.blob_tasks.values())
            for t in everything:
                t.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
            raise
        ok = sum(1 for r in reports if r.status == "ok")
        totals = PushTotals(images=len(reports), ok=ok, failed=len(reports) - ok,
                            uploaded_bytes=self.uploaded_bytes,
                            blobs_uploaded=sum(r.uploaded for r in reports),
                            blobs_mounted=sum(r.mounted for r in reports),
                            seconds=round(time.monotonic() - started, 3))
        dest = self.dest.host + (f"/{self.dest.prefix}" if self.dest.prefix else "")
        return PushResult(list(reports), totals, dest)

    async def push_one(self, plan: _Plan) -> PushReport:
        started = time.monotonic()
        top = plan.image.descriptor
        target = f"{self.dest.host}/{plan.repo}" + (f":{plan.tag}" if plan.tag else f"@{top.digest}")
        report = PushReport(plan.image.ref_name, target, top.digest, blobs=len(plan.blobs))
        try:
            # Already there under its tag (or digest)? The registry accepted that manifest only
            # with every blob and child present, so there is nothing to check one by one.
            if await self.up.manifest_digest(plan.repo, plan.tag or top.digest) == top.digest:
                report.existing, report.status = len(plan.blobs), "ok"
                return self._done(report, started)
            mounts = self.base.wanted(plan)
            results = await asyncio.gather(*(self.blob(plan.repo, d) for d in [*plan.blobs.values(), *mounts]),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            report.uploaded, report.mounted, report.existing = (
                results.count("uploaded"), results.count("mounted"), results.count("existing"))
            report.uploaded_bytes = sum(plan.blobs[d].size for d, r in zip(plan.blobs, results[:len(plan.blobs)],
                                                                           strict=True)
                                        if r == "uploaded")     # the mounts come after plan.blobs
            if not self.opts.dry_run:
                # Children first (the registry checks references), each by digest, so the registry
                # checks the bytes against the digest too; the top as well, before its tag.
                for m in plan.manifests:
                    if await self.up.manifest_digest(plan.repo, m.digest) != m.digest:
                        await self.up.put_manifest(plan.repo, m.digest, m.raw, m.media_type)
                if plan.tag:
                    # A tag PUT carries no digest to check: compare what the registry says it
                    # stored, and send it once more if the bytes were damaged on the way.
                    for _ in range(2):
                        put = await self.up.put_manifest(plan.repo, plan.tag, plan.manifests[-1].raw,
                                                         top.media_type)
                        if put in (None, top.digest):
                            break
                    got = await self.up.manifest_digest(plan.repo, plan.tag)
                    if got != top.digest:
                        raise MirrorError(f"{target}: the registry reports digest {got} after the push, "
                                          f"the bundle has {top.digest}")
            report.status = "ok"
        except MirrorError as exc:
            report.status, report.error = "failed", _explain(exc, plan)
        except OSError as exc:
            report.status, report.error = "failed", f"reading the source: {exc.strerror or exc}"
        return self._done(report, started)

    def _done(self, report: PushReport, started: float) -> PushReport:
        report.seconds = round(time.monotonic() - started, 3)
        detail = (f"{report.digest} {report.uploaded} uploaded ({human(report.uploaded_bytes)}), "
                  f"{report.mounted} mounted, {report.existing} present" if report.status == "ok" else report.error)
        self.progress.image_done(f"{report.reference} -> {report.target}", report.status == "ok", detail)
        return report

    def blob(self, repo: str, desc: Descriptor) -> asyncio.Future:
        """The one transfer of a blob into a repository: 'existing', 'mounted' or 'uploaded'."""
        key = (repo, desc.digest)
        if key not in self.blob_tasks:
            self.blob_tasks[key] = asyncio.ensure_future(self._blob(repo, desc))
        return asyncio.shield(self.blob_tasks[key])

    async def _blob(self, repo: str, desc: Descriptor) -> str:
        d = desc.digest
        if (repo, d) in self.base.mounts:
            return await self.base.mount(repo, d)
        holder = self.holder.get(d)
        if holder is None:
            self.holder[d] = holder = asyncio.get_running_loop().create_future()
            try:
                if await self.up.blob_exists(repo, d):
                    holder.set_result(repo)
                    return "existing"
                if not self.opts.dry_run:
                    async with self.jobs:
                        await self.up.upload(repo, d, self.source, self.opts.chunk_size,
                                             on_bytes=self._count)
                holder.set_result(repo)
                return "uploaded"
            except BaseException as exc:
                del self.holder[d]         # let another repository try on its own
                if not holder.done():
                    holder.set_exception(exc)
                    holder.exception()     # retrieved: no "never retrieved" warning
                raise
        if await self.up.blob_exists(repo, d):
            return "existing"
        try:
            from_repo = await asyncio.shield(holder)
        except MirrorError:
            from_repo = None
        if self.opts.dry_run:
            return "mounted" if from_repo else "uploaded"
        async with self.jobs:
            location = await self.up.mount(repo, d, from_repo) if from_repo else None
            if from_repo and location is None:
                return "mounted"
            await self.up.upload(repo, d, self.source, self.opts.chunk_size, location=location,
                                 on_bytes=self._count)
        return "uploaded"

    def _count(self, n: int) -> None:
        self.uploaded_bytes += n
        self.progress.advance(n)


def _explain(exc: MirrorError, plan: _Plan) -> str:
    """The error, and what to do where the registry's words alone do not say it."""
    message = str(exc)
    codes = exc.codes if isinstance(exc, RegistryError) else set()
    if not codes & {"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"}:
        return message
    named = {e["detail"] for e in exc.errors if e["detail"].startswith("sha256:")}
    foreign = {d.digest for m in plan.manifests if not m.is_index for d in m.layers if d.urls}
    if foreign and (named & foreign or not named):
        return (message + " — the manifest has foreign (non-distributable) layers with urls, which "
                "this registry refuses; distribution accepts them only when its configuration sets "
                "validation.manifests.urls.allow (e.g. ['^https?://']): ask its operator to, or "
                "leave this image out")
    if plan.sparse:
        return (message + " — the index is sparse (made with keep_index_digest: true): its "
                "unfiltered children are in no bundle, and some registries (distribution 2.8 among "
                "them) refuse to store such an index; sync it without keep_index_digest to push it")
    return message


async def push_images(source: Source, images: list[PushImage], dest: Destination, registry,
                      opts: PushOptions, progress: Progress, session=None,
                      insecure: bool = False, holders: dict | None = None,
                      ctx: RunContext | None = None) -> PushResult:
    """Push `images` from `source` to `dest`; `registry` is the destination's RegistryConfig;
    `holders`: where a differential bundle's base carried the blobs it lacks (diff.expected_holders);
    `session` and `ctx`: the run's, when push is part of a sync (else its own, closed at the end)."""
    from ..registry.transport import new_session, transport_for
    own_session, own_ctx = session is None, ctx is None
    if own_session:
        session = new_session()
    ctx = ctx or RunContext()
    try:
        uploader = Uploader(transport_for(session, dest.host, registry, opts.jobs, insecure), readers=ctx.readers)
        return await Pusher(source, uploader, dest, opts, progress, holders).run(images)
    finally:
        if own_session:
            await session.close()
        if own_ctx:
            ctx.close()
