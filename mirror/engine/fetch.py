"""The downloads of a run: every blob once. One in-flight future per digest, shared (shielded)
by every image that needs it; bounded by each host's lanes (registry.transport). RegistrySource offers them to
the copy engine as a Source, and to the bundle writer as downloads to follow."""

from __future__ import annotations

import asyncio

from ..cache import Store, StoreSource
from ..core.content import Follower
from ..core.oci import Descriptor
from ..errors import MirrorError
from ..progress import Progress
from ..registry.client import Registry


class Fetcher:
    """Registry -> cache, each digest once per run."""

    def __init__(self, store: Store, progress: Progress):
        self.store, self.progress = store, progress
        self.inflight: dict[str, asyncio.Future] = {}
        self.fetched: set[str] = set()      # digests downloaded (and verified) by this run
        self.started: dict[str, asyncio.Future] = {}   # digest -> its BlobWriter, once under way
        self.downloaded = 0

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
            def on_bytes(n: int) -> None:
                self.downloaded += n
                self.progress.advance(n)
            await reg.fetch_blob(repo, desc, self.store, on_bytes, on_start=started.set_result)
            self.fetched.add(desc.digest)
        finally:
            if not started.done():
                started.set_result(None)


class RegistrySource(StoreSource):
    """The registries of a sync as a copy's Source, through the cache: `stage(digest)` is the one
    download of a blob (from the registry and repository of an image that needs it), and reads
    come from the cache once it is there. The bundle writer follows a download under way with
    `follow`, so the tar is written as the bytes land."""

    def __init__(self, fetcher: Fetcher, wants: dict[str, tuple[Registry, str, Descriptor]]):
        super().__init__(fetcher.store)      # reads: from the cache
        self.fetcher, self.wants = fetcher, wants

    def start(self, order: list[str]) -> None:
        """Begin the downloads in this order (the tar's), so the writer keeps pace with them;
        the transfer limit then lets them go first-come."""
        for digest in order:
            if digest in self.wants:
                self.fetcher.blob(*self.wants[digest])

    async def stage(self, digest: str) -> None:
        await self.fetcher.blob(*self.wants[digest])

    async def follow(self, digest: str) -> Follower | None:
        """The download of `digest` as it lands, once it has begun; None if this run has none
        (the blob was in the cache, or the download failed before its first byte)."""
        started = self.fetcher.started.get(digest)
        blob_writer = await started if started is not None else None
        return blob_writer.follow() if blob_writer is not None else None

    async def settled(self, digest: str) -> bool:
        """Wait for this run's download of `digest`, if any: False when it failed (the images
        that need it report why)."""
        fut = self.fetcher.inflight.get(digest)
        if fut is not None:
            try:
                await asyncio.shield(fut)
            except (MirrorError, OSError):
                return False
        return True

    def landed(self, digest: str) -> bool | None:
        """Whether `digest` is in the cache for good: True when this run's download of it ended
        well, or there is none and the cache has it; False when its download failed; None while
        it may still come (downloading, or not begun)."""
        fut = self.fetcher.inflight.get(digest)
        if fut is None:
            return True if self.store.has(digest) else None
        if not fut.done():
            return None
        return not fut.cancelled() and fut.exception() is None

    def fresh(self, digest: str) -> bool:
        """Downloaded and verified by this run (older cache entries are hashed again on the way)."""
        return digest in self.fetcher.fetched

    def cancel(self) -> list[asyncio.Future]:
        """Every download of this run cancelled; the futures, to be awaited."""
        futures = list(self.fetcher.inflight.values())
        for f in futures:
            f.cancel()
        return futures
