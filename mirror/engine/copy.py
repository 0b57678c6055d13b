"""The one copy engine: `copy(units, source, sink)` moves images from a Source into a Sink.

Every copy of the tool goes through it:
- sync: registry -> cache (`fetch.RegistrySource` -> `cache.CacheSink`; the bundle writer
  follows the cache as the bytes land, see `output.BundleOutput.feed`);
- sync --to: the same, then cache -> registry (`cache.StoreSource` -> `registry.upload.Uploader`);
- push: bundle -> registry (`bundle.reader` -> `registry.upload.Uploader`).

The rules, in one place: an image already complete at the sink (a registry accepts a manifest only
with everything it references) is skipped whole; every blob goes once per repository, the first
repository to need it sends it and the others mount it from there (a differential bundle's blobs
from where its base put them, `base_blobs.BaseBlobs`); manifests go children first, each by digest,
the tag last, checked after. Outcomes are per image: a failure is recorded, never raised (unless
fail_fast), and never stops a blob that other images share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.content import Sink, Source
from ..core.oci import IMAGE_CONFIG_TYPES, Descriptor, Manifest, parse_manifest
from ..core.plan import MAX_DEPTH
from ..errors import MirrorError
from .base_blobs import BaseBlobs

UNASKED = 64 * 1024     # a blob this small is sent to a remote sink without a HEAD first


@dataclass
class Unit:
    """One image to copy: where it goes and what it consists of."""

    name: str                     # the image as reports name it
    repo: str                     # its repository at the sink
    tag: str | None
    top: Descriptor
    manifests: list[Manifest] = field(default_factory=list)   # children first, top last
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    lacking: dict[str, Descriptor] = field(default_factory=dict)   # not in the source (a base's)
    sparse: bool = False          # an index whose children are not all in the source
    target: str = ""              # where it lands, as messages name it (default: name)


@dataclass
class Outcome:
    """What became of one unit."""

    unit: Unit
    error: Exception | None = None       # MirrorError, or OSError (the source's disk)
    uploaded: int = 0
    mounted: int = 0
    existing: int = 0
    uploaded_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def walk(source: Source, unit: Unit, desc: Descriptor | None = None, depth: int = 0) -> Unit:
    """Fill `unit` from the manifests in `source`, children first: the blobs the source holds
    (sizes checked against their descriptors) and those it lacks (a differential bundle's)."""
    desc = desc or unit.top
    if depth > MAX_DEPTH:
        raise MirrorError(f"{unit.name}: indexes nested too deep")
    raw = source.read(desc.digest)
    if len(raw) != desc.size:
        raise MirrorError(f"{unit.name}: manifest {desc.digest} has {len(raw)} bytes in the "
                          f"bundle, its descriptor says {desc.size}; run imgmirror verify on it")
    m = parse_manifest(raw, desc.media_type, unit.name)
    if m.is_index:
        for child in m.children:
            if source.has(child.digest):      # a sparse index lacks some children
                walk(source, unit, child, depth + 1)
            else:
                unit.sparse = True
    else:
        for b in m.blobs:
            if source.has(b.digest):
                if source.size(b.digest) != b.size:
                    raise MirrorError(f"{unit.name}: blob {b.digest} has {source.size(b.digest)} bytes "
                                      f"in the bundle, its descriptor says {b.size}; run imgmirror verify on it")
                unit.blobs[b.digest] = b
            elif not b.urls:                 # foreign layers are fetched from their URLs
                unit.lacking[b.digest] = b   # a differential bundle's, from its base
    unit.manifests.append(m)
    return unit


async def copy(units: list[Unit], source: Source, sink: Sink, fail_fast: bool = False, **options) -> list[Outcome]:
    """Copy `units` from `source` into `sink` (options: those of Copier); one outcome per unit."""
    return await Copier(source, sink, **options).run(units, fail_fast)


class Copier:
    """Copies units from one source into one sink; `run()` is the whole copy."""

    def __init__(self, source: Source, sink: Sink, *, jobs: int | None = None, chunk_size: int = 64 << 20,
                 dry_run: bool = False, base: BaseBlobs | None = None,
                 on_bytes: Callable[[int], None] | None = None,
                 on_done: Callable[[Outcome], str | None] | None = None):
        """`jobs`: blob transfers at once (None: the sink and source limit themselves);
        `base`: a differential bundle's blobs located in the sink; `on_done(outcome)`: called as
        each unit ends, returns the error as shown (for --fail-fast)."""
        self.source, self.sink, self.chunk_size, self.dry_run = source, sink, chunk_size, dry_run
        self.jobs = asyncio.Semaphore(jobs) if jobs else None
        self.base = base
        self.on_bytes, self.on_done = on_bytes, on_done
        self.blob_tasks: dict[tuple[str, str], asyncio.Future] = {}
        self.holder: dict[str, asyncio.Future] = {}      # digest -> repo that has it (this run)
        self.tasks: list[asyncio.Future] = []

    async def run(self, units: list[Unit], fail_fast: bool = False) -> list[Outcome]:
        if self.base:
            await self.base.locate(units)
        for u in units:
            self.add(u)
        return await self.finish(fail_fast)

    def add(self, unit: Unit) -> asyncio.Future:
        """Start copying one more unit now (a sync adds each image as soon as it is resolved);
        `finish()` waits for every unit added."""
        task = asyncio.ensure_future(self.one(unit))
        self.tasks.append(task)
        return task

    async def finish(self, fail_fast: bool = False) -> list[Outcome]:
        """Every unit added, ended: their outcomes in the order they were added."""
        try:
            if fail_fast:
                for fut in asyncio.as_completed(self.tasks):
                    outcome, shown = await fut
                    if not outcome.ok:
                        raise MirrorError(f"{outcome.unit.name}: {shown} (--fail-fast: stopped)")
            return [o for o, _ in await asyncio.gather(*self.tasks)]
        except BaseException:
            await self.cancel()
            raise

    async def cancel(self) -> None:
        """Every unit and transfer of this copy cancelled."""
        everything = self.tasks + list(self.blob_tasks.values())
        for t in everything:
            t.cancel()
        await asyncio.gather(*everything, return_exceptions=True)

    async def one(self, unit: Unit) -> tuple[Outcome, str | None]:
        started = time.monotonic()
        out = Outcome(unit)
        try:
            await self._copy(unit, out)
        except (MirrorError, OSError) as exc:
            out.error = exc
        out.seconds = round(time.monotonic() - started, 3)
        shown = self.on_done(out) if self.on_done else (str(out.error) if out.error else None)
        return out, shown

    async def _copy(self, unit: Unit, out: Outcome) -> None:
        top = unit.top
        # Already there under its tag (or digest)? A registry accepted that manifest only with
        # every blob and child present, so there is nothing to check one by one.
        if self.sink.complete_manifests and \
                await self.sink.manifest_digest(unit.repo, unit.tag or top.digest) == top.digest:
            out.existing = len(unit.blobs)
            return
        mounts = self.base.wanted(unit) if self.base else []
        blobs = [*unit.blobs.values(), *mounts]
        results = await asyncio.gather(*(self.blob(unit.repo, d) for d in blobs), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        out.uploaded, out.mounted, out.existing = (
            results.count("uploaded"), results.count("mounted"), results.count("existing"))
        out.uploaded_bytes = sum(d.size for d, r in zip(blobs, results, strict=True) if r == "uploaded")
        if self.dry_run:
            return
        # Children first (a registry checks references), each by digest, so the sink checks the
        # bytes against the digest too; the top by digest only when it has no tag: a tagged top
        # goes once, under its tag, and the digest the registry computed of it is checked.
        tagged = bool(unit.tag and unit.manifests)
        for m in unit.manifests[:-1] if tagged else unit.manifests:
            if await self.sink.manifest_digest(unit.repo, m.digest) != m.digest:
                await self.sink.put_manifest(unit.repo, m.digest, m.raw, m.media_type)
        if tagged:
            await self._tag(unit)

    async def _tag(self, unit: Unit) -> None:
        """The top manifest under its tag. A tag PUT carries no digest for the registry to check,
        so the digest it answers (of the bytes it stored) must be the bundle's: sent once more if
        the bytes were damaged on the way; a registry that names none is asked with a HEAD."""
        top = unit.top
        for _ in range(2):
            put = await self.sink.put_manifest(unit.repo, unit.tag, unit.manifests[-1].raw, top.media_type)
            if put == top.digest:
                return
            if put is None:
                break
        got = await self.sink.manifest_digest(unit.repo, unit.tag)
        if got != top.digest:
            raise MirrorError(f"{unit.target or unit.name}: the registry reports digest {got} after the push, "
                              f"the bundle has {top.digest}")

    def blob(self, repo: str, desc: Descriptor) -> asyncio.Future:
        """The one transfer of a blob into a repository: 'existing', 'mounted' or 'uploaded'."""
        key = (repo, desc.digest)
        if key not in self.blob_tasks:
            self.blob_tasks[key] = asyncio.ensure_future(self._blob(repo, desc))
        # shield: one image failing or being cancelled must not cancel a transfer others await
        return asyncio.shield(self.blob_tasks[key])

    async def _blob(self, repo: str, desc: Descriptor) -> str:
        d = desc.digest
        if self.base and (repo, d) in self.base.mounts:
            async with self._slot():
                return await self.base.mount(repo, d)
        holder = self.holder.get(d)
        if holder is None:
            self.holder[d] = holder = asyncio.get_running_loop().create_future()
            try:
                if not self._unasked(desc) and await self.sink.blob_exists(repo, d):
                    holder.set_result(repo)
                    return "existing"
                if not self.dry_run:
                    await self._send(repo, desc)
                holder.set_result(repo)
                return "uploaded"
            except BaseException as exc:
                del self.holder[d]         # let another repository try on its own
                if not holder.done():
                    holder.set_exception(exc)
                    holder.exception()     # retrieved: no "never retrieved" warning
                raise
        if await self.sink.blob_exists(repo, d):
            return "existing"
        try:
            from_repo = await asyncio.shield(holder)
        except (MirrorError, OSError):
            from_repo = None
        if self.dry_run:
            return "mounted" if from_repo else "uploaded"
        location = None
        if from_repo:
            async with self._slot():
                location = await self.sink.mount(repo, d, from_repo)
            if location is None:
                return "mounted"
        await self._send(repo, desc, location)
        return "uploaded"

    def _unasked(self, desc: Descriptor) -> bool:
        """Sent without asking whether the sink has it, where asking costs a round trip: an image
        config (new with its image nearly always) and any blob of at most UNASKED bytes (sending
        it costs about what asking does). The sink checks the digest all the same."""
        return self.sink.remote and self.source.has(desc.digest) and \
            (desc.media_type in IMAGE_CONFIG_TYPES or desc.size <= UNASKED)

    async def _send(self, repo: str, desc: Descriptor, location: str | None = None) -> None:
        async with self._slot():
            await self.sink.upload(repo, desc.digest, self.source, self.chunk_size, location=location,
                                   on_bytes=self.on_bytes)

    def _slot(self):
        return self.jobs if self.jobs is not None else contextlib.nullcontext()
