"""The downloads of a run: every blob once. One in-flight future per digest, shared (shielded)
by every image that needs it; bounded by the run's transfer limit; a download under way can be
followed by the bundle writer (`started`)."""

from __future__ import annotations

import asyncio

from ..cache import Store
from ..core.oci import Descriptor
from ..progress import Progress
from ..registry.client import Registry


class Fetcher:
    """Registry -> cache, each digest once per run."""

    def __init__(self, store: Store, jobs: int, progress: Progress):
        self.store, self.progress = store, progress
        self.jobs = asyncio.Semaphore(jobs)
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
            async with self.jobs:
                def on_bytes(n: int) -> None:
                    self.downloaded += n
                    self.progress.advance(n)
                await reg.fetch_blob(repo, desc, self.store, on_bytes, on_start=started.set_result)
                self.fetched.add(desc.digest)
        finally:
            if not started.done():
                started.set_result(None)
