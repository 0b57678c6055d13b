"""The distribution API's write side for one registry host: blobs (monolithic, chunked, mounted)
and manifests. Bodies are streamed from a `Source`, never held whole in memory."""

from __future__ import annotations

import asyncio
import concurrent.futures
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from ..core.content import Source
from ..errors import RegistryError
from ..core.reference import join_ref
from .client import head_manifest
from .transport import SMALL_BLOB, Transport

READ_CHUNK = 2 << 20       # fewer hand-offs to the reader threads, with bounded memory
MIN_CHUNK = 64 * 1024




def _push(repo: str, *more: str) -> frozenset:
    return frozenset({f"repository:{repo}:pull,push", *(f"repository:{m}:pull" for m in more)})


def with_query(location: str, **params: str) -> str:
    """Add query parameters to an upload Location, which may already carry a query string."""
    parts = urlsplit(location)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


async def _stream(source: Source, digest: str, start: int = 0, length: int | None = None,
                  readers: concurrent.futures.Executor | None = None):
    """The bytes [start, start+length) of a blob, read in a worker thread, as an async iterator."""
    loop = asyncio.get_running_loop()
    if length is not None and length <= READ_CHUNK:     # one hand-off to a reader thread, not three
        yield await loop.run_in_executor(readers, _read_range, source, digest, start, length)
        return
    fh = await loop.run_in_executor(readers, source.open_blob, digest)
    try:
        if start:
            await loop.run_in_executor(readers, fh.seek, start)
        left = source.size(digest) - start if length is None else length
        while left > 0:
            chunk = await loop.run_in_executor(readers, fh.read, min(READ_CHUNK, left))
            if not chunk:
                raise RegistryError(f"blob {digest}: source ended {left} bytes early")
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _read_range(source: Source, digest: str, start: int, length: int) -> bytes:
    fh = source.open_blob(digest)
    try:
        if start:
            fh.seek(start)
        out = b""
        while len(out) < length:
            chunk = fh.read(length - len(out))
            if not chunk:
                raise RegistryError(f"blob {digest}: source ended {length - len(out)} bytes early")
            out += chunk
        return out
    finally:
        fh.close()


class Uploader:
    """Push blobs and manifests to one registry host through a Transport."""

    # A registry accepts a manifest only with everything it references: one present is complete.
    complete_manifests = True
    # Asking whether it has a blob costs a round trip (the copy engine sends an image config,
    # new with its image nearly always, without asking first).
    remote = True

    def __init__(self, transport: Transport, readers: concurrent.futures.Executor | None = None):
        self.t = transport
        self.readers = readers      # the run's threads that read what is uploaded (None: the loop's)
        self.host = transport.settings.host
        self.body_limit: int | None = None       # learnt from a 413: bodies must stay below it
        # Single-request uploads (POST ?digest= with the body): None until a registry answer
        # tells. Tried with bodies up to MIN_CHUNK while unknown (a registry without them opens
        # a session and ignores the body, which is then sent again with the PUT: little lost),
        # and used for blobs up to SMALL_BLOB once it answered 201.
        self.monolithic: bool | None = None
        self._early: dict[tuple[str, str], asyncio.Future] = {}

    async def blob_exists(self, repo: str, digest: str) -> bool:
        """HEAD the blob in `repo` (a 404 is an answer, not an error)."""
        async with self.t.meta:
            resp = await self.t.open("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=_push(repo),
                                     ok=(200, 404), what=f"blob {digest} in {self.host}/{repo}")
            resp.release()
        return resp.status == 200

    async def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The digest `repo:ref` has in the registry, or None if it has none (the answer of an
        `ask_early` for it, once, if one was made)."""
        early = self._early.pop((repo, ref), None)
        if early is not None:
            return await early
        there, digest = await head_manifest(self.t, repo, ref, _push(repo), missing_ok=True)
        return digest if there else None

    def ask_early(self, repo: str, ref: str) -> None:
        """Send the HEAD of `repo:ref` now, for the next `manifest_digest(repo, ref)` (sync --to
        asks the destination about an image while its blobs are still downloading)."""
        if (repo, ref) not in self._early:
            fut = asyncio.ensure_future(self.manifest_digest(repo, ref))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())   # retrieved later, or not
            self._early[(repo, ref)] = fut

    def drop_early(self) -> list[asyncio.Future]:
        """Every early HEAD not taken yet, cancelled (the run stops); the futures, to await."""
        futures, self._early = list(self._early.values()), {}
        for f in futures:
            f.cancel()
        return futures

    async def mount(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount; None when mounted, else the Location of an open upload."""
        url = f"/v2/{repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": from_repo})
        async with self.t.meta:
            resp = await self.t.open("POST", url, scopes=_push(repo, from_repo), ok=(201, 202),
                                     what=f"mount of {digest} into {self.host}/{repo}")
            resp.release()
        return None if resp.status == 201 else self._location(resp)

    async def cancel(self, location: str, repo: str) -> None:
        """Cancel an upload session (DELETE its Location); a registry that cannot is let be."""
        async with self.t.meta:
            resp = await self.t.open("DELETE", location, scopes=_push(repo), ok=(200, 202, 204, 404, 405),
                                     what=f"cancel of an upload to {self.host}/{repo}")
            resp.release()

    def _location(self, resp) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.host}: upload answer {resp.status} without a Location")
        return urljoin(str(resp.url), loc)     # may be relative

    async def upload(self, repo: str, digest: str, source: Source, chunk_size: int,
                     location: str | None = None, on_bytes=None) -> None:
        """Upload a blob: one POST where the registry takes a small blob whole, else a session
        (POST) and one PUT, or PATCH chunks when it is big or a proxy limits bodies."""
        size = source.size(digest)
        while True:
            limit = min(chunk_size, self.body_limit or chunk_size)

            async def attempt(limit: int = limit) -> None:
                # One upload session, start to end: a failed session is never reused, so a retry
                # opens a new one (POST) and sends the blob again. Its requests are not retried
                # one by one: the transport's policy retries the whole attempt.
                nonlocal location
                try:
                    if location is None and size <= limit and self._single(size):
                        location = await self._post_whole(repo, digest, source, size, on_bytes)
                        if location is None:
                            return
                    if location is None:
                        location = await self._open_session(repo)
                    if size <= limit:
                        await self._put(repo, location, digest, source, 0, size, on_bytes)
                    else:
                        await self._chunked(repo, location, digest, source, size, limit, on_bytes)
                except RegistryError:
                    location = None
                    raise
            try:
                return await self.t.retrying(attempt)
            except RegistryError as exc:
                if exc.status == 413 and min(size, limit) > MIN_CHUNK:
                    # A proxy caps request bodies: from now on send chunks below what it refused.
                    self.body_limit = max(MIN_CHUNK, min(size, limit) // 2)
                    continue
                raise

    def _single(self, size: int) -> bool:
        return size <= (SMALL_BLOB if self.monolithic else MIN_CHUNK if self.monolithic is None else -1)

    async def _post_whole(self, repo, digest, source, size, on_bytes) -> str | None:
        """The whole blob in one POST (`?digest=`): None when the registry took it (201), else
        the Location of the session it opened instead (202), to PUT the blob into as usual."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        what = f"upload of {digest} to {self.host}/{repo}"
        try:
            async with self.t.meta:
                resp = await self.t.open("POST", f"/v2/{repo}/blobs/uploads/?" + urlencode({"digest": digest}),
                                         scopes=_push(repo), headers=headers, ok=(201, 202), retry=False,
                                         body=lambda: _stream(source, digest, 0, size, self.readers), what=what)
                resp.release()
        except RegistryError as exc:
            if exc.status not in (400, 405, 415):
                raise
            self.monolithic = False      # refused outright: sessions from now on
            return await self._open_session(repo)
        if resp.status == 201:
            self.monolithic = True
            if on_bytes:
                on_bytes(size)
            return None
        self.monolithic = False          # a session instead: this registry takes no body in a POST
        return self._location(resp)

    async def _open_session(self, repo: str) -> str:
        async with self.t.meta:
            resp = await self.t.open("POST", f"/v2/{repo}/blobs/uploads/", scopes=_push(repo), ok=(202,),
                                     what=f"upload to {self.host}/{repo}", retry=False)
            resp.release()
        return self._location(resp)

    async def _put(self, repo, location, digest, source, start, length, on_bytes, final=True):
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if not final:
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        url = with_query(location, digest=digest) if final else location

        def body():
            return _counted(_stream(source, digest, start, length, self.readers), on_bytes)
        async with self.t.lane(length):
            resp = await self.t.open("PUT" if final else "PATCH", url, scopes=_push(repo), headers=headers,
                                     ok=(201,) if final else (202, 204), body=body, retry=False,
                                     what=f"upload of {digest} to {self.host}/{repo}")
            resp.release()
        return resp

    async def _chunked(self, repo, location, digest, source, size, chunk, on_bytes):
        start = 0
        while start < size:
            length = min(chunk, size - start)
            resp = await self._put(repo, location, digest, source, start, length, on_bytes, final=False)
            location = self._location(resp)
            start += length
        headers = {"Content-Length": "0"}
        async with self.t.meta:
            resp = await self.t.open("PUT", with_query(location, digest=digest), scopes=_push(repo),
                                     headers=headers, ok=(201,), retry=False,
                                     what=f"upload of {digest} to {self.host}/{repo}")
            resp.release()

    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str | None:
        """PUT the exact manifest bytes under a tag or digest; returns the registry's digest."""
        async with self.t.meta:
            resp = await self.t.open("PUT", f"/v2/{repo}/manifests/{ref}", scopes=_push(repo),
                                     headers={"Content-Type": media_type}, ok=(201,), body=lambda: raw,
                                     what=f"manifest {join_ref(f'{self.host}/{repo}', ref)}")
            resp.release()
        return resp.headers.get("Docker-Content-Digest")


async def _counted(stream, on_bytes):
    async for chunk in stream:
        if on_bytes:
            on_bytes(len(chunk))
        yield chunk
