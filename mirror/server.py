"""`imgmirror serve BUNDLE…`: a read-only OCI distribution registry straight from bundles.

Every index.json entry named with a full reference (`org.opencontainers.image.ref.name`, e.g.
`docker.io/library/alpine:3.19` or `127.0.0.1:5000/test/base@sha256:…`) is served under its
repository path without the host (`library/alpine`). A repository serves exactly the manifests
and blobs reachable from its own images; everything else is 404. Manifests (small, verified
when the catalog is built) are kept in memory; blobs are read in place from the tar or layout
directory with `BundleReader.open_blob` in worker threads, never extracted. Requests only ever
look digests and names up in the catalog, so no path from a request reaches the file system.

    GET  /v2/                                    {}
    GET  /v2/_catalog?n=&last=                   repositories, Link pagination
    GET  /v2/<name>/tags/list?n=&last=           tags, sorted, Link pagination
    GET|HEAD /v2/<name>/manifests/<tag|digest>   its own media type, Docker-Content-Digest
    GET|HEAD /v2/<name>/blobs/<digest>           Range: bytes=a-b | a- | -n -> 206 / 416
    GET  /v2/<name>/referrers/<digest>           OCI index of the manifests whose subject it is
    POST/PUT/PATCH/DELETE/…                      405 UNSUPPORTED (read-only)
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from .bundle.reader import BundleReader, open_bundle
from .errors import MirrorError, ReferenceError_, UsageError
from .core.oci import IMAGE_TYPES, MANIFEST_TYPES, OCI_INDEX
from .core.reference import parse_reference

CHUNK = 1 << 20                          # bytes per pread in a worker thread
DEFAULT_LISTEN = "127.0.0.1:5000"
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_ROUTES = [("manifest", re.compile(r"/v2/(.+)/manifests/([^/]+)")),
           ("blob", re.compile(r"/v2/(.+)/blobs/([^/]+)")),
           ("tags", re.compile(r"/v2/(.+)/tags/list()")),
           ("referrers", re.compile(r"/v2/(.+)/referrers/([^/]+)"))]


@dataclass
class Repo:
    """What one repository serves."""

    tags: dict[str, str] = field(default_factory=dict)                   # tag -> manifest digest
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (type, raw)
    blobs: dict[str, BundleReader] = field(default_factory=dict)         # digest -> its bundle
    referrers: dict[str, list[dict]] = field(default_factory=dict)       # subject -> descriptors


@dataclass
class Catalog:
    """Every repository of the bundles, merged; owns the open readers."""

    repos: dict[str, Repo]
    readers: list[BundleReader]
    images: int                          # index.json entries served
    warnings: list[str]

    def close(self) -> None:
        for r in self.readers:
            r.close()


CATALOG = web.AppKey("catalog", Catalog)


def served_name(ref: str | None) -> tuple[str, str | None] | None:
    """`host/path:tag` -> (path, tag); `host/path@digest` -> (path, None); None when the name is
    not a full reference (Docker and skopeo write a bare tag such as `1.0`)."""
    if not ref:
        return None
    try:
        r = parse_reference(ref)
    except ReferenceError_:
        return None
    if r.tag is None and r.digest is None:
        return None
    return r.repository, r.tag


def load_catalog(paths, trust=None) -> Catalog:
    """Open the bundles and index what each repository may serve. A tag naming different
    digests in two bundles is refused (UsageError); the same digest twice is fine. With a trust
    policy, an image that does not verify from its bundle is not served (a warning names it)."""
    readers: list[BundleReader] = []
    repos: dict[str, Repo] = {}
    origin: dict[tuple[str, str], str] = {}
    warnings: list[str] = []
    images = 0
    try:
        for path in paths:
            reader = open_bundle(path)
            readers.append(reader)
            entries = reader.images
            if trust is not None:
                from .bundle.trustcheck import partition
                entries, refused = partition(reader, entries, trust)
                warnings += [f"{path}: {j.reference} is not served: trust policy {j.verdict.policy}: "
                             f"{j.verdict.reason}" for j in refused]
            for ref, desc in entries:
                named = served_name(ref)
                if named is None:
                    warnings.append(f"{path}: {desc.digest} is not served: its name {ref!r} is not a "
                                    "full reference (host/repository:tag or @digest)")
                    continue
                name, tag = named
                repo = repos.setdefault(name, Repo())
                if tag is not None:
                    if repo.tags.get(tag, desc.digest) != desc.digest:
                        raise UsageError(f"{name}:{tag} is {repo.tags[tag]} in {origin[name, tag]} but "
                                         f"{desc.digest} in {path}; serve one of them")
                    repo.tags[tag] = desc.digest
                    origin[name, tag] = str(path)
                _add_tree(repo, reader, desc)
                images += 1
    except BaseException:
        for r in readers:
            r.close()
        raise
    return Catalog(repos, readers, images, warnings)


def _add_tree(repo: Repo, reader: BundleReader, root) -> None:
    for d in reader.walk(root):
        if not reader.has(d.digest):        # a sparse index's child, a foreign layer
            continue
        if d.media_type not in MANIFEST_TYPES:
            repo.blobs.setdefault(d.digest, reader)
        elif d.digest not in repo.manifests:
            raw = reader.read(d.digest)     # verified against its digest
            repo.manifests[d.digest] = (d.media_type, raw)
            _note_subject(repo, d.media_type, d.digest, raw)


def _note_subject(repo: Repo, media_type: str, digest: str, raw: bytes) -> None:
    obj = json.loads(raw)
    subject = obj.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        return
    desc = {"mediaType": media_type, "digest": digest, "size": len(raw)}
    artifact = obj.get("artifactType")
    if not artifact and media_type in IMAGE_TYPES:
        artifact = (obj.get("config") or {}).get("mediaType")
    if artifact:
        desc["artifactType"] = artifact
    if obj.get("annotations"):
        desc["annotations"] = obj["annotations"]
    repo.referrers.setdefault(subject["digest"], []).append(desc)


def error(status: int, code: str, message: str, detail=None, headers=None) -> web.Response:
    """A distribution-style error answer."""
    body = {"errors": [{"code": code, "message": message, "detail": detail or {}}]}
    return web.json_response(body, status=status, headers=headers)


def parse_byte_range(value: str, size: int) -> tuple[int, int] | None:
    """A Range header, `bytes=a-b`, `bytes=a-` or `bytes=-n` -> (first, last), inclusive; None
    for anything else (several ranges, other units: the whole blob is sent, as RFC 9110 allows);
    ValueError when the range lies outside the blob (416)."""
    m = _RANGE.fullmatch(value.strip())
    if not m or m.group(1) == m.group(2) == "":
        return None
    a, b = m.groups()
    if a == "":                              # the last n bytes
        if int(b) == 0 or size == 0:
            raise ValueError(value)
        return max(0, size - int(b)), size - 1
    first, last = int(a), (int(b) if b else size - 1)
    if b and last < first:
        return None
    if first >= size:
        raise ValueError(value)
    return first, min(last, size - 1)


async def handle(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return error(405, "UNSUPPORTED", f"{request.method} is not supported: this registry is "
                     "read-only (imgmirror serve)", headers={"Allow": "GET, HEAD"})
    path, catalog = request.path, request.app[CATALOG]
    if path in ("/v2", "/v2/"):
        return web.json_response({})
    if path == "/v2/_catalog":
        return _page(request, sorted(catalog.repos), "repositories", "/v2/_catalog", {})
    for kind, rx in _ROUTES:
        if m := rx.fullmatch(path):
            name, arg = m.groups()
            repo = catalog.repos.get(name)
            if repo is None:
                return error(404, "NAME_UNKNOWN", f"repository {name} is not in the served bundles",
                             {"name": name})
            if kind == "manifest":
                return _manifest(repo, name, arg)
            if kind == "blob":
                return await _blob(request, repo, name, arg)
            if kind == "tags":
                return _page(request, sorted(repo.tags), "tags", f"/v2/{name}/tags/list", {"name": name})
            return _referrers(request, repo, arg)
    return error(404, "NOT_FOUND", f"no such endpoint: {path}")


def _page(request, items: list[str], key: str, base: str, extra: dict) -> web.Response:
    last, n, headers = request.query.get("last"), request.query.get("n"), {}
    if last:
        items = [i for i in items if i > last]
    if n is not None:
        if not n.isdigit():
            return error(400, "PAGINATION_NUMBER_INVALID", f"n={n!r} is not a number")
        more, items = 0 < int(n) < len(items), items[:int(n)]
        if more:
            headers["Link"] = f'<{base}?n={n}&last={quote(items[-1], safe="")}>; rel="next"'
    return web.json_response({**extra, key: items}, headers=headers)


def _manifest(repo: Repo, name: str, ref: str) -> web.Response:
    digest = ref if ":" in ref else repo.tags.get(ref)
    found = repo.manifests.get(digest) if digest else None
    if found is None:
        return error(404, "MANIFEST_UNKNOWN", f"manifest {ref} is not in repository {name}",
                     {"name": name, "reference": ref})
    media_type, raw = found
    return web.Response(body=raw, headers={"Content-Type": media_type, "Docker-Content-Digest": digest,
                                           "ETag": f'"{digest}"'})


async def _blob(request: web.Request, repo: Repo, name: str, digest: str) -> web.StreamResponse:
    if digest in repo.manifests:            # a manifest is a blob too
        raw = repo.manifests[digest][1]
        size, opener = len(raw), (lambda: io.BytesIO(raw))
    elif (reader := repo.blobs.get(digest)) is not None:
        size, opener = reader.size(digest), (lambda: reader.open_blob(digest))
    else:
        return error(404, "BLOB_UNKNOWN", f"blob {digest} is not in repository {name}",
                     {"name": name, "digest": digest})
    headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
               "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
    first, last, status = 0, size - 1, 200
    if request.headers.get("Range"):
        try:
            span = parse_byte_range(request.headers["Range"], size)
        except ValueError:
            return error(416, "RANGE_INVALID", f"{request.headers['Range']} is outside the blob "
                         f"({size} bytes)", headers={"Content-Range": f"bytes */{size}"})
        if span:
            (first, last), status = span, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = last - first + 1
    await resp.prepare(request)
    if request.method == "HEAD" or last < first:
        await resp.write_eof()
        return resp
    loop = asyncio.get_running_loop()
    f = await loop.run_in_executor(None, opener)
    try:
        f.seek(first)
        left = last - first + 1
        while left > 0:
            data = await loop.run_in_executor(None, f.read, min(CHUNK, left))
            if not data:      # cannot happen with BlobFile (it raises); never send a short body quietly
                raise MirrorError(f"blob {digest} ended {left} bytes early")
            await resp.write(data)
            left -= len(data)
    finally:
        f.close()
    await resp.write_eof()
    return resp


def _referrers(request: web.Request, repo: Repo, digest: str) -> web.Response:
    if not _DIGEST.fullmatch(digest):
        return error(400, "DIGEST_INVALID", f"{digest} is not a sha256 digest")
    found, headers = repo.referrers.get(digest, []), {"Content-Type": OCI_INDEX}
    if artifact := request.query.get("artifactType"):
        found = [d for d in found if d.get("artifactType") == artifact]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    return web.Response(body=json.dumps(body).encode(), headers=headers)


async def _api_version(request, response) -> None:
    response.headers["Docker-Distribution-API-Version"] = "registry/2.0"


def make_app(catalog: Catalog) -> web.Application:
    """The aiohttp application; it closes the catalog's readers on cleanup."""
    app = web.Application()
    app[CATALOG] = catalog
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(_api_version)
    app.on_cleanup.append(_close_catalog)
    return app


async def _close_catalog(app: web.Application) -> None:
    app[CATALOG].close()


async def start_server(paths=(), host: str = "127.0.0.1", port: int = 0, catalog: Catalog | None = None
                       ) -> tuple[web.AppRunner, int]:
    """Serve `paths` (or a loaded `catalog`) on host:port (0: any free port); returns the runner
    (`await runner.cleanup()` stops it and closes the bundles) and the port."""
    if catalog is None:
        catalog = load_catalog(paths)
    runner = web.AppRunner(make_app(catalog), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MirrorError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return runner, runner.addresses[0][1]
