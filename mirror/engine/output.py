"""Where a sync's bundle goes and how it is written: its path (fixed at the run's start), the
differential rules (--since: which blobs stay out, which the bundle expects from its base), the
tar fed in its deterministic order while the blobs download, and the index and summary at the end."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from ..bundle.writer import BundleContent, BundleImage, LoadEntry, TarWriter, blob_order, write_dir
from ..cache import Store
from ..core.diff import ANN_BASE, ANN_EXPECTED, add_holder, expected_doc, holders_json
from ..core.oci import sha256_digest
from ..core.platform import Platform, matches, parse_platform
from ..core.spec import MirrorSpec
from ..specfile import beside
from ..trust.types import BUNDLE_V03, SIMPLESIGNING
from .context import RunContext
from .fetch import RegistrySource
from .report import BundleSummary
from .resolve import Resolved

DEFAULT_LOAD_PLATFORM = parse_platform("linux/amd64")
SIGNATURE_TYPES = (SIMPLESIGNING, BUNDLE_V03)


class BundleOutput:
    """The bundle side of one sync."""

    def __init__(self, spec: MirrorSpec, opts, store: Store, ctx: RunContext):
        self.spec, self.opts, self.store, self.ctx = spec, opts, store, ctx
        self.clock = time.gmtime()    # {date} and {time} in output: are this moment, once
        self.excluded: set[str] = set()     # --since: blobs the base bundle carried
        self.expected_blob: tuple[str, int] | None = None   # --since: (digest, size) of that list

    def wanted(self) -> bool:
        """A bundle is written unless the images go straight to a registry (sync --to without -o)."""
        return not self.opts.push_to or bool(self.opts.output)

    def plan_differential(self, items: list) -> None:
        """--since: leave out the blobs the base carried (manifests and signatures always travel), and record
        which ones this bundle expects from it."""
        base = self.opts.since
        if base is None or not items:
            return
        manifests = {d for it in items for d in it.res.manifests}
        # signature payloads travel like manifests (small), so the trust policy can be checked
        # from a differential bundle alone
        signatures = {d for it in items for d, desc in it.res.blobs.items() if desc.media_type in SIGNATURE_TYPES}
        self.excluded = set(base.carried) - manifests - signatures
        expected = {d: size for it in items for d, size in it.res.sizes().items() if d in self.excluded}
        doc = expected_doc(base, expected)
        self.expected_blob = (sha256_digest(doc), len(doc))
        self.store.put(self.expected_blob[0], doc)

    def is_dir(self) -> bool:
        """The output is a layout directory: -o ending in /, or a directory that exists."""
        target = self.path()
        return str(self.opts.output or "").endswith("/") or os.path.isdir(target)

    async def feed(self, writer: TarWriter, items: list, source: RegistrySource) -> None:
        """Write every blob into the tar in `blob_order`: one still downloading is followed as
        its bytes land, so the tar is finished moments after the last download."""
        needed_by: dict[str, list] = {}
        for it in items:
            for d in it.res.sizes():
                needed_by.setdefault(d, []).append(it)
        sizes = {d: size for it in items for d, size in it.res.sizes().items() if d not in self.excluded}
        if self.expected_blob:
            sizes[self.expected_blob[0]] = self.expected_blob[1]
            needed_by[self.expected_blob[0]] = [it for it in items]
        run = asyncio.get_running_loop().run_in_executor
        ready: list[tuple[str, bool]] = []     # blobs already in the cache, written in one go

        def add_ready(batch: list[tuple[str, bool]]) -> None:
            for digest, verify in batch:
                writer.add_blob(self.store, digest, verify)
        for digest in blob_order(sizes):
            if all(it.report.status == "failed" for it in needed_by[digest]):
                continue              # only failed images want it (blobs of images failing later stay)
            landed = source.landed(digest)
            if landed is not None:
                if landed:
                    ready.append((digest, not source.fresh(digest)))
                continue
            if ready:
                batch, ready = ready, []
                await run(self.ctx.tar, add_ready, batch)
            follower = await source.follow(digest)
            if follower is not None:
                # False when the download failed: the tar is left as it was, and the copy
                # reports the images that needed the blob.
                await run(self.ctx.tar, writer.add_following, follower)
                continue
            if not await source.settled(digest):
                continue
            # Blobs fetched in this run were verified moments ago; older cache entries are
            # hashed again on the way, so a disk that changed them cannot slip into a bundle.
            await run(self.ctx.tar, writer.add_blob, self.store, digest, not source.fresh(digest))
        if ready:
            await run(self.ctx.tar, add_ready, ready)

    def write(self, resolved: list[Resolved], writer: TarWriter | None) -> BundleSummary:
        """Finish the tar (its blobs are written already) or write the layout directory."""
        content = BundleContent()
        load_platform = self.spec.load_platform or DEFAULT_LOAD_PLATFORM
        for res in resolved:
            content.blobs.update({d: n for d, n in res.sizes().items() if d not in self.excluded})
            content.images.append(BundleImage(
                ref_name=res.name, descriptor=res.top, source_digest=res.source_digest, target=res.target,
                load=self.load_entry(res, load_platform) if res.ref.tag else None, tag=res.ref.tag))
        carried = set(content.blobs)
        holders: dict = {}        # blob -> the images' repositories (and targets) carrying it
        for res in resolved:
            for d in res.blobs:
                if d not in self.excluded:
                    add_holder(holders, d, (res.ref.name, res.target))
        if self.expected_blob:
            digest, size = self.expected_blob
            content.blobs[digest] = size
            content.annotations = {ANN_BASE: self.opts.since.index_sha256, ANN_EXPECTED: digest}
            expected = {b["digest"] for b in json.loads(self.store.read(digest))["blobs"]}
            carried |= expected
            holders.update({d: self.opts.since.holders[d] for d in expected if d in self.opts.since.holders})
        # what a later --since needs from this bundle: the sha256 of its index.json, every digest
        # it holds or expects from its own base, and where each blob was carried (so that a
        # differential push can mount it from there)
        summary = dict(images=len(content.images), blobs=len(content.blobs),
                       index_sha256=sha256_digest(content.index_json()), carried=sorted(carried),
                       carried_by={d: holders_json(holders[d]) for d in sorted(holders)})
        if writer is None:
            target = Path(self.path())
            write_dir(target, self.store, content)
            return BundleSummary(path=str(target), format="directory", **summary)
        size, sha = writer.finish(content)
        return BundleSummary(path=str(writer.target), format="tar", size=size, sha256=sha, **summary,
                             parts=writer.parts or None,
                             sha256sums=str(writer.sums_path) if writer.parts else None)

    def load_entry(self, res: Resolved, wanted: Platform) -> LoadEntry | None:
        """The docker-load view of an image for one platform, if it has it (Linux only)."""
        for platform, m in res.images:
            if platform is None or platform.os != "linux" or not matches(wanted, platform):
                continue
            layers = tuple(d.digest for d in m.layers)
            # docker load needs every layer in the tar: not so in a differential bundle
            if m.config and all(d in res.blobs and d not in self.excluded for d in (*layers, m.config.digest)):
                return LoadEntry(config=m.config.digest, layers=layers)
        return None

    def path(self) -> str:
        if self.opts.output:
            return self.sharded(self.opts.output)
        now = self.clock     # the run's start: every call names the same file
        path = self.spec.output.replace("{date}", time.strftime("%Y%m%d", now)) \
            .replace("{time}", time.strftime("%H%M%S", now))
        return beside(self.spec.path, self.sharded(path))

    def sharded(self, path: str) -> str:
        """{shard} -> 1of4; a shard's bundle path without {shard} gets `-{shard}` before its
        extension, so N shards writing to one volume never share a file."""
        shard = self.opts.shard
        if shard is None:
            return path.replace("{shard}", "")
        if "{shard}" not in path:
            if path.endswith("/"):
                path = path[:-1] + "-{shard}/"
            else:
                root, ext = os.path.splitext(path)
                path = f"{root}-{{shard}}{ext}"
        return path.replace("{shard}", shard.label)
