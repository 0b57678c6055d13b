"""Resolving one image reference: tag -> digest -> manifest(s) -> the blobs it needs.

HEAD first (Docker Hub does not count it against the pull limit); a manifest already in the
cache is never fetched again. Raw bytes are stored as received, keyed by their own sha256.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..errors import DigestMismatchError, UnsupportedManifestError
from ..core.oci import INDEX_TYPES, Descriptor, Manifest, parse_manifest, sha256_digest
from ..core.plan import (MAX_DEPTH, blobs_of, child_spans, describe_platforms, keep_children, no_match,
                   replace_members, rewrite_index)
from ..core.platform import Platform, from_oci
from ..core.reference import Reference
from ..registry.client import Registry
from ..cache import Store


@dataclass
class Resolved:
    """One image ready to download: what goes into the bundle and what must be fetched."""

    ref: Reference
    top: Descriptor                                   # as written into index.json
    source_digest: str | None = None                  # the registry's digest, if rewritten
    manifests: dict[str, int] = field(default_factory=dict)     # digest -> size, all levels
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # config and layer blobs to fetch
    foreign: list[Descriptor] = field(default_factory=list)
    images: list[tuple[Platform | None, Manifest]] = field(default_factory=list)  # per platform
    platforms: list[str] = field(default_factory=list)
    target: str | None = None                         # mirror.yaml's target: path, for push
    originals: dict[str, int] = field(default_factory=dict)   # indexes rewritten: their own bytes' digest, size

    @property
    def name(self) -> str:
        """What the image is called in a bundle and on push: name:tag@digest goes by its tag
        (docker load needs one); an image by digest only, by its digest."""
        return str(self.ref.with_tag(self.ref.tag)) if self.ref.tag else str(self.ref)

    def sizes(self) -> dict[str, int]:
        """Every digest the bundle needs for this image (manifests and blobs) and its size."""
        return {**self.manifests, **{d: desc.size for d, desc in self.blobs.items()}}


async def load_manifest(reg: Registry, store: Store, repo: str, ref: str, where: str) -> Manifest:
    """A manifest by digest (from the cache when there, verified when fetched) or by tag."""
    by_digest = ref.startswith("sha256:")
    if by_digest and store.has(ref):
        return parse_manifest(store.read(ref), None, where)
    raw, ctype = await reg.get_manifest(repo, ref)
    got = sha256_digest(raw)
    if by_digest and got != ref:
        raise DigestMismatchError(f"{where}: the registry sent a manifest with digest {got} "
                                  f"when asked for {ref}; refusing it")
    manifest = parse_manifest(raw, ctype, where)
    store.put(got, raw)
    return manifest


async def resolve(reg: Registry, store: Store, ref: Reference, platforms: tuple[Platform, ...] | None,
                  keep_index_digest: bool, where: str) -> Resolved:
    """Resolve `ref` (tag or digest) into a Resolved image."""
    repo = ref.repository
    target = ref.digest
    if target is None:
        # A tag seen before, whose manifest is cached: HEAD, and nothing more if it has not moved
        # (Docker Hub does not count a HEAD against the pull limit). A tag never seen (or whose
        # manifest is gone): GET by tag at once, one round trip instead of two; its digest is
        # that of the bytes received. A registry that gives no digest on HEAD gets a GET by tag.
        known = store.remembered(str(ref))
        if known and store.has(known):
            target = await reg.head_manifest(repo, ref.tag)
        target = target or ref.tag
    top = await load_manifest(reg, store, repo, target, where)
    if ref.tag and not ref.digest:
        store.remember(str(ref.with_tag(ref.tag)), top.digest)
    out = Resolved(ref=ref, top=Descriptor(top.media_type, top.digest, len(top.raw)))
    if not top.is_index:
        out.manifests[top.digest] = len(top.raw)
        _add_image(out, None, top)
        return out
    walk = _IndexWalk(reg, store, repo, platforms, keep_index_digest, f"{where} ({ref})", out)
    kept = await walk.index(top, 0)
    if kept is None:
        raise no_match(platforms, walk.leaves, walk.where)
    if kept.digest != top.digest:
        out.top = Descriptor(top.media_type, kept.digest, len(kept.raw))
        out.source_digest = top.digest
    out.platforms = sorted({str(p) for p, _ in out.images if p})
    if not out.platforms:
        out.platforms = [describe_platforms(walk.leaves)]
    return out


class _IndexWalk:
    """An index and the indexes nested in it, resolved top-down: the platform filter applies to
    the image manifests at the leaves; an index that loses children is rewritten (its kept
    descriptors' bytes as received, its own digest recorded), and so is every index above it."""

    def __init__(self, reg, store, repo, platforms, keep_index_digest, where, out: Resolved):
        self.reg, self.store, self.repo, self.where, self.out = reg, store, repo, where, out
        self.platforms, self.keep = platforms, keep_index_digest
        self.leaves: list[Descriptor] = []      # every image child seen, for a no-match message

    async def child(self, desc: Descriptor) -> Manifest:
        m = await load_manifest(self.reg, self.store, self.repo, desc.digest, f"{self.where} child")
        if m.digest != desc.digest or len(m.raw) != desc.size:
            raise DigestMismatchError(f"{self.where}: child manifest {desc.digest} does not match its descriptor")
        return m

    async def index(self, index: Manifest, depth: int) -> Manifest | None:
        """The index to bundle in place of `index` (itself, or rewritten); None if nothing under
        it has a wanted platform."""
        if depth >= MAX_DEPTH:
            raise UnsupportedManifestError(f"{self.where}: indexes nested more than {MAX_DEPTH} deep")
        nested = [c for c in index.children if c.media_type in INDEX_TYPES]
        images = [c for c in index.children if c.media_type not in INDEX_TYPES]
        self.leaves += images
        loaded = await asyncio.gather(*(self.child(c) for c in nested))
        replaced: dict[str, bytes] = {}
        kept_nested = set()
        for desc, m in zip(nested, loaded, strict=True):
            if not m.is_index:      # a descriptor that said index over an image: take it as an image
                images.append(desc)
                continue
            sub = await self.index(m, depth + 1)
            if sub is None:
                continue
            kept_nested.add(desc.digest)
            if sub.digest != m.digest:
                start, end = child_spans(index.raw)[desc.digest]
                replaced[desc.digest] = replace_members(index.raw[start:end],
                                                        {"digest": sub.digest, "size": len(sub.raw)})
        kept_images = {c.digest for c in keep_children(images, self.platforms)}
        kept = [c for c in index.children if c.digest in kept_images or c.digest in kept_nested]
        if not kept and index.children:
            return None
        children = [c for c in kept if c.digest in kept_images]
        for desc, m in zip(children, await asyncio.gather(*(self.child(c) for c in children)), strict=True):
            if m.is_index:
                raise UnsupportedManifestError(f"{self.where}: child {desc.digest} is an index, its "
                                               f"descriptor says {desc.media_type}")
            self.out.manifests[m.digest] = len(m.raw)
            _add_image(self.out, None if desc.is_attestation else from_oci(desc.platform), m,
                       attestation=desc.is_attestation)
        if (len(kept) == len(index.children) and not replaced) or self.keep:
            self.out.manifests[index.digest] = len(index.raw)
            return index
        self.out.originals[index.digest] = len(index.raw)
        raw = rewrite_index(index, kept, replaced)
        rewritten = parse_manifest(raw, index.media_type, self.where)
        self.store.put(rewritten.digest, raw)
        self.out.manifests[rewritten.digest] = len(raw)
        return rewritten


def _add_image(out: Resolved, platform: Platform | None, m: Manifest, attestation: bool = False) -> None:
    fetch, foreign = blobs_of(m)
    for d in fetch:
        out.blobs.setdefault(d.digest, d)
    out.foreign.extend(foreign)
    if not attestation:
        out.images.append((platform, m))
