"""Differential bundles: what an earlier bundle (the base) already carried across the air gap.

A differential bundle holds every manifest and index of its images (they are small) but only the
blobs its base did not. Its index.json says so in two annotations:
    io.imgmirror.bundle.base      the sha256 of the base bundle's index.json
    io.imgmirror.bundle.expected  the digest of a small JSON blob in the bundle listing the blobs
                                  (digest, size) it expects from its base
so `verify` and `push` know which absent blobs are absent on purpose. A chain works: what a bundle
counts as carried is what it holds plus what it expected from its own base.

Each expected blob also names where the base carried it: the repositories (and `target:` paths)
of the base's images that hold it, its "holders". A differential bundle pushed on its own needs
them: a new image often shares a base layer with an image of another repository, and push mounts
the blob from there (mapped through the same --to prefix and target: rules) instead of refusing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import BundleError
from .oci import ANN_TARGET, parse_manifest
from .reference import parse_reference

ANN_BASE = "io.imgmirror.bundle.base"
ANN_EXPECTED = "io.imgmirror.bundle.expected"
EXPECTED_MEDIA_TYPE = "application/vnd.imgmirror.expected-blobs.v1+json"


MAX_HOLDERS = 8        # holders recorded per blob: enough to find it, bounded for huge bundles

# Where a blob was carried: an image's repository (`docker.io/library/alpine`) and its target:
Holder = tuple[str, "str | None"]


@dataclass(frozen=True)
class Base:
    """An earlier bundle, as far as a differential one needs it."""

    index_sha256: str             # sha256 of its index.json
    carried: frozenset[str]       # digests it holds, or expects from its own base
    held: frozenset[str] | None = None     # digests it holds itself (None: a report, not known)
    holders: dict[str, tuple[Holder, ...]] = field(default_factory=dict, compare=False, hash=False)


def holders_json(holders: tuple[Holder, ...]) -> list[dict]:
    return [{"name": name, **({"target": target} if target else {})} for name, target in holders]


def holders_from(entries, where: str) -> tuple[Holder, ...]:
    try:
        return tuple((str(h["name"]), h.get("target") or None) for h in entries or ())
    except (KeyError, TypeError, AttributeError):
        raise BundleError(f"{where}: a blob's holders are not a list of {{name, target}}") from None


def add_holder(holders: dict[str, tuple[Holder, ...]], digest: str, holder: Holder) -> None:
    """Record one more holder of a blob, keeping the list sorted, unique and bounded."""
    have = holders.get(digest, ())
    if holder not in have and len(have) < MAX_HOLDERS:
        holders[digest] = tuple(sorted((*have, holder), key=lambda h: (h[0], h[1] or "")))


def expected_doc(base: Base, blobs: dict[str, int]) -> bytes:
    """The JSON blob listing what a differential bundle expects from its base, and where the
    base carried each one."""
    entries = []
    for d in sorted(blobs):
        entry = {"digest": d, "size": blobs[d]}
        if base.holders.get(d):
            entry["from"] = holders_json(base.holders[d])
        entries.append(entry)
    return json.dumps({"base": base.index_sha256, "blobs": entries},
                      sort_keys=True, separators=(",", ":")).encode()


def _expected_entries(reader) -> list[dict]:
    digest = (reader.index.get("annotations") or {}).get(ANN_EXPECTED)
    if not digest:
        return []
    try:
        doc = json.loads(reader.read(digest))
        return [dict(b, size=int(b["size"]), digest=str(b["digest"])) for b in doc["blobs"]]
    except (BundleError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{reader.path}: the list of blobs expected from its base ({digest}) "
                          f"cannot be read ({exc.__class__.__name__})") from None


def read_expected(reader) -> dict[str, int]:
    """The blobs a bundle expects from its base ({} for a full bundle)."""
    return {b["digest"]: b["size"] for b in _expected_entries(reader)}


def expected_holders(reader) -> dict[str, tuple[Holder, ...]]:
    """Where the base carried each blob a bundle expects from it (bundles written before holders
    were recorded name none). Several bundles read as one (push BASE DIFF…): all their lists."""
    out: dict[str, tuple[Holder, ...]] = {}
    for r in getattr(reader, "readers", None) or [reader]:
        for b in _expected_entries(r):
            for h in holders_from(b.get("from"), f"{r.path}: expected blob {b['digest']}"):
                add_holder(out, b["digest"], h)
    return out


def bundle_holders(reader) -> dict[str, tuple[Holder, ...]]:
    """The repositories (and targets) of a bundle's own images that hold each of its blobs."""
    out: dict[str, tuple[Holder, ...]] = {}

    def walk(digest: str, holder: Holder, depth: int) -> None:
        if depth > 8 or not reader.has(digest):
            return
        m = parse_manifest(reader.read(digest), None, f"{reader.path}: {digest}")
        for child in m.children:
            walk(child.digest, holder, depth + 1)
        for b in m.blobs:
            if reader.has(b.digest):
                add_holder(out, b.digest, holder)

    for ref, desc in reader.images:
        if ref:
            r = parse_reference(ref)
            walk(desc.digest, (r.name, desc.annotations.get(ANN_TARGET) or None), 0)
    return out
