"""imgmirror sync: mirror.yaml -> resolved images -> unique blobs downloaded once -> bundle."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from . import credentials
from .bundle import BundleContent, BundleImage, LoadEntry, write_dir, write_tar
from .errors import MirrorError
from .oci import Descriptor, image_platform
from .platform import Platform, from_oci, matches, parse_platform
from .progress import Progress, human
from .reference import Reference
from .registry import Registry
from .resolve import Resolved, resolve
from .selection import select_tags
from .spec import ImageSpec, MirrorSpec, RegistryConfig
from .store import Store
from .transport import HostSettings, Transport

DEFAULT_LOAD_PLATFORM = parse_platform("linux/amd64")


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


@dataclass
class SyncOptions:
    """Command-line choices that override or complete the manifest."""

    output: str | None = None
    cache: str | None = None
    jobs: int | None = None
    dry_run: bool = False
    fail_fast: bool = False
    to_dir: bool = False


@dataclass
class SyncResult:
    images: list[ImageReport]
    bundle: dict | None
    totals: dict

    def to_json(self) -> dict:
        return {"images": [asdict(i) for i in self.images], "totals": self.totals, "bundle": self.bundle}


class Syncer:
    """Runs one sync over an open store; `run()` is the whole job."""

    def __init__(self, spec: MirrorSpec, store: Store, opts: SyncOptions, progress: Progress):
        self.spec, self.store, self.opts, self.progress = spec, store, opts, progress
        self.jobs = asyncio.Semaphore(opts.jobs or spec.concurrency)
        self.registries: dict[str, Registry] = {}
        self.inflight: dict[str, asyncio.Future] = {}
        self.downloaded = 0

    def registry(self, session: aiohttp.ClientSession, ref: Reference) -> Registry:
        """One Registry (one transport, one token cache, one host semaphore) per host."""
        host = ref.registry
        if host not in self.registries:
            cfg = self.spec.registries.get(host.lower(), RegistryConfig())   # keys are lowercased
            settings = HostSettings(host=host, api_host=ref.api_host, insecure=cfg.insecure,
                                    ca_file=os.path.expanduser(cfg.ca_file) if cfg.ca_file else None,
                                    retries=cfg.retries,
                                    max_concurrency=cfg.max_concurrency or (self.opts.jobs or self.spec.concurrency))
            creds = credentials.lookup(host, (cfg.username, cfg.password) if cfg.username else None)
            self.registries[host] = Registry(Transport(session, settings, creds))
        return self.registries[host]

    async def run(self) -> SyncResult:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         trust_env=True) as session:
            refs_per_spec = await asyncio.gather(*(self.expand(session, s) for s in self.spec.images))
            work = [(s, r) for s, rs in zip(self.spec.images, refs_per_spec, strict=True) for r in rs]
            self.progress.images_total(len(work))
            tasks = [asyncio.ensure_future(self.mirror_one(session, s, r)) for s, r in work]
            try:
                if self.opts.fail_fast:
                    for fut in asyncio.as_completed(tasks):
                        report, _ = await fut
                        if report.status == "failed":
                            raise MirrorError(f"{report.reference}: {report.error} (--fail-fast: stopped)")
                done = await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
        failed_expansions = [r for rs in refs_per_spec for r in rs if isinstance(r, ImageReport)]
        reports = failed_expansions + [rep for rep, _ in done]
        resolved = [res for rep, res in done if res is not None and rep.status == "ok"]
        bundle = None
        if resolved and not self.opts.dry_run:
            bundle = self.write_bundle(resolved)
        ok = sum(1 for r in reports if r.status == "ok")
        unique = {d: desc.size for res in resolved for d, desc in res.blobs.items()}
        totals = {"images": len(reports), "ok": ok, "failed": len(reports) - ok,
                  "blobs": len(unique), "bytes": sum(unique.values()),
                  "downloaded_bytes": self.downloaded, "seconds": round(time.monotonic() - started, 3)}
        return SyncResult(reports, bundle, totals)

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

    async def mirror_one(self, session, spec: ImageSpec, ref) -> tuple[ImageReport, Resolved | None]:
        """Resolve and download one image; failures are reported, never raised."""
        if isinstance(ref, ImageReport):
            return ref, None
        started = time.monotonic()
        report = ImageReport(source=spec.repository.name, reference=str(ref))
        res = None
        try:
            reg = self.registry(session, ref)
            platforms = spec.platforms if spec.platforms is not None else self.spec.platforms
            res = await resolve(reg, self.store, ref, platforms, self.spec.keep_index_digest, spec.where)
            report.digest, report.source_digest = res.top.digest, res.source_digest
            report.media_type, report.platforms = res.top.media_type, res.platforms
            report.blobs = len(res.blobs) + len(res.manifests)
            report.bytes = sum(d.size for d in res.blobs.values()) + sum(res.manifests.values())
            missing = [d for d in res.blobs.values() if not self.store.has(d.digest)]
            report.new_bytes = sum(d.size for d in missing)
            for d in res.foreign:
                self.progress.warn(f"{ref}: foreign layer {d.digest} is not mirrored (it is fetched "
                                   "from its own URLs by whoever pulls the image)")
            if not self.opts.dry_run:
                self.progress.bytes_total(report.new_bytes)
                # Wait for every blob even after one failed: what did arrive is kept for next time.
                results = await asyncio.gather(*(self.blob(reg, ref.repository, d) for d in missing),
                                               return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
            # A single-platform image names its platform only in its config blob.
            res.images = [(p or self.config_platform(m), m) for p, m in res.images]
            report.platforms = res.platforms or sorted({str(p) for p, _ in res.images if p})
            report.status = "ok"
        except MirrorError as exc:
            report.status, report.error = "failed", str(exc)
        except OSError as exc:   # the cache's disk: full, read-only, gone
            report.status = "failed"
            report.error = (f"cache {self.store.root}: {exc.strerror or exc} "
                            f"({exc.filename or 'writing a blob'}); free space or choose --cache")
        report.seconds = round(time.monotonic() - started, 3)
        detail = (f"{report.digest} {human(report.bytes)} {report.seconds:.1f}s" if report.status == "ok"
                  else report.error)
        self.progress.image_done(report.reference, report.status == "ok", detail)
        return report, res

    def blob(self, reg: Registry, repo: str, desc: Descriptor) -> asyncio.Future:
        """The one download of a digest, shared by every image that needs it."""
        fut = self.inflight.get(desc.digest)
        if fut is None:
            fut = asyncio.ensure_future(self._download(reg, repo, desc))
            self.inflight[desc.digest] = fut
        # shield: one image failing or being cancelled must not cancel a download others await
        return asyncio.shield(fut)

    async def _download(self, reg: Registry, repo: str, desc: Descriptor) -> None:
        if self.store.has(desc.digest):
            return
        async with self.jobs:
            def on_bytes(n: int) -> None:
                self.downloaded += n
                self.progress.advance(n)
            await reg.fetch_blob(repo, desc, self.store, on_bytes)

    # --- the bundle -----------------------------------------------------------------------
    def write_bundle(self, resolved: list[Resolved]) -> dict:
        content = BundleContent()
        load_platform = self.spec.load_platform or DEFAULT_LOAD_PLATFORM
        for res in resolved:
            content.blobs.update(res.manifests)
            content.blobs.update({d: desc.size for d, desc in res.blobs.items()})
            # name:tag@digest is named by its tag (docker load needs one); by digest only, by digest
            ref_name = str(res.ref.with_tag(res.ref.tag)) if res.ref.tag else str(res.ref)
            content.images.append(BundleImage(
                ref_name=ref_name, descriptor=res.top, source_digest=res.source_digest,
                load=self.load_entry(res, load_platform) if res.ref.tag else None, tag=res.ref.tag))
        target = Path(self.output_path())
        if self.opts.to_dir or str(self.opts.output or "").endswith("/") or target.is_dir():
            write_dir(target, self.store, content)
            return {"path": str(target), "format": "directory", "images": len(content.images),
                    "blobs": len(content.blobs)}
        size, sha = write_tar(target, self.store, content)
        return {"path": str(target), "format": "tar", "size": size, "sha256": sha,
                "images": len(content.images), "blobs": len(content.blobs)}

    def load_entry(self, res: Resolved, wanted: Platform) -> LoadEntry | None:
        """The docker-load view of an image for one platform, if it has it (Linux only)."""
        for platform, m in res.images:
            if platform is None or platform.os != "linux" or not matches(wanted, platform):
                continue
            layers = tuple(d.digest for d in m.layers)
            if m.config and all(d in res.blobs for d in layers):
                return LoadEntry(config=m.config.digest, layers=layers)
        return None

    def config_platform(self, m) -> Platform | None:
        """The platform an image's config declares, when the config is in the cache."""
        if m.config and self.store.has(m.config.digest):
            return from_oci(image_platform(self.store.read(m.config.digest)))
        return None

    def output_path(self) -> str:
        if self.opts.output:
            return self.opts.output
        now = time.gmtime()
        path = self.spec.output.replace("{date}", time.strftime("%Y%m%d", now)) \
            .replace("{time}", time.strftime("%H%M%S", now))
        path = os.path.expanduser(path)
        # Relative to the manifest, so a cron job's working directory does not matter.
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.spec.path)), path)
        return os.path.normpath(path)
