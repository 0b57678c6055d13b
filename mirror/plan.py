"""Pure decisions between resolving and downloading: which index children to keep, the rewritten
index, and which blobs an image needs. No I/O here; tested with tables."""

from __future__ import annotations

import json

from .errors import PlatformError
from .oci import ANN_SOURCE_DIGEST, ATTESTATION_DIGEST, Descriptor, Manifest
from .platform import Platform, from_oci, matches

# Layers that must not be redistributed: fetched only from their own `urls`, not mirrored.
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


def describe_platforms(children) -> str:
    """`linux/amd64, linux/arm64` for a message, attestations left out."""
    names = sorted({str(p) for c in children if not c.is_attestation and (p := from_oci(c.platform))})
    return ", ".join(names) or "none declared"


def select_children(index: Manifest, wanted: tuple[Platform, ...] | None, where: str) -> list[Descriptor]:
    """The children of an index to keep for the wanted platforms, in their original order.

    Attestation manifests are kept when the manifest they describe is kept. With no platform
    filter every child is kept. No match at all is an error listing what the index has.
    """
    if wanted is None:
        return list(index.children)
    kept = {c.digest for c in index.children if not c.is_attestation
            and (p := from_oci(c.platform)) is not None and any(matches(w, p) for w in wanted)}
    if not kept:
        raise PlatformError(f"{where}: none of the wanted platforms ({', '.join(map(str, wanted))}) "
                            f"is in this image; it has: {describe_platforms(index.children)}")
    return [c for c in index.children
            if c.digest in kept or (c.is_attestation and c.annotations.get(ATTESTATION_DIGEST) in kept)]


def rewrite_index(index: Manifest, kept: list[Descriptor]) -> bytes:
    """A new index holding only the kept children, each descriptor exactly as the original wrote it.

    The original digest is recorded in the new index's annotations, so it survives a push.
    """
    obj = json.loads(index.raw)
    keep = {c.digest for c in kept}
    obj["manifests"] = [c for c in obj["manifests"] if c.get("digest") in keep]
    obj["annotations"] = {**(obj.get("annotations") or {}), ANN_SOURCE_DIGEST: index.digest}
    return json.dumps(obj, separators=(",", ":")).encode()


def blobs_of(image: Manifest) -> tuple[list[Descriptor], list[Descriptor]]:
    """An image manifest's blobs to fetch, and its foreign layers (not fetched, reported)."""
    fetch, foreign = [], []
    for d in image.blobs:
        (foreign if d.media_type in FOREIGN_LAYER_TYPES or d.urls else fetch).append(d)
    return fetch, foreign
