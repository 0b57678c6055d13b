"""The content vocabulary every end of a copy speaks: what a Source of blobs and manifests
offers, what a Sink takes, and how a reader following a blob still being written says that
the bytes it gave are void (`Restarted`) or that no more will come (`Abandoned`).

Implemented by the registry client (registry/), the cache (cache.py) and the bundle (bundle/).
Pure: protocols and exception types, no I/O.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol


class Abandoned(Exception):
    """The write a follower was reading gave up (a failed download): no more bytes will come,
    and the ones read so far must be dropped."""


class Restarted(Exception):
    """The write a follower was reading started over from byte 0 (a server ignored Range): the
    bytes read so far must be dropped; reading goes on from the start."""


class Follower(Protocol):
    """A blob being written, read as it grows: `readinto` blocks until bytes arrive, returns 0 at
    the end of a complete blob, and raises Restarted or Abandoned as above."""

    digest: str
    size: int

    def readinto(self, buffer) -> int: ...
    def close(self) -> None: ...


class Source(Protocol):
    """Where blobs and manifests come from: a bundle, the cache (and a registry, through its
    client's async methods)."""

    def has(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int: ...
    def open_blob(self, digest: str) -> BinaryIO: ...     # a binary file limited to that blob
    def read(self, digest: str) -> bytes: ...             # small content (manifests), verified


class Sink(Protocol):
    """A registry as the end of a copy, one repository at a time (registry.upload.Uploader; an
    in-memory one in tests/test_engine.py; the cache, cache.CacheSink). The copy engine
    (engine/copy.py) speaks only this."""

    complete_manifests: bool    # a manifest present means everything it references is present
    remote: bool                # asking blob_exists costs a round trip (small blobs are sent unasked)

    async def blob_exists(self, repo: str, digest: str) -> bool: ...
    async def manifest_digest(self, repo: str, ref: str) -> str | None: ...
    async def mount(self, repo: str, digest: str, from_repo: str) -> str | None:
        """None when mounted; else the location of the upload session the registry opened."""
    async def cancel(self, location: str, repo: str) -> None: ...
    async def upload(self, repo: str, digest: str, source: Source, chunk_size: int,
                     location: str | None = None, on_bytes=None) -> None: ...
    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str | None:
        """The exact bytes under a tag or digest; the registry's digest of them, if it says."""
