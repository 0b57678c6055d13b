"""Differential bundles: what an earlier bundle (the base) already carried across the air gap.

A differential bundle holds every manifest and index of its images (they are small) but only the
blobs its base did not. Its index.json says so in two annotations:
    io.imgmirror.bundle.base      the sha256 of the base bundle's index.json
    io.imgmirror.bundle.expected  the digest of a small JSON blob in the bundle listing the blobs
                                  (digest, size) it expects from its base
so `verify` and `push` know which absent blobs are absent on purpose. A chain works: what a bundle
counts as carried is what it holds plus what it expected from its own base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, UsageError
from .oci import sha256_digest

ANN_BASE = "io.imgmirror.bundle.base"
ANN_EXPECTED = "io.imgmirror.bundle.expected"
EXPECTED_MEDIA_TYPE = "application/vnd.imgmirror.expected-blobs.v1+json"


@dataclass(frozen=True)
class Base:
    """An earlier bundle, as far as a differential one needs it."""

    index_sha256: str             # sha256 of its index.json
    carried: frozenset[str]       # digests it holds, or expects from its own base


def expected_doc(base: Base, blobs: dict[str, int]) -> bytes:
    """The JSON blob listing what a differential bundle expects from its base."""
    return json.dumps({"base": base.index_sha256,
                       "blobs": [{"digest": d, "size": blobs[d]} for d in sorted(blobs)]},
                      sort_keys=True, separators=(",", ":")).encode()


def read_expected(reader) -> dict[str, int]:
    """The blobs a bundle expects from its base ({} for a full bundle)."""
    digest = (reader.index.get("annotations") or {}).get(ANN_EXPECTED)
    if not digest:
        return {}
    try:
        doc = json.loads(reader.read(digest))
        return {b["digest"]: int(b["size"]) for b in doc["blobs"]}
    except (BundleError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{reader.path}: the list of blobs expected from its base ({digest}) "
                          f"cannot be read ({exc.__class__.__name__})") from None


def load_base(path: str) -> Base:
    """An earlier bundle (tar, parts, directory) or the JSON report of the run that made it."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        try:
            bundle = json.loads(p.read_text())["bundle"]
            return Base(bundle["index_sha256"], frozenset(bundle["carried"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--since {path}: not a report of an imgmirror sync that wrote a bundle "
                             f"({exc.__class__.__name__}: {exc}); give the bundle itself instead") from None
    from .bundle_read import open_bundle
    with open_bundle(path) as reader:
        carried = set(reader.digests()) | set(read_expected(reader))
        return Base(sha256_digest(reader.index_raw), frozenset(carried))
