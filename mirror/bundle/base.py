"""An earlier bundle, its parts, or the report of the run that made it, as the base of a
differential bundle (sync --since, verify --base)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.diff import Base, holders_from, add_holder, bundle_holders, expected_holders, read_expected
from ..core.oci import sha256_digest
from ..errors import BundleError, UsageError
from .reader import open_bundle


def load_base(path: str) -> Base:
    """An earlier bundle (tar, parts, directory) or the JSON report of the run that made it."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        try:
            bundle = json.loads(p.read_text())["bundle"]
            holders = {d: holders_from(hs, f"{path}: carried_by {d}")
                       for d, hs in (bundle.get("carried_by") or {}).items()}
            return Base(bundle["index_sha256"], frozenset(bundle["carried"]), holders=holders)
        except (ValueError, KeyError, TypeError, AttributeError, BundleError) as exc:
            raise UsageError(f"--since {path}: not a report of an imgmirror sync that wrote a bundle "
                             f"({exc.__class__.__name__}: {exc}); give the bundle itself instead") from None
    with open_bundle(path) as reader:
        carried = set(reader.digests()) | set(read_expected(reader))
        holders = expected_holders(reader)
        for d, hs in bundle_holders(reader).items():
            for h in hs:
                add_holder(holders, d, h)
        return Base(sha256_digest(reader.index_raw), frozenset(carried), frozenset(reader.digests()), holders)
