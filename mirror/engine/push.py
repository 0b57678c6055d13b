"""imgmirror push (and sync --to): replay images from a bundle or the cache into a registry,
digest for digest.

The images of a Source (a bundle, or the cache) placed under --to and target:, then copied by the
one copy engine (copy.py): blobs once per repository, mounts, manifests children first, the tags
last, checked after; as the exact bytes of the source.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..errors import RegistryError, UsageError
from ..core.oci import Descriptor
from ..core.units import human
from ..progress import Progress
from ..core.diff import Holder
from ..core.reference import ReferenceError_, parse_reference
from ..registry.upload import Uploader
from ..core.content import Sink, Source
from .base_blobs import BaseBlobs
from .copy import Copier, Outcome, Unit, walk
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


class Pusher:
    """Pushes a set of images from one source into one registry: plans each image (where it goes,
    what it consists of) and runs the copy engine (copy.Copier) over them."""

    def __init__(self, source: Source, uploader: Sink, dest: Destination, opts: PushOptions,
                 progress: Progress, holders: dict[str, tuple[Holder, ...]] | None = None):
        self.source, self.up, self.dest, self.opts, self.progress = source, uploader, dest, opts, progress
        # a differential bundle's blobs expected from its base, found where the base carried them
        self.base = BaseBlobs(uploader, dest, holders or {}, opts.dry_run)
        self.uploaded_bytes = 0
        self.seen: dict[str, str] = {}       # name at the destination -> the image placed there

    def place(self, image: PushImage) -> Unit:
        """Where one image goes and what it consists of; refuses a name another image took."""
        repo, tag, digest = self.dest.place(image)
        name = f"{self.dest.host}/{repo}" + (f":{tag}" if tag else f"@{digest}")
        taken = self.seen.setdefault(name, image.ref_name)
        if taken != image.ref_name:
            raise UsageError(f"{name}: both {taken} and {image.ref_name} would be pushed there; "
                             "give one of them a target: in mirror.yaml, or push them separately")
        return walk(self.source, Unit(image.ref_name, repo, tag, image.descriptor, target=name))

    def plan(self, images: list[PushImage]) -> list[Unit]:
        """Every image placed (before any request: a clash of names stops the whole push)."""
        return [self.place(image) for image in images]

    def copier(self) -> Copier:
        return Copier(self.source, self.up, chunk_size=self.opts.chunk_size, dry_run=self.opts.dry_run,
                      base=self.base, on_bytes=self._count, on_done=self._done)

    async def run(self, images: list[PushImage]) -> PushResult:
        started = time.monotonic()
        units = self.plan(images)
        self.progress.images_total(len(units))
        outcomes = await self.copier().run(units, fail_fast=self.opts.fail_fast)
        return self.result([self.report(o) for o in outcomes], started)

    def result(self, reports: list[PushReport], started: float) -> PushResult:
        ok = sum(1 for r in reports if r.status == "ok")
        totals = PushTotals(images=len(reports), ok=ok, failed=len(reports) - ok,
                            uploaded_bytes=self.uploaded_bytes,
                            blobs_uploaded=sum(r.uploaded for r in reports),
                            blobs_mounted=sum(r.mounted for r in reports),
                            seconds=round(time.monotonic() - started, 3))
        dest = self.dest.host + (f"/{self.dest.prefix}" if self.dest.prefix else "")
        return PushResult(reports, totals, dest)

    def report(self, o: Outcome) -> PushReport:
        u = o.unit
        return PushReport(u.name, u.target, u.top.digest, status="ok" if o.ok else "failed",
                          error=_explain(o.error, u) if o.error else None, blobs=len(u.blobs),
                          uploaded=o.uploaded, uploaded_bytes=o.uploaded_bytes, mounted=o.mounted,
                          existing=o.existing, seconds=o.seconds)

    def _done(self, o: Outcome) -> str | None:
        r = self.report(o)
        detail = (f"{r.digest} {r.uploaded} uploaded ({human(r.uploaded_bytes)}), "
                  f"{r.mounted} mounted, {r.existing} present" if r.status == "ok" else r.error)
        self.progress.image_done(f"{r.reference} -> {r.target}", r.status == "ok", detail)
        return r.error

    def _count(self, n: int) -> None:
        self.uploaded_bytes += n
        self.progress.advance(n)


def _explain(exc: Exception, plan: Unit) -> str:
    """The error, and what to do where the registry's words alone do not say it."""
    if isinstance(exc, OSError):
        return f"reading the source: {exc.strerror or exc}"
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
