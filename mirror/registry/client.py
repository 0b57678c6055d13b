"""The distribution API of one registry host: manifests, tags, blobs (read side)."""

from __future__ import annotations

import asyncio
import json
import concurrent.futures
from urllib.parse import urljoin

from .http import aiohttp

from ..errors import DigestMismatchError, RegistryError, TransientError
from ..core.oci import ACCEPT, Descriptor, sha256_digest
from ..core.reference import join_ref
from ..cache import Store
from .transport import Transport, read_capped, redact_url

MAX_MANIFEST_BYTES = 4 * 1024 * 1024    # distribution's own limit
MAX_TAG_PAGES = 10_000                  # a tag list that never ends stops here
MAX_TAG_PAGE_BYTES = 16 * 1024 * 1024    # one page of a tag list (10,000 tags are about 200 KB)
CHUNK = 1 << 20


def pull_scope(repo: str) -> frozenset:
    """The token scope set that reads `repo`."""
    return frozenset({f"repository:{repo}:pull"})


async def head_manifest(t: Transport, repo: str, ref: str, scopes: frozenset,
                        missing_ok: bool = False) -> tuple[bool, str | None]:
    """HEAD a manifest by tag or digest (Docker Hub does not count a HEAD against its pull
    limit): (there, its digest if the registry gives Docker-Content-Digest). A 404 is
    (False, None) when `missing_ok`, else NotFoundError. The one HEAD of a manifest: resolving,
    referrers' tags and push's checks all use it."""
    async with t.meta:
        resp = await t.open("HEAD", f"/v2/{repo}/manifests/{ref}", scopes=scopes, headers={"Accept": ACCEPT},
                            ok=(200, 404) if missing_ok else (200,),
                            what=f"manifest {join_ref(f'{t.settings.host}/{repo}', ref)}")
        resp.release()
    if resp.status == 404:
        return False, None
    return True, resp.headers.get("Docker-Content-Digest")


class Registry:
    """Read manifests, tags and blobs from one registry host through a Transport."""

    def __init__(self, transport: Transport, hashers: concurrent.futures.Executor | None = None):
        self.t = transport
        self.host = transport.settings.host
        self.hashers = hashers      # the run's threads that hash and write downloads (None: the loop's)

    async def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points at, if the registry says (a 404 is NotFoundError)."""
        return (await head_manifest(self.t, repo, ref, pull_scope(repo)))[1]

    async def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str]:
        """The exact manifest bytes and their Content-Type. By tag, a Docker-Content-Digest
        the registry sends must be the sha256 of the bytes (DigestMismatchError otherwise)."""
        what = f"manifest {join_ref(f'{self.host}/{repo}', ref)}"
        async def attempt() -> tuple[bytes, str]:
            resp = await self.t.open("GET", f"/v2/{repo}/manifests/{ref}", scopes=pull_scope(repo),
                                     headers={"Accept": ACCEPT}, what=what, retry=False)
            async with resp:
                raw = await read_capped(resp, MAX_MANIFEST_BYTES, what)
                named = resp.headers.get("Docker-Content-Digest", "")
                if not ref.startswith("sha256:") and named.startswith("sha256:") and named != sha256_digest(raw):
                    raise DigestMismatchError(f"{what}: the registry sent a manifest with digest "
                                              f"{sha256_digest(raw)} when asked for {named} (its "
                                              "Docker-Content-Digest); refusing it")
                return raw, resp.headers.get("Content-Type", "")
        async with self.t.meta:
            return await self.t.retrying(attempt)

    async def list_tags(self, repo: str, page_size: int = 1000) -> list[str]:
        """Every tag of a repository, following `Link: <…>; rel="next"` to the end."""
        return await list_pages(self.t, f"/v2/{repo}/tags/list?n={page_size}", "tags", pull_scope(repo),
                                f"tag list of {self.host}/{repo}", MAX_TAG_PAGE_BYTES, MAX_TAG_PAGES)

    async def fetch_blob(self, repo: str, desc: Descriptor, store: Store, on_bytes=None,
                         on_start=None) -> None:
        """Download a blob into the store: streamed, hashed, resumed with Range after a cut.

        `on_start(writer)` is told the BlobWriter once the transfer may begin, so a reader can
        follow the bytes as they land; `on_bytes(n)` counts them."""
        url = f"/v2/{repo}/blobs/{desc.digest}"
        what = f"blob {desc.digest} of {self.host}/{repo}"
        async with self.t.lane(desc.size) as held:
            # the temp file is created off the event loop (a file creation costs ~0.5 ms here)
            begin = asyncio.get_running_loop().run_in_executor(self.hashers, store.begin, desc.digest, desc.size)
            try:
                writer = await asyncio.shield(begin)
            except asyncio.CancelledError:
                begin.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().abort())
                raise
            if on_start:
                on_start(writer)
            try:
                # One operation under the transport's retry policy: each attempt is one GET,
                # a resumed one (Range) included, so N retries mean N+1 GETs at most.
                await self.t.retrying(lambda: self._stream_into(url, repo, writer, what, on_bytes, held))
                await asyncio.to_thread(writer.commit)
            finally:
                writer.abort()

    async def _stream_into(self, url, repo, writer, what, on_bytes, held=None) -> None:
        headers = {"Range": f"bytes={writer.size}-"} if writer.size else {}
        clock = asyncio.get_running_loop().time
        sent = clock()
        resp = await self.t.open("GET", url, scopes=pull_scope(repo), headers=headers, ok=(200, 206), what=what,
                                 retry=False)
        # The round trip this request took, and when its body began: once the rest of the body
        # will take less than that round trip, the lane slot is given back so the next blob is
        # asked for while this one ends.
        began = clock()
        latency, got = began - sent, 0
        async with resp:
            if resp.status == 206:
                start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(writer.size):
                    writer.reset()
                    raise TransientError(f"{what}: unexpected Content-Range from {redact_url(resp.url)}")
            elif writer.size:
                if on_bytes:
                    on_bytes(-writer.size)
                writer.reset()    # the server ignored Range: take the whole body again
            # Hashing and writing run in a worker thread (hashlib releases the GIL), in batches
            # of about CHUNK bytes, so the event loop keeps receiving meanwhile.
            batch: list[bytes] = []
            pending = 0

            async def flush() -> None:
                nonlocal batch, pending
                if batch:
                    chunks, n = batch, pending
                    batch, pending = [], 0
                    # no join: each chunk is written and hashed with the GIL released
                    await asyncio.get_running_loop().run_in_executor(self.hashers, writer.write, *chunks)
                    if on_bytes:
                        on_bytes(n)
            try:
                async for chunk in resp.content.iter_any():   # as received, no re-chunking copy
                    batch.append(chunk)
                    pending += len(chunk)
                    got += len(chunk)
                    if held is not None and writer.expected_size:
                        # the rate is measured over at least one round trip of body
                        elapsed = clock() - began
                        left = writer.expected_size - writer.size - pending
                        if elapsed > latency and left * elapsed <= latency * got:   # left / rate <= latency
                            held.release()
                            held = None
                    if pending >= CHUNK:
                        await flush()
                await flush()
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                await flush()    # keep what arrived before the cut: the resume starts after it
                raise TransientError(f"{what}: connection lost after {writer.size} bytes "
                                     f"({exc.__class__.__name__}); resuming") from None
        if writer.expected_size is not None and writer.size < writer.expected_size:
            raise TransientError(f"{what}: body ended after {writer.size} of {writer.expected_size} bytes")


async def list_pages(t: Transport, url: str, key: str, scopes: frozenset, what: str, cap: int,
                     max_pages: int) -> list[str]:
    """The strings under `key` of a paginated JSON list (tags, the catalog), following
    `Link: <…>; rel="next"` to the end; each page one operation under the retry policy."""
    out: list[str] = []

    async def page(url: str) -> tuple[bytes, str, str]:
        resp = await t.open("GET", url, scopes=scopes, what=what, retry=False)
        async with resp:
            return await read_capped(resp, cap, what), resp.headers.get("Link", ""), str(resp.url)
    for _ in range(max_pages):
        async with t.meta:
            raw, link, base = await t.retrying(lambda u=url: page(u))
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RegistryError(f"{what}: the answer is not JSON") from None
        found = data.get(key) if isinstance(data, dict) else None
        out.extend(x for x in found or [] if isinstance(x, str))
        nxt = _next_link(link)
        if not nxt:
            return out
        url = urljoin(base, nxt)
    raise RegistryError(f"{what}: more than {max_pages} pages; refused")


def _next_link(header: str) -> str | None:
    """The target of a `Link: <url>; rel="next"` header."""
    for part in header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


