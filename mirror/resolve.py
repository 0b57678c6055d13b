"""Resolving one image reference: tag -> digest -> manifest(s) -> the blobs it needs.

HEAD first (Docker Hub does not count it against the pull limit); a manifest already in the
cache is never fetched again. Raw bytes are stored as received, keyed by their own sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DigestMismatchError, UnsupportedManifestError
from .oci import Descriptor, Manifest, parse_manifest, sha256_digest
from .plan import blobs_of, describe_platforms, rewrite_index, select_children
from .platform import Platform, from_oci
from .reference import Reference
from .registry import Registry
from .store import Store


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
    # By tag: HEAD gives the digest; then GET by digest, so the bytes are verified against it.
    # A registry that gives no Docker-Content-Digest on HEAD gets a GET by tag.
    target = ref.digest or await reg.head_manifest(repo, ref.tag) or ref.tag
    top = await load_manifest(reg, store, repo, target, where)
    out = Resolved(ref=ref, top=Descriptor(top.media_type, top.digest, len(top.raw)))
    out.manifests[top.digest] = len(top.raw)
    if not top.is_index:
        _add_image(out, None, top)
        return out
    kept = select_children(top, platforms, f"{where} ({ref})")
    if len(kept) != len(top.children) and not keep_index_digest:
        raw = rewrite_index(top, kept)
        new_digest = sha256_digest(raw)
        store.put(new_digest, raw)
        del out.manifests[top.digest]
        out.top = Descriptor(top.media_type, new_digest, len(raw))
        out.manifests[new_digest] = len(raw)
        out.source_digest = top.digest
    for child in kept:
        m = await load_manifest(reg, store, repo, child.digest, f"{where} ({ref} child)")
        if m.is_index:
            raise UnsupportedManifestError(f"{where} ({ref}): nested index {child.digest} is not supported")
        if m.digest != child.digest or len(m.raw) != child.size:
            raise DigestMismatchError(f"{where} ({ref}): child manifest {child.digest} does not "
                                      "match its descriptor")
        out.manifests[m.digest] = len(m.raw)
        _add_image(out, None if child.is_attestation else from_oci(child.platform), m,
                   attestation=child.is_attestation)
    out.platforms = sorted({str(p) for p, _ in out.images if p})
    if not out.platforms:
        out.platforms = [describe_platforms(kept)]
    return out


def _add_image(out: Resolved, platform: Platform | None, m: Manifest, attestation: bool = False) -> None:
    fetch, foreign = blobs_of(m)
    for d in fetch:
        out.blobs.setdefault(d.digest, d)
    out.foreign.extend(foreign)
    if not attestation:
        out.images.append((platform, m))
